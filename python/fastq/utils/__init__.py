"""Small helpers shared by the client and the worker."""
