"""The Django fixup's signal receivers live as long as their app (in a subprocess: Django's settings and
the signals' receivers are the process's)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('django')

SCRIPT = textwrap.dedent(
    """
    import gc, os, weakref
    os.environ['DJANGO_SETTINGS_MODULE'] = 'unused'
    import django
    from django.conf import settings
    settings.configure(DATABASES={}, INSTALLED_APPS=[])
    django.setup()
    from fastq import Fastq, _state, signals

    sigs = (signals.import_modules, signals.worker_init, signals.task_prerun, signals.task_postrun,
            signals.worker_process_init, signals.beat_embedded_init)
    before = [len(s._receivers) for s in sigs]
    a = Fastq('a', broker='memory://', set_as_current=False)
    b = Fastq('b', broker='memory://', set_as_current=False)
    for app in (a, b):
        app.fixups[0].worker_fixup.install()
    # each app's fixup has its receivers (none skipped as a duplicate of the other's)
    assert [len(s._receivers) for s in sigs] == [n + 2 for n in before]
    refs = [weakref.ref(a), weakref.ref(b)]
    _state.unregister_app(a)  # (as fastq.contrib.testing forgets a test app)
    _state.unregister_app(b)
    del a, b, app
    gc.collect()
    assert [r() for r in refs] == [None, None], 'an app let go is kept alive by its fixup receivers'
    for s in sigs:
        s.send(sender=None)
    assert [len(s._receivers) for s in sigs] == before
    print('ok')
    """
)


def test_receivers_go_with_their_app() -> None:
    """Strong receivers (and `sender=app`, which a signal keeps) held every app made with
    DJANGO_SETTINGS_MODULE set, with its worker fixup's per-task receivers, for the life of the process."""
    done = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr[-2000:]
