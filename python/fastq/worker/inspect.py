"""The inspect commands of the pidbox, answered in Celery's reply shapes (`celery/worker/control.py`), so
`celery inspect`, Flower and `fastq inspect` read fastq workers and Celery workers alike.

Worker state belongs to the loop's thread; the pidbox thread asks the loop for a snapshot (`_on_loop`) and
builds the reply from that copy, so a slow reply never holds the loop.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from typing import TYPE_CHECKING, Any

from fastq.control import tick
from fastq.routing import Broadcast, as_exchange
from fastq.worker.control import command, ok, on_loop

if TYPE_CHECKING:
    from fastq.worker.job import Job
    from fastq.worker.worker import WorkController

logger = logging.getLogger('celery.worker.control')
consumer_logger = logging.getLogger('celery.worker.consumer.consumer')  # (Celery's add/cancel_task_queue)

#: Celery's `registered` default attributes shown beside task names (`taskinfoitems`).
DEFAULT_TASK_INFO_ITEMS = ('exchange', 'routing_key', 'rate_limit')


def _wall(monotonic: float | None) -> float | None:
    """A monotonic instant as Unix time (Celery reports `time_start` as time.time())."""
    if monotonic is None:
        return None
    return time.time() - (time.monotonic() - monotonic)


def request_info(job: Job, hostname: str, accept: frozenset[str]) -> dict[str, Any]:
    """Celery's `Request.info()` for one job."""
    from fastq.protocol import decode_body

    d, r = job.delivery, job.request
    args: Any = r.argsrepr
    kwargs: Any = r.kwargsrepr
    message = d.message
    if message is not None:
        try:
            args, kwargs, _ = decode_body(
                message.body, message.content_type, message.headers.get('compression'), accept
            )
        except Exception:  # shown as the sender's repr strings instead
            pass
    properties = message.properties if message is not None else {}
    found = properties.get('delivery_info')
    info: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        'id': r.id,
        'name': r.task,
        'args': args,
        'kwargs': kwargs,
        'type': r.task,
        'hostname': hostname,
        'time_start': _wall(job.started),
        'acknowledged': job.acked,
        'delivery_info': {
            'exchange': info.get('exchange', ''),
            'routing_key': info.get('routing_key', d.queue),
            'priority': properties.get('priority'),
            'redelivered': d.redelivered,
        },
        'worker_pid': job.pid,
    }


def _jobs(worker: WorkController) -> tuple[list[Job], list[Job], list[tuple[float, Job]]]:
    """(active, reserved, scheduled) as of now, read in the loop's thread."""
    dispatcher = worker.dispatcher
    if dispatcher is None:
        return [], [], []
    running = list(dispatcher.running.values())
    active = [job for job in running if job.started is not None]
    reserved = [job for job in running if job.started is None] + list(dispatcher.ready)
    for queue in dispatcher.limiter.waiting.values():
        reserved.extend(queue)
    scheduled = [(when, job) for when, _, job in sorted(dispatcher.held, key=lambda entry: entry[:2])]
    return active, reserved, scheduled


@command('active')
def _active(worker: WorkController, safe: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    active, _, _ = on_loop(worker, lambda: _jobs(worker))
    return [request_info(job, worker.hostname, worker.accept) for job in active]


@command('reserved')
def _reserved(worker: WorkController, **kwargs: Any) -> list[dict[str, Any]]:
    _, reserved, _ = on_loop(worker, lambda: _jobs(worker))
    return [request_info(job, worker.hostname, worker.accept) for job in reserved]


@command('scheduled')
def _scheduled(worker: WorkController, **kwargs: Any) -> list[dict[str, Any]]:
    """ETA tasks the worker holds, and those it left waiting in the broker (Celery holds them all; which
    worker lists a parked task: fastq.worker.parked), earliest first."""
    from fastq.worker import parked

    _, _, scheduled = on_loop(worker, lambda: _jobs(worker))
    out = []
    for when, job in scheduled:  # `when` is the task's ETA, Unix time
        priority = job.delivery.message.properties.get('priority') if job.delivery.message is not None else None
        info = request_info(job, worker.hostname, worker.accept)
        out.append((when, {'eta': parked.eta_iso(when), 'priority': priority, 'request': info}))
    held = {job.request.id for _, job in scheduled}  # (RabbitMQ's delayed chain may deliver up to 1 s early)
    for record in parked.waiting(worker):
        if record.id not in held:
            out.append((record.eta, parked.entry(record, worker.hostname, worker.accept)))
    out.sort(key=lambda pair: pair[0])
    return [item for _, item in out]


@command('revoked')
def _revoked(worker: WorkController, **kwargs: Any) -> list[str]:
    dispatcher = worker.dispatcher
    return on_loop(worker, lambda: list(dispatcher.revoked)) if dispatcher is not None else []


@command('registered')
def _registered(worker: WorkController, taskinfoitems: Any = None, **kwargs: Any) -> list[str]:
    items = list(taskinfoitems) if taskinfoitems else list(DEFAULT_TASK_INFO_ITEMS)
    out = []
    for name in sorted(worker.app.tasks):
        if name.startswith('celery.'):
            continue  # Celery hides its built-ins too
        task = worker.app.tasks[name]
        fields = [f'{item}={getattr(task, item, None)}' for item in items if getattr(task, item, None) is not None]
        out.append(f'{name} [{" ".join(fields)}]' if fields else name)
    return out


@command('query_task')
def _query_task(worker: WorkController, ids: Any = None, **kwargs: Any) -> dict[str, Any]:
    wanted = {ids} if isinstance(ids, str) else set(ids or ())
    active, reserved, scheduled = on_loop(worker, lambda: _jobs(worker))
    found: dict[str, Any] = {}
    for state, jobs in (('active', active), ('reserved', reserved), ('scheduled', [job for _, job in scheduled])):
        for job in jobs:
            if job.request.id in wanted:
                found[job.request.id] = [state, request_info(job, worker.hostname, worker.accept)]
    if wanted - found.keys():  # scheduled, and left waiting in the broker (as `scheduled` lists them)
        from fastq.worker import parked

        for record in parked.waiting(worker):
            if record.id in wanted and record.id not in found:
                found[record.id] = ['scheduled', parked.entry(record, worker.hostname, worker.accept)['request']]
    return found


@command('stats')
def _stats(worker: WorkController, **kwargs: Any) -> dict[str, Any]:
    dispatcher = worker.dispatcher
    pool = worker.pool

    def snapshot() -> tuple[dict[str, int], dict[str, object], int, dict[str, int] | None]:
        totals = dict(dispatcher.totals) if dispatcher is not None else {}
        scaler = worker.autoscaler.info() if worker.autoscaler is not None else None
        return totals, (pool.info() if pool is not None else {}), worker.prefetch_count, scaler

    totals, pool_info, prefetch_count, autoscaler = on_loop(worker, snapshot)
    # Celery: (soft, hard) of the pool, 0 when unset; a pool that has none says () (solo), left as it is
    if isinstance(pool_info.get('timeouts'), list) and dispatcher is not None:
        pool_info['timeouts'] = [dispatcher.default_soft_time_limit or 0, dispatcher.default_time_limit or 0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    broker = worker.broker
    return {
        'total': totals,
        'pid': os.getpid(),
        'clock': str(tick()),
        'uptime': int(time.monotonic() - worker.started_at),
        'pool': pool_info,
        'broker': broker_info(str(getattr(broker, 'url', '') or worker.app.conf.broker_url or '')),
        'prefetch_count': prefetch_count,  # (Celery's qos.value: held ETA tasks count)
        **_steps_info(worker),
        'rusage': {  # (Celery's keys: every field of getrusage)
            'utime': usage.ru_utime,
            'stime': usage.ru_stime,
            'maxrss': usage.ru_maxrss,
            'ixrss': usage.ru_ixrss,
            'idrss': usage.ru_idrss,
            'isrss': usage.ru_isrss,
            'minflt': usage.ru_minflt,
            'majflt': usage.ru_majflt,
            'nswap': usage.ru_nswap,
            'inblock': usage.ru_inblock,
            'oublock': usage.ru_oublock,
            'msgsnd': usage.ru_msgsnd,
            'msgrcv': usage.ru_msgrcv,
            'nsignals': usage.ru_nsignals,
            'nvcsw': usage.ru_nvcsw,
            'nivcsw': usage.ru_nivcsw,
        },
        'sw_ident': 'fastq',
        # (Celery's autoscaler bootstep adds its own, only with --autoscale)
        **({'autoscaler': autoscaler} if autoscaler is not None else {}),
    }


def _steps_info(worker: WorkController) -> dict[str, Any]:
    """What the application's worker and consumer bootsteps say in `info(parent)`: Celery merges it into the
    stats reply (a step's `info` returning {'my_step': {...}} is shown by `inspect stats`)."""
    info: dict[str, Any] = {}
    if worker.blueprint is not None:
        info.update(worker.blueprint.info(worker))
    consumer = worker.step_consumer
    if consumer is not None:
        info.update(consumer.blueprint.info(consumer))
    return info


_DEFAULT_PORTS = {'redis': 6379, 'rediss': 6379, 'amqp': 5672, 'amqps': 5671, 'pyamqp': 5672}


def broker_info(url: str) -> dict[str, Any]:
    """kombu's `Connection.info()` without the password, as Celery's `inspect stats` shows it under `broker`
    (Flower reads `transport`, `hostname`, `port`, `virtual_host` there)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme or 'memory'
    transport = {'rediss': 'redis', 'amqps': 'amqp', 'pyamqp': 'amqp', 'sqla+sqlite': 'sqlite'}.get(scheme, scheme)
    path = unquote(parts.path.lstrip('/')) if parts.path else ''
    try:
        port = parts.port
    except ValueError:
        port = None
    return {
        'hostname': parts.hostname or ('localhost' if transport in ('redis', 'amqp') else None),
        'userid': unquote(parts.username) if parts.username else ('guest' if transport == 'amqp' else None),
        'virtual_host': path or {'amqp': '/', 'redis': '0'}.get(transport),
        'port': port or _DEFAULT_PORTS.get(scheme),
        'insist': False,
        'ssl': scheme in ('rediss', 'amqps'),
        'transport': transport,
        'connect_timeout': 4,
        'transport_options': {},
        'login_method': 'AMQPLAIN' if transport == 'amqp' else None,
        'uri_prefix': None,
        'heartbeat': 120.0,
        'failover_strategy': 'round-robin',
        'alternates': [],
        'credential_provider': None,  # (kombu 5.6's Connection.info() has it)
    }


def _exchange_dict(exchange: Any) -> dict[str, Any]:
    ex = as_exchange(exchange)
    return {
        'name': ex.name, 'type': ex.type, 'arguments': ex.arguments, 'durable': ex.durable, 'passive': False,
        'auto_delete': ex.auto_delete, 'delivery_mode': ex.delivery_mode, 'no_declare': False,
    }  # fmt: skip


def _binding_dict(value: Any) -> dict[str, Any]:
    exchange = getattr(value, 'exchange', None)
    return {
        'exchange': _exchange_dict(exchange if exchange is not None else ''),
        'routing_key': getattr(value, 'routing_key', None) or '',
        'arguments': getattr(value, 'arguments', None),
        'unbind_arguments': getattr(value, 'unbind_arguments', None),
    }


@command('active_queues')
def _active_queues(worker: WorkController, **kwargs: Any) -> list[dict[str, Any]]:
    """kombu's `Queue.as_dict(recurse=True)` of each queue this worker consumes, as Celery's app.amqp.queues
    has it (`Router.declared`): its exchange is the one it is bound to (task_default_exchange for a queue
    given without one), not one of its own name."""
    out: list[dict[str, Any]] = []
    for name in worker.queues:
        queue = worker.app.router.declared(name)
        # (a queue add_consumer bound to an exchange of its own, not one the settings know: that binding)
        bound = worker.added_bindings.get(name) if name not in worker.app.router.queues else None
        exchange = _exchange_dict(queue.exchange)
        if bound:
            exchange.update(name=bound[0], type=bound[1])
        out.append({
            'name': queue.name,
            'exchange': exchange,
            'routing_key': bound[2] if bound else queue.routing_key,
            'queue_arguments': queue.queue_arguments,
            'binding_arguments': None, 'consumer_arguments': queue.consumer_arguments, 'durable': queue.durable,
            'exclusive': queue.exclusive, 'auto_delete': queue.auto_delete, 'no_ack': queue.no_ack,
            'alias': queue.alias, 'bindings': [_binding_dict(b) for b in queue.bindings or ()], 'no_declare': None,
            'expires': None, 'message_ttl': None, 'max_length': None, 'max_length_bytes': None,
            'max_priority': queue.max_priority,
        })  # fmt: skip
        if isinstance(queue, Broadcast):  # (kombu's Broadcast has one attribute more)
            out[-1]['queue'] = queue.name
    return out


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return repr(value)


@command('conf')
def _conf(worker: WorkController, with_defaults: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Celery's: `conf.table()`, what was configured (even to a default's value), censored."""
    table = worker.app.conf.table(with_defaults=with_defaults)
    return {key: _json_safe(value) for key, value in sorted(table.items()) if not key.startswith('__')}


def bugreport(app: Any) -> str:
    """Celery's `app.bugreport()`: software, platform and the settings that differ from the defaults."""
    import platform
    import sys

    from fastq import __version__

    broker = app.conf.broker_url or '(embedded sqlite)'
    backend = app.conf.result_backend or '(disabled)'
    from fastq.utils.text import mask_url

    return (
        f'software -> fastq:{__version__} python:{platform.python_version()}\n'
        f'            {platform.python_implementation()} {sys.version.split()[0]}\n'
        f'platform -> system:{platform.system()} arch:{platform.machine()} release:{platform.release()}\n'
        f'loader   -> {type(app).__module__}.{type(app).__name__}\n'
        f'settings -> transport:{mask_url(str(broker)).split(":", 1)[0]} results:{mask_url(str(backend))}\n\n'
        f'{app.conf.humanize()}\n'
    )


@command('report')
def _report(worker: WorkController, **kwargs: Any) -> dict[str, Any]:
    return ok(bugreport(worker.app))


@command('clock')
def _clock(worker: WorkController, **kwargs: Any) -> dict[str, Any]:
    return {'clock': tick()}


@command('time_limit')
def _time_limit(
    worker: WorkController, task_name: str = '', soft: Any = None, hard: Any = None, **kwargs: Any
) -> dict[str, Any]:
    task = worker.app.tasks.get(task_name)
    if task is None:
        from fastq.exceptions import NotRegistered

        try:  # (Celery's line carries the registry's KeyError, NotRegistered, with its traceback)
            raise NotRegistered(task_name)
        except NotRegistered:
            logger.error('Change time limit attempt for unknown task %s', task_name, exc_info=True)
        return {'error': 'unknown task'}
    # As sent (Celery stores them so): 120 from app.control.time_limit(..., hard=120) stays 120, which
    # `inspect registered time_limit` shows; a number in a string is read as one
    task.soft_time_limit = _seconds(soft)
    task.time_limit = _seconds(hard)
    _terms_changed(worker)
    logger.info('New time limits for tasks of type %s: soft=%s hard=%s', task_name, soft, hard)
    return ok('time limits set successfully')


def _seconds(value: Any) -> float | None:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    return float(value)


# --- control: which queues this worker consumes --------------------------------------------------------------


def _set_queues(worker: WorkController, queues: list[str]) -> None:
    """Consume from `queues` now; none at all too, as Celery's worker allows (cancel_consumer of its last
    queue pauses it until add_consumer gives it one)."""
    consumer = worker.consumer
    if consumer is None:
        raise ValueError('the worker is not consuming yet')
    consumer.set_queues(queues)  # NotImplementedError on brokers that cannot: reported as an error reply
    worker.queues = queues
    _terms_changed(worker)


def _terms_changed(worker: WorkController) -> None:
    """A pool child waiting in the broker (fastq.worker.lending) waits by what it was told: take the lead back."""
    lending = worker.lending
    if lending is not None:
        worker.loop.call_soon_threadsafe(lending.recall)


@command('add_consumer')
def _add_consumer(
    worker: WorkController,
    queue: str = '',
    exchange: str | None = None,
    exchange_type: str | None = None,
    routing_key: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Celery's `add_consumer`: start consuming `queue` now (`add_task_queue`)."""
    if not queue:
        raise ValueError('add_consumer needs a queue name')
    add_task_queue(worker, queue, exchange, exchange_type, routing_key)
    return ok(f'add consumer {queue}')


def add_task_queue(
    worker: WorkController,
    queue: str,
    exchange: str | None = None,
    exchange_type: str | None = None,
    routing_key: str | None = None,
) -> None:
    """Celery's consumer `add_task_queue` (add_consumer, and a bootstep's `c.add_task_queue`): consume `queue`
    (declared as the app declares its queues), bound to `exchange` (default: the queue's name, direct) with
    `routing_key` (default: the queue's name); 'Started consuming from <queue>' logged unless consumed
    already, as Celery's."""
    exchange = exchange or queue
    routing_key = queue if routing_key is None else routing_key
    if (exchange, routing_key) != (queue, queue) and worker.broker is not None:
        worker.broker.bind_consumed(queue, exchange, exchange_type or 'direct', routing_key)
        worker.added_bindings.setdefault(queue, (exchange, exchange_type or 'direct', routing_key))
    if queue not in worker.queues:  # (already consumed: the same answer, as Celery's)
        _set_queues(worker, [*worker.queues, queue])
        consumer_logger.info('Started consuming from %s', queue)


@command('cancel_consumer')
def _cancel_consumer(worker: WorkController, queue: str = '', **kwargs: Any) -> dict[str, Any]:
    cancel_task_queue(worker, queue)
    return ok(f'no longer consuming from {queue}')


def cancel_task_queue(worker: WorkController, queue: str) -> None:
    """Celery's consumer `cancel_task_queue` (cancel_consumer, and a bootstep's `c.cancel_task_queue`): stop
    consuming `queue`, 'Canceling queue <queue>' logged as Celery's. The last queue too: the worker then
    waits, holding nothing, until `add_consumer` gives it one (how Celery users pause a worker)."""
    consumer_logger.info('Canceling queue %s', queue)
    if queue in worker.queues:
        _set_queues(worker, [q for q in worker.queues if q != queue])


@command('terminate')
def _terminate(worker: WorkController, signal: str | None = None, task_id: Any = None, **kwargs: Any) -> Any:
    """Celery's `terminate <signal> <id>...` (what `celery control terminate` sends): revoke with terminate."""
    from fastq.worker.control import COMMANDS

    return COMMANDS['revoke'](worker, task_id=task_id, terminate=True, signal=signal)


def _aliases() -> None:
    """Celery's older names for the inspect commands (`dump_active`, ...), still sent by old clients."""
    from fastq.worker.control import COMMANDS

    for alias, name in (
        ('dump_active', 'active'),
        ('dump_reserved', 'reserved'),
        ('dump_schedule', 'scheduled'),
        ('dump_revoked', 'revoked'),
        ('dump_tasks', 'registered'),
        ('dump_conf', 'conf'),
    ):
        COMMANDS[alias] = COMMANDS[name]


_aliases()


# --- memory (Celery's memsample / memdump / objgraph, for leak hunting) -------------------------------------

_mem_samples: list[str] = []


def _rss() -> str | None:
    """This process's resident memory, as Celery's humanbytes writes it ('54.3MB'); None where unknown."""
    try:
        with open('/proc/self/status') as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith('VmRSS:'))
    except (OSError, StopIteration, ValueError):
        return None
    size = float(kib * 1024)
    for unit, shift in (('GB', 30), ('MB', 20), ('KB', 10)):
        if size >= 1 << shift:
            return f'{size / (1 << shift):.2f}'.rstrip('0').rstrip('.') + unit
    return f'{int(size)}b'


@command('memsample')
def _memsample(worker: WorkController, **kwargs: Any) -> str | None:
    value = _rss()
    if value is not None:
        _mem_samples.append(value)
    return value


@command('memdump')
def _memdump(worker: WorkController, samples: int = 10, **kwargs: Any) -> str:
    import gc

    taken = list(_mem_samples)
    if len(taken) > samples:
        step = len(taken) / samples
        taken = [taken[int(i * step)] for i in range(samples)]
    _mem_samples.clear()
    gc.collect()
    after = _rss()
    if after is None:
        return '- rss: (unknown on this platform).\n'
    lines = ['- rss (sample):', *(f'-    > {value},' for value in taken)] if taken else []
    return '\n'.join([*lines, f'- rss (end): {after}.']) + '\n'


@command('objgraph')
def _objgraph(worker: WorkController, num: int = 200, max_depth: int = 10, type: str = 'Request', **kwargs: Any) -> Any:
    try:
        import objgraph  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:  # (answered as any failing command is: `{'error': repr(exc)}`, Celery's words)
        raise ImportError('Requires the objgraph library') from exc
    import random
    import tempfile

    logger.info('Dumping graph for type %r', type)
    with tempfile.NamedTemporaryFile(prefix='cobjg', suffix='.png', delete=False) as fh:
        objects = objgraph.by_type(type)[:num]
        objgraph.show_backrefs(random.sample(objects, min(num, len(objects))), max_depth=max_depth, filename=fh.name)
        return {'filename': fh.name}
