"""A worker's side of remote control: listen on the pidbox, run commands, reply (Celery's wire format).

Commands here: `ping`, `shutdown`, `revoke` (with `terminate`), `hello` (the greeting Celery workers exchange
at startup, answered with our revoked ids so Celery peers honour them too). The rest arrive with the
monitoring work. Commands that touch task state run in the worker loop's thread; the listener only waits.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastq.control import PIDBOX_EXCHANGE, REPLY_EXCHANGE, decode_envelope, tick
from fastq.utils.functional import as_list

if TYPE_CHECKING:
    from fastq.brokers.base import Broker
    from fastq.worker.worker import WorkController

T = TypeVar('T')

logger = logging.getLogger('celery.worker.control')

Handler = Callable[..., Any]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


#: Commands the app defined (Celery's `control_command` / `inspect_command`): name -> what the CLI needs
#: to call them (kind, argument spec, signature, variadic name).
APP_COMMANDS: dict[str, dict[str, Any]] = {}


class ControlState:
    """What an app's command function gets as `state` (Celery's Panel state): the worker's app, node name
    and `consumer` (whose `controller` is the worker, `app` the app, and `qos` the prefetch count)."""

    def __init__(self, worker: WorkController) -> None:
        self.worker = worker
        self.app = worker.app
        self.hostname = worker.hostname
        self.consumer = _ConsumerView(worker)


class _ConsumerView:
    def __init__(self, worker: WorkController) -> None:
        self.controller = worker
        self.app = worker.app
        self.hostname = worker.hostname
        self.pool = worker.pool
        #: the prefetch count, as kombu's QoS (the Workers guide's increase_prefetch_count example uses it)
        self.qos = worker.qos


def _app_command(
    kind: str,
    name: str | None,
    args: Any,
    signature: str | None,
    variadic: str | None,
    alias: str | None,
    visible: bool = True,
    help: str | None = None,
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        names = [name or fn.__name__, *([alias] if alias else [])]
        for each in names:
            APP_COMMANDS[each] = {
                'type': kind,
                'args': list(args or []),
                'signature': signature or '',
                'variadic': variadic,
                # what --list shows (Celery's: the docstring's first line; not the alias, nor visible=False)
                'help': help or (fn.__doc__ or '').strip().split('\n')[0],
                'listed': visible and each == names[0],
            }
            COMMANDS[each] = lambda worker, _fn=fn, **kwargs: _fn(ControlState(worker), **kwargs)
        return fn

    return register


def control_command(
    name: str | None = None,
    args: Any = None,
    signature: str | None = None,
    variadic: str | None = None,
    alias: str | None = None,
    visible: bool = True,
    help: str | None = None,
    **kwargs: Any,
) -> Callable[[Handler], Handler]:
    """Define a remote control command (Celery's): `fn(state, **arguments)` runs in every worker that gets
    it and returns the reply (`{'ok': ...}`); `fastq control NAME ARGS...` sends it, with `args` (pairs of
    name and type) saying how the command line's values are read."""
    return _app_command('control', name, args, signature, variadic, alias, visible, help)


def inspect_command(
    name: str | None = None,
    args: Any = None,
    signature: str | None = None,
    variadic: str | None = None,
    alias: str | None = None,
    visible: bool = True,
    help: str | None = None,
    **kwargs: Any,
) -> Callable[[Handler], Handler]:
    """Define a remote inspect command (Celery's), read with `fastq inspect NAME` or `app.control.inspect()`."""
    return _app_command('inspect', name, args, signature, variadic, alias, visible, help)


def ok(value: Any) -> dict[str, Any]:
    return {'ok': value}


def on_loop(worker: WorkController, fn: Callable[[], T], timeout: float = 5.0) -> T:
    """Run `fn` in the worker loop's thread, which owns the task state, and return its value (or raise what it
    raised); the pidbox thread waits for it."""
    if not worker.loop.running or worker.loop.thread is threading.current_thread():
        return fn()  # (asked from the loop's own thread, posting and waiting would wait for itself)
    done = threading.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))
        finally:
            done.set()

    worker.loop.call_soon_threadsafe(run)
    while not done.wait(timeout):
        # The solo pool runs a task in the loop's own thread: the command is answered once the task returns, as
        # Celery's solo worker answers (late), not with an error (logged, with its traceback) each time a
        # monitor polls a worker whose task runs longer than `timeout`
        pool = worker.pool
        if not (pool is not None and pool.runs_tasks_in_loop and getattr(pool, 'busy', bool)()):
            raise TimeoutError('the worker loop did not answer in time')
    good, value = box[0]
    if not good:
        raise value
    return value  # type: ignore[no-any-return]


@command('ping')
def _ping(worker: WorkController, **kwargs: Any) -> dict[str, Any]:
    return ok('pong')


@command('shutdown')
def _shutdown(worker: WorkController, msg: str = 'Got shutdown from remote', **kwargs: Any) -> None:
    logger.warning(msg)
    worker.loop.call_soon_threadsafe(lambda: worker.request_shutdown('warm'))


def signum(signal: Any) -> int:
    """The signal a revoke's `signal` names, read as Celery's `platforms.signals.signum`: a number as it is, a
    name in capitals with or without its SIG ('KILL', 'SIGKILL'); anything else is refused (TypeError, or
    AttributeError for a name the signal module lacks), which the sender gets back as an error reply."""
    import signal as signals_module

    if isinstance(signal, int) and not isinstance(signal, bool):
        return signal
    if not isinstance(signal, str) or not signal.isupper():
        raise TypeError('signal name must be uppercase string.')
    return int(getattr(signals_module, signal if signal.startswith('SIG') else f'SIG{signal}'))


@command('revoke')
def _revoke(
    worker: WorkController, task_id: Any = None, terminate: bool = False, signal: Any = None, **kwargs: Any
) -> dict[str, Any]:
    ids = {task_id} if isinstance(task_id, str) else set(task_id or ())
    refused: Exception | None = None
    number = 15
    if terminate:
        try:
            number = signum(signal or 'SIGTERM')
        except (TypeError, AttributeError) as exc:  # (Celery reads it after flagging the ids: they stay revoked)
            refused, terminate = exc, False
    dispatcher = worker.dispatcher
    terminated: list[str] = []
    if dispatcher is not None:

        def revoke() -> list[str]:
            running = sorted({job.request.id for job in dispatcher.running.values()} & ids) if terminate else []
            dispatcher.revoke(ids, terminate=bool(terminate), signum=number)
            return running

        terminated = on_loop(worker, revoke)
        from fastq.worker.parked import store_revoked

        store_revoked(worker, ids)
    if refused is not None:
        raise refused
    if terminate:  # Celery's words: the ids it found running, or none
        return ok('terminate: {}'.format(', '.join(terminated)) if terminated else 'terminate: tasks unknown')
    logger.info('Tasks flagged as revoked: %s', ', '.join(ids))
    return ok(f'tasks {ids} flagged as revoked')


@command('rate_limit')
def _rate_limit(worker: WorkController, task_name: str = '', rate_limit: Any = None, **kwargs: Any) -> dict[str, Any]:
    from fastq.utils.time import parse_rate

    try:
        parse_rate(rate_limit)
    except ValueError as exc:
        return {'error': f'Invalid rate limit string: {exc!r}'}
    if task_name not in worker.app.tasks:
        logger.error('Rate limit attempt for unknown task %s', task_name)
        return {'error': 'unknown task'}
    if worker.dispatcher is not None:
        dispatcher = worker.dispatcher
        worker.loop.call_soon_threadsafe(lambda: dispatcher.set_rate_limit(task_name, rate_limit))
    if not rate_limit:
        logger.info('Rate limits disabled for tasks of type %s', task_name)
        return ok('rate limit disabled successfully')
    logger.info('New rate limit for tasks of type %s: %s.', task_name, rate_limit)
    return ok('new rate limit set successfully')


@command('revoke_by_stamped_headers')
def _revoke_by_stamped_headers(
    worker: WorkController, headers: Any = None, terminate: bool = False, signal: Any = None, **kwargs: Any
) -> dict[str, Any]:
    """Revoke the tasks stamped with these values (`{'mtask_id': [id1, id2]}`, or Celery's 'k=v' strings)."""
    number = signum(signal or 'SIGTERM')  # (first: Celery refuses a bad signal before flagging anything)
    if isinstance(headers, list | tuple):
        headers = dict(item.split('=', 1) for item in headers)
    headers = dict(headers or {})
    dispatcher = worker.dispatcher
    killed: list[Any] = []
    if dispatcher is not None:
        killed = on_loop(worker, lambda: dispatcher.revoke_stamped(headers, bool(terminate), number))
    if not terminate:
        return ok(f'headers {headers} flagged as revoked, but not terminated')
    if not killed:
        return ok(f'headers {headers} were not terminated')
    matched: dict[str, set[Any]] = {}
    for job in killed:
        stamps = (job.delivery.message.headers.get('stamps') if job.delivery.message is not None else None) or {}
        for name, values in headers.items():
            found = set(as_list(stamps.get(name))) & set(as_list(values))
            if found:
                matched.setdefault(name, set()).update(found)
    return ok(f'headers {matched} revoked')


@command('hello')
def _hello(worker: WorkController, from_node: str = '', revoked: Any = None, **kwargs: Any) -> dict[str, Any]:
    if from_node == worker.hostname:
        return {}
    logger.info('sync with %s', from_node)
    if revoked and worker.dispatcher is not None:
        ids = set(revoked)
        worker.loop.call_soon_threadsafe(lambda: worker.dispatcher.revoke(ids) if worker.dispatcher else None)
    known = sorted(worker.dispatcher.revoked) if worker.dispatcher is not None else []
    return {'revoked': known, 'clock': tick()}


def _matches(hostname: str, body: dict[str, Any]) -> bool:
    destination = body.get('destination')
    if destination:
        return hostname in destination
    pattern = body.get('pattern')
    if pattern:
        matcher = body.get('matcher') or 'glob'
        if matcher == 'pcre':
            return re.search(pattern, hostname) is not None
        return fnmatch.fnmatchcase(hostname, pattern)
    return True


#: What a handler returns to stay silent (beat's ping while its scheduler is stalled: no answer is the signal).
NO_REPLY = object()


class ControlListener(threading.Thread):
    """Subscribes to the pidbox and serves commands until the worker stops."""

    def __init__(
        self,
        worker: Any,
        broker: Broker,
        commands: dict[str, Handler] | None = None,
        exchange: str = PIDBOX_EXCHANGE,
    ) -> None:
        super().__init__(name='fastq-pidbox', daemon=True)
        self.worker = worker  # (a worker, or any node with a `hostname`: beat's)
        self.broker = broker
        #: The commands this node serves; a node with its own (beat: ping) ignores the others silently, as
        #: replying would add it to the answers of worker-only commands such as `inspect active`.
        self.commands = COMMANDS if commands is None else commands
        self._stop_event = threading.Event()
        self.exchange = exchange  # `<control_exchange>.pidbox` (fastq.control.pidbox_exchange)
        self.subscription = broker.subscribe(exchange)

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        backoff = 0.0
        while not self._stop_event.is_set():
            try:
                messages = self.subscription.get(1.0)
                backoff = 0.0
            except Exception as exc:
                backoff = min(max(backoff * 2, 0.5), 10.0)
                logger.warning('pidbox: cannot read commands from %s: %s', self.broker.describe(), exc)
                self._stop_event.wait(backoff)
                try:
                    self.subscription = self.broker.subscribe(self.exchange)
                except Exception as again:
                    logger.debug('pidbox: resubscribe failed: %s', again)
                continue
            for _, raw in messages:
                self.handle(raw)
        self.subscription.close()

    def handle(self, raw: bytes) -> None:
        try:
            headers, body = decode_envelope(raw)
        except ValueError as exc:
            logger.warning('pidbox: ignoring a malformed command: %s', exc)
            return
        if not isinstance(body, dict) or not isinstance(body.get('method'), str):
            return
        expires = headers.get('expires')
        if isinstance(expires, int | float) and expires and expires < time.time():
            logger.debug('pidbox: ignoring expired %s command', body['method'])
            return
        hostname = self.worker.hostname
        if not _matches(hostname, body):
            return
        method = body['method']
        handler = self.commands.get(method)
        if handler is None and self.commands is not COMMANDS:
            return
        arguments = body.get('arguments') or {}
        try:
            if handler is None:  # (kombu's pidbox looks it up inside its try: KeyError, logged and answered)
                raise KeyError(method)
            result = handler(self.worker, **arguments)
        except Exception as exc:  # (kombu's pidbox: logged with its traceback, answered with its repr)
            logging.getLogger('kombu.pidbox').error('pidbox command error: %r', exc, exc_info=True)
            result = {'error': repr(exc)}
        reply_to = body.get('reply_to')
        ticket = body.get('ticket')
        # (None is a reply too, as kombu's pidbox sends it: `control heartbeat` answers so; only a shutdown,
        # which Celery's worker never answers, stays silent)
        if (
            result is NO_REPLY
            or (result is None and method == 'shutdown')
            or not isinstance(reply_to, dict)
            or not ticket
        ):
            return
        self.reply({hostname: result}, ticket, reply_to)

    def reply(self, body: dict[str, Any], ticket: str, reply_to: dict[str, Any]) -> None:
        from fastq import _core
        from fastq.brokers.base import Outgoing

        routing_key = str(reply_to.get('routing_key') or '')
        exchange = str(reply_to.get('exchange') or REPLY_EXCHANGE)
        payload = _core.json_dumps(body, None)
        message = _core.Message(payload, 'application/json', 'utf-8', {'ticket': ticket, 'clock': tick()}, {})
        try:
            # (the caller's queue is named after the reply exchange it chose: `<oid>.reply.<namespace>.pidbox`)
            self.broker.publish(
                [Outgoing(message, f'{routing_key}.{exchange}', exchange, routing_key, 0, delivery_mode=1)]
            )
        except Exception as exc:
            logger.warning('pidbox: cannot reply to %s: %s', routing_key, exc)


__all__ = ['COMMANDS', 'ControlListener']
