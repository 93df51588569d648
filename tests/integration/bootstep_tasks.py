"""The "Extensions and Bootsteps" and "Signals" guides' examples, run by a real worker
(`fastq -A bootstep_tasks worker`, tests/integration/test_bootsteps.py).

Broker and backend come from FASTQ_BROKER_URL / FASTQ_RESULT_BACKEND. Every hook writes one line to the file
named by BOOTSTEP_RECORD, with the process id, so the test can tell which process ran it and in what order.
"""

from __future__ import annotations

import os
from typing import Any

from click import Option
from kombu import Consumer, Exchange, Queue

from fastq import Fastq, bootsteps, signals

app = Fastq('bootstep_tasks')
RECORD = os.environ.get('BOOTSTEP_RECORD')
my_queue = Queue('custom', Exchange('custom'), 'routing_key')


def record(line: str) -> None:
    if RECORD:
        with open(RECORD, 'a') as f:
            f.write(f'{os.getpid()} {line}\n')


app.user_options['worker'].add(Option(('--enable-my-option',), is_flag=True, help='Enable custom option.'))
app.user_options['worker'].add(Option(('--my-number',), type=int, default=7))
app.user_options['preload'].add(Option(('-Z', '--template'), default='default', help='Configuration template.'))


class MyWorkerStep(bootsteps.StartStopStep):
    requires = {'celery.worker.components:Pool'}

    def __init__(self, worker: Any, enable_my_option: bool = False, my_number: int = 0, **options: Any) -> None:
        super().__init__(worker, **options)
        record(f'worker-step-init {worker.hostname} enable_my_option={enable_my_option} my_number={my_number!r}')

    def create(self, worker: Any) -> Any:
        return self

    def start(self, worker: Any) -> None:
        record(f'worker-step-start pool={worker.pool is not None}')
        self.tref = worker.timer.call_repeatedly(0.2, self.tick, (worker,))

    def tick(self, worker: Any) -> None:
        if not getattr(self, 'ticked', False):
            self.ticked = True
            record('worker-step-timer')

    def stop(self, worker: Any) -> None:
        self.tref.cancel()
        record('worker-step-stop')


class NotIncluded(bootsteps.StartStopStep):
    def include_if(self, worker: Any) -> bool:
        return False

    def start(self, worker: Any) -> None:
        record('not-included-start')


class MyConsumerStep(bootsteps.ConsumerStep):
    def get_consumers(self, channel: Any) -> list[Any]:
        record('consumer-step-get-consumers')
        return [Consumer(channel, queues=[my_queue], callbacks=[self.handle_message], accept=['json'])]

    def handle_message(self, body: Any, message: Any) -> None:
        record(f'consumer-step-message {body["hello"]}')
        message.ack()

    def shutdown(self, c: Any) -> None:
        record('consumer-step-shutdown')
        super().shutdown(c)


app.steps['worker'].add(MyWorkerStep)
app.steps['worker'].add(NotIncluded)
app.steps['consumer'].add(MyConsumerStep)


def send_me_a_message(who: str, producer: Any = None) -> None:
    """The guide's way to publish a message for the custom consumer."""
    with app.producer_or_acquire(producer) as producer:
        producer.publish(
            {'hello': who},
            serializer='json',
            exchange=my_queue.exchange,
            routing_key='routing_key',
            declare=[my_queue],
            retry=True,
        )


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def die(code: int) -> None:
    os._exit(code)  # the pool child is lost mid-task: the parent sends task_failure (WorkerLostError)


@signals.user_preload_options.connect
def on_preload_parsed(options: dict[str, Any], app: Any, **kwargs: Any) -> None:
    record(f'user_preload_options template={options["template"]} app={app.main}')


@signals.celeryd_init.connect(sender='bootsteps@example.com')
def configure_worker12(sender: str, conf: Any, options: dict[str, Any], **kwargs: Any) -> None:
    record(f'celeryd_init {sender} enable_my_option={options.get("enable_my_option")}')


@signals.celeryd_init.connect(sender='nobody@example.com')
def not_this_worker(sender: str, **kwargs: Any) -> None:
    record('celeryd_init-wrong-sender')


@signals.celeryd_after_setup.connect
def setup_direct_queue(sender: str, instance: Any, **kwargs: Any) -> None:
    if instance.app is not app:  # (tests import this module: an in-process worker of another app must not
        return  # get the queue, as a test of contrib.testing's start_worker did when it ran later)
    instance.app.amqp.queues.select_add(f'{sender}.dq')
    record(f'celeryd_after_setup {sender}')


@signals.worker_process_init.connect
def process_init(sender: Any, **kwargs: Any) -> None:
    record(f'worker_process_init {sender}')


@signals.worker_process_shutdown.connect
def process_shutdown(sender: Any, pid: int, exitcode: int, **kwargs: Any) -> None:
    record(f'worker_process_shutdown {sender} {pid == os.getpid()} {exitcode}')


@signals.worker_ready.connect
def ready(sender: Any, **kwargs: Any) -> None:
    record('worker_ready')


@signals.worker_shutting_down.connect
def shutting_down(sender: Any, sig: Any, how: str, exitcode: int, **kwargs: Any) -> None:
    record(f'worker_shutting_down {sender} {sig} {how} {exitcode}')


@signals.worker_shutdown.connect
def shutdown(sender: Any, **kwargs: Any) -> None:
    record('worker_shutdown')


@signals.task_failure.connect(sender=fail)
def failed(sender: Any, task_id: str, exception: BaseException, args: Any, einfo: Any, **kwargs: Any) -> None:
    record(f'task_failure {sender.name} {type(exception).__name__} {list(args)} {einfo.type.__name__}')


@signals.task_failure.connect(sender=die)
def died(sender: Any, task_id: str, args: Any, kwargs: Any, traceback: Any, einfo: Any, **rest: Any) -> None:
    record(
        f'task_failure {sender.name} {type(einfo.exception).__name__} {list(args)} {kwargs} {type(traceback).__name__}'
        f' request={sender.request.id == task_id}'
    )


@signals.task_revoked.connect
def revoked(sender: Any, request: Any, terminated: bool, expired: bool, **kwargs: Any) -> None:
    record(
        f'task_revoked {sender.name} {type(request).__name__} {list(request.args)} {bool(request.hostname)} {expired}'
    )


@signals.task_received.connect
def received(sender: Any, request: Any, **kwargs: Any) -> None:
    record(f'task_received {request.name} {request.id} {list(request.args)}')
    info = request.delivery_info
    record(
        f'task_received-details {request.id} {request.correlation_id == request.id} {request.root_id == request.id} '
        f'{request.parent_id} {request.group} {bool(request.reply_to)} {info["exchange"]!r} {info["routing_key"]} '
        f'{info["priority"]} {info["redelivered"]} {request.eta}'
    )
    celerys = {'args', 'kwargs', 'properties', 'reply_to', 'correlation_id', 'hostname', 'delivery_info', 'argsrepr'}
    record(
        f'task_received-more {request.id} {request.type} {request.argsrepr} {request.kwargsrepr} '
        f'{request.content_type} {request.content_encoding} {request.utc} {request.ignore_result} '
        f'{request.store_errors} {request.stamps} {request.groups} {request.chord} '
        f'{celerys <= request.request_dict.keys()} {request.request_dict["args"]} {request.group_index} '
        f'{request.time_limits}'
    )
    message = request.message  # (kombu's Message reading, as Celery's Request has it)
    record(
        f'task_received-message {request.id} {message.payload[0]} {message.headers["id"] == request.id} '
        f'{message.delivery_info["routing_key"]} {message.content_type} {message.acknowledged}'
    )


@signals.task_rejected.connect
def rejected(sender: Any, message: Any, exc: Any, **kwargs: Any) -> None:
    record(f'task_rejected {type(exc).__name__}')
    if hasattr(message, 'payload'):  # (kombu's Message reading, as Celery's receivers get it)
        info = message.delivery_info
        record(f'task_rejected-message {message.payload} {info["routing_key"]} {message.acknowledged}')


@signals.task_unknown.connect
def unknown(sender: Any, message: Any, exc: Any, name: str, id: str, **kwargs: Any) -> None:
    record(
        f'task_unknown {name} {isinstance(exc, KeyError)} {message.payload[0]} {message.delivery_info["routing_key"]}'
    )
