"""The SQS broker's settings, its boto3 clients and queue URLs: everything that talks to AWS goes through here.

Settings are read once into `Options` (kombu spreads them over cached properties of its Channel), and an
option fastq does not implement is refused at startup, naming it, instead of being ignored.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from fastq.brokers.sqs.layout import (
    DEFAULT_POLLING_INTERVAL,
    DEFAULT_REGION,
    DEFAULT_VISIBILITY_TIMEOUT,
    DEFAULT_WAIT_TIME_SECONDS,
    MAX_VISIBILITY,
    MAX_WAIT,
    entity_name,
    is_fifo,
)
from fastq.exceptions import BrokerConnectionError, ImproperlyConfigured, OperationalError

try:
    import boto3
    import botocore.config
    import botocore.exceptions
except ImportError:  # pragma: no cover - depends on the environment
    boto3 = None

#: kombu's options fastq refuses rather than silently ignores (what each would need).
REFUSED = {
    'sts_role_arn': 'STS role assumption is not implemented; give credentials in the URL, per queue in '
    'predefined_queues, or through boto3 (environment, ~/.aws, an instance role)',
    'supports_fanout': 'fanout through SNS is not implemented: SQS carries no remote control or events',
    'predefined_exchanges': 'fanout through SNS is not implemented: SQS carries no remote control or events',
}

#: Error codes meaning "no such queue" (the JSON and the query protocol spell it differently).
MISSING_QUEUE = frozenset({'AWS.SimpleQueueService.NonExistentQueue', 'QueueDoesNotExist'})


@dataclass(frozen=True)
class PredefinedQueue:
    url: str
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    backoff_policy: dict[int, int] = field(default_factory=dict)
    backoff_tasks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Options:
    """The URL and `broker_transport_options`, with kombu's names and defaults."""

    region: str
    endpoint_url: str | None
    access_key_id: str | None
    secret_access_key: str | None
    queue_name_prefix: str = ''
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    wait_time_seconds: int = DEFAULT_WAIT_TIME_SECONDS
    polling_interval: float = DEFAULT_POLLING_INTERVAL
    base64: bool = True
    predefined: dict[str, PredefinedQueue] = field(default_factory=dict)  # by SQS queue name
    creation_attributes: dict[str, str] = field(default_factory=dict)
    queue_tags: dict[str, str] = field(default_factory=dict)
    client_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str, options: Mapping[str, Any]) -> Options:
        for name, why in REFUSED.items():
            if options.get(name):
                raise ImproperlyConfigured(f'broker_transport_options: {name!r} is not supported on sqs://: {why}')
        parts = urlsplit(url)
        endpoint = options.get('endpoint_url')
        if not endpoint and parts.hostname:
            # kombu: a host in the URL is the endpoint (a local SQS, a VPC endpoint); https only with is_secure
            scheme = 'https' if options.get('is_secure') else 'http'
            endpoint = f'{scheme}://{parts.hostname}' + (f':{parts.port}' if parts.port else '')
        prefix = str(options.get('queue_name_prefix') or '')
        return cls(
            region=str(options.get('region') or _default_region()),
            endpoint_url=endpoint or None,
            access_key_id=unquote(parts.username) if parts.username else None,
            secret_access_key=unquote(parts.password) if parts.password else None,
            queue_name_prefix=prefix,
            visibility_timeout=_int_option(options, 'visibility_timeout', DEFAULT_VISIBILITY_TIMEOUT, MAX_VISIBILITY),
            wait_time_seconds=_int_option(options, 'wait_time_seconds', DEFAULT_WAIT_TIME_SECONDS, MAX_WAIT),
            polling_interval=float(options.get('polling_interval', DEFAULT_POLLING_INTERVAL) or 0.0),
            base64=bool(options.get('sqs_base64_encoding', options.get('sqs-base64-encoding', True))),
            predefined=_predefined(options.get('predefined_queues') or {}),
            creation_attributes={k: str(v) for k, v in (options.get('sqs-creation-attributes') or {}).items()},
            queue_tags=dict(options.get('queue_tags') or {}),
            client_config=dict(options.get('client-config') or {}),
        )

    def sqs_name(self, queue: str) -> str:
        """The SQS name of a queue (kombu's `canonical_queue_name`)."""
        return entity_name(self.queue_name_prefix + queue)


def _default_region() -> str:
    if boto3 is None:
        return DEFAULT_REGION
    return boto3.Session().region_name or DEFAULT_REGION


def _int_option(options: Mapping[str, Any], name: str, default: int, most: int) -> int:
    raw = options.get(name)
    if raw is None or raw == '':
        return default
    try:
        value = int(float(raw))  # SQS takes whole seconds (kombu truncates too)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(
            f'broker_transport_options: {name} must be a number of seconds, got {raw!r}'
        ) from None
    if not 0 <= value <= most:
        raise ImproperlyConfigured(f'broker_transport_options: {name} must be within 0..{most} on SQS, got {raw!r}')
    return value


def _predefined(raw: Mapping[str, Any]) -> dict[str, PredefinedQueue]:
    """`predefined_queues`, checked as kombu checks it: a FIFO queue's name and URL both end in `.fifo`."""
    out = {}
    for name, spec in raw.items():
        if not isinstance(spec, Mapping) or not spec.get('url'):
            raise ImproperlyConfigured(f'broker_transport_options: predefined_queues[{name!r}] needs a url')
        url = str(spec['url'])
        if is_fifo(url) != is_fifo(name):
            raise ImproperlyConfigured(
                f'broker_transport_options: predefined_queues[{name!r}]: a FIFO queue must have a name and a url '
                f'ending in .fifo, and a standard queue neither (url {url!r})'
            )
        out[name] = PredefinedQueue(
            url=url,
            access_key_id=spec.get('access_key_id'),
            secret_access_key=spec.get('secret_access_key'),
            session_token=spec.get('session_token'),
            region=spec.get('region'),
            backoff_policy={int(k): int(v) for k, v in (spec.get('backoff_policy') or {}).items()},
            backoff_tasks=frozenset(spec.get('backoff_tasks') or ()),
        )
    return out


def require_boto3() -> None:
    if boto3 is None:
        raise ImproperlyConfigured('broker_url sqs:// needs boto3, which is not installed: pip install "fastq[sqs]"')


def error_code(exc: BaseException | None) -> str:
    response = getattr(exc, 'response', None)
    return str((response or {}).get('Error', {}).get('Code', '')) if isinstance(response, dict) else ''


@contextlib.contextmanager
def translated(describe: str, what: str) -> Iterator[None]:
    """boto3's errors as fastq's: unreachable or unauthenticated is a connection error (retried with backoff by
    the worker and the publisher), a refusal by SQS an operational one."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get('Error', {})
        code = err.get('Code', '?')
        message = f'{describe}: {what}: {code}: {err.get("Message", exc)}'
        if code in ('InvalidClientTokenId', 'SignatureDoesNotMatch', 'UnrecognizedClientException'):
            raise BrokerConnectionError(message) from exc
        raise OperationalError(message) from exc
    except (botocore.exceptions.BotoCoreError, OSError) as exc:
        raise BrokerConnectionError(f'{describe}: {what}: {exc}') from exc


class Clients:
    """One boto3 client per set of credentials, and each queue's URL and client.

    boto3's low-level clients are thread-safe once made (sessions are not), so they are made under a lock and
    shared by the broker's threads.
    """

    def __init__(self, options: Options, describe: str) -> None:
        require_boto3()
        self.options = options
        self.describe = describe
        self._lock = threading.Lock()
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._urls: dict[str, str] = {}  # SQS name -> queue URL
        self._names: dict[str, str] = {}  # queue URL -> SQS name

    def _client(self, region: str, key: str | None, secret: str | None, token: str | None = None) -> Any:
        ident = (region, key, secret, token)
        with self._lock:
            client = self._clients.get(ident)
            if client is None:
                session = boto3.Session(
                    region_name=region, aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token
                )
                config = botocore.config.Config(**self.options.client_config)
                client = self._clients[ident] = session.client(
                    'sqs', config=config, endpoint_url=self.options.endpoint_url
                )
            return client

    @property
    def default(self) -> Any:
        o = self.options
        return self._client(o.region, o.access_key_id, o.secret_access_key)

    def for_queue(self, sqs_name: str) -> Any:
        """The client for a queue: its own credentials when predefined with some (kombu's `Channel.sqs`)."""
        spec = self.options.predefined.get(sqs_name)
        if spec is None:
            return self.default
        o = self.options
        return self._client(
            spec.region or o.region,
            spec.access_key_id or o.access_key_id,
            spec.secret_access_key or o.secret_access_key,
            spec.session_token,
        )

    def url(self, sqs_name: str, create: bool) -> str | None:
        """A queue's URL, created with kombu's attributes when `create` and missing; None when missing."""
        url = self._urls.get(sqs_name)
        if url is not None:
            return url
        predefined = self.options.predefined
        if predefined:
            spec = predefined.get(sqs_name)
            if spec is None:
                raise ImproperlyConfigured(
                    f'broker_transport_options: queue {sqs_name!r} must be defined in predefined_queues '
                    f'(defined: {", ".join(sorted(predefined))})'
                )
            url = spec.url
        else:
            client = self.default
            try:
                with translated(self.describe, f'GetQueueUrl {sqs_name}'):
                    url = client.get_queue_url(QueueName=sqs_name)['QueueUrl']
            except OperationalError as exc:
                if error_code(exc.__cause__) not in MISSING_QUEUE:
                    raise
                if not create:
                    return None
                url = self._create(sqs_name)
        self._urls[sqs_name] = url
        self._names[url] = sqs_name
        return url

    def _create(self, sqs_name: str) -> str:
        attributes = {'VisibilityTimeout': str(self.options.visibility_timeout)}
        if is_fifo(sqs_name):
            attributes['FifoQueue'] = 'true'
        attributes.update(self.options.creation_attributes)
        params: dict[str, Any] = {'QueueName': sqs_name, 'Attributes': attributes}
        if self.options.queue_tags:
            params['tags'] = self.options.queue_tags
        with translated(self.describe, f'CreateQueue {sqs_name}'):
            return str(self.default.create_queue(**params)['QueueUrl'])

    def forget(self, sqs_name: str) -> None:
        url = self._urls.pop(sqs_name, None)
        if url is not None:
            self._names.pop(url, None)

    def list_names(self) -> list[str]:
        """SQS names of the queues under the prefix (the predefined ones, when there are)."""
        if self.options.predefined:
            return sorted(self.options.predefined)
        names: list[str] = []
        params: dict[str, Any] = {'QueueNamePrefix': self.options.queue_name_prefix, 'MaxResults': 1000}
        with translated(self.describe, 'ListQueues'):
            while True:
                reply = self.default.list_queues(**params)
                names.extend(url.rsplit('/', 1)[-1] for url in reply.get('QueueUrls', []))
                token = reply.get('NextToken')
                if not token:
                    return sorted(names)
                params['NextToken'] = token
