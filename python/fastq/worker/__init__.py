"""The worker: a parent process that consumes from the broker and a pool that runs tasks."""
