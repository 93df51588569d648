"""A RabbitMQ node of the bench's own, started fresh for one invocation and stopped at its end.

The node itself (own node name, loopback ports and data directory, so it never meets another node on the
machine; the readiness wait; stop) is the test suite's `RabbitServer` from tests/servers.py, as the bench's
redis-server is its `RedisServer`. Here is what the bench adds: one vhost per engine (`bench-<engine>`),
emptied of queues before every workload, so each workload starts from the same state and the engines'
declarations never meet, and the node's version for the report. Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

from tests.servers import RabbitServer

__all__ = ['RabbitNode']


class RabbitNode(RabbitServer):
    def __init__(self) -> None:
        super().__init__(name='fastq-bench', tls=False)

    def version(self) -> str:
        for line in self.ctl('status', check=False).splitlines():
            if line.startswith('RabbitMQ version:'):
                return line.split(':', 1)[1].strip()
        return 'unknown'

    def queues(self, vhost: str) -> list[tuple[str, int, int, int]]:
        """(name, ready, unacknowledged, consumers) of every queue in `vhost`, read from the node."""
        out = self.ctl(
            '-q', 'list_queues', '-p', vhost, '--no-table-headers',
            'name', 'messages_ready', 'messages_unacknowledged', 'consumers',
        )  # fmt: skip
        rows = []
        for line in out.splitlines():
            parts = line.split('\t')
            if len(parts) == 4:
                rows.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
        return rows

    def clear(self, vhost: str) -> None:
        """Delete every queue of `vhost` (exchanges stay: declared identically by the next run)."""
        names = [name for name, *_ in self.queues(vhost)]
        if not names:
            return
        import amqp

        conn = amqp.Connection(f'127.0.0.1:{self.port}', virtual_host=vhost)
        conn.connect()
        try:
            channel = conn.channel()
            for name in names:
                channel.queue_delete(name)
        finally:
            conn.close()
        left = self.queues(vhost)
        if left:
            raise RuntimeError(f'queues left in vhost {vhost!r} after deleting them: {left}')
