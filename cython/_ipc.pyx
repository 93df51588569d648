# cython: language_level=3, embedsignature=True
"""Pool IPC placeholder."""

def ping():
    return 'pong'
