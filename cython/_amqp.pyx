# cython: language_level=3, embedsignature=True
"""fastq._amqp: an AMQP 0-9-1 connection over rabbitmq-c, so frames are encoded and decoded in C.

rabbitmq-c is not thread-safe, and it answers heartbeats only while one of its calls runs. So a `Connection`
belongs to one thread (fastq's broker runs an I/O thread per connection), which calls `wait` whenever it has
nothing to send: `wait` polls the socket and a wakeup descriptor with the GIL released, reads every frame that
arrived (deliveries, publisher confirms, channel closes) and services heartbeats, so a connection stays alive
while the worker's other threads are busy. Every blocking call releases the GIL.

Values go in and out as Python primitives: properties are dicts with kombu's key names, header tables are
dicts of str/int/float/bool/None/bytes/list/dict. Routing, retries and policy are the caller's.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint16_t, uint64_t

from amqp_c cimport *
from ipc_c cimport POLLIN, poll, pollfd

from fastq.exceptions import AMQPChannelError, BrokerConnectionError

#: `wait` events, as the first item of each tuple it returns.
DELIVER = 'deliver'
CONFIRM_ACK = 'ack'
CONFIRM_NACK = 'nack'
CHANNEL_CLOSED = 'channel_closed'
CANCELLED = 'cancelled'
RETURNED = 'returned'

cdef int MAX_EVENTS = 4096  # per `wait` call, so the owning thread gets to send in between
cdef int POOL_PAGE = 4096

cdef object _str_type = str
cdef object _bytes_type = bytes


cdef enum ConnState:
    CONN_OPEN
    CONN_CLOSED


cdef inline amqp_bytes_t amqp_b(bytes value):
    cdef amqp_bytes_t out
    out.len = <size_t>PyBytes_GET_SIZE(value)
    out.bytes = <void *>PyBytes_AS_STRING(value)
    return out


cdef inline bytes amqp_py_bytes(amqp_bytes_t value):
    if value.len == 0:
        return b''
    return PyBytes_FromStringAndSize(<char *>value.bytes, <Py_ssize_t>value.len)


cdef inline str amqp_py_str(amqp_bytes_t value):
    return amqp_py_bytes(value).decode('utf-8', 'replace')


cdef inline bytes amqp_utf8(object value):
    return value.encode('utf-8') if isinstance(value, _str_type) else bytes(value)


cdef inline int amqp_put_utf8(object value, amqp_bytes_t *out, list keep) except -1:
    """Point `out` at `value` as UTF-8; `keep` holds the bytes object alive until the frame is sent."""
    cdef bytes raw = amqp_utf8(value)
    keep.append(raw)
    out[0] = amqp_b(raw)
    return 0


# --- field tables -------------------------------------------------------------------------------------------

cdef int amqp_encode_value(object value, amqp_field_value_t *out, amqp_pool_t *pool, list keep) except -1:
    cdef bytes raw
    if value is None:
        out.kind = AMQP_FIELD_KIND_VOID
    elif value is True or value is False:
        out.kind = AMQP_FIELD_KIND_BOOLEAN
        out.value.boolean = 1 if value else 0
    elif isinstance(value, int):
        out.kind = AMQP_FIELD_KIND_I64
        out.value.i64 = <int64_t>value
    elif isinstance(value, float):
        out.kind = AMQP_FIELD_KIND_F64
        out.value.f64 = <double>value
    elif isinstance(value, _str_type):
        raw = (<str>value).encode('utf-8', 'surrogateescape')
        keep.append(raw)
        out.kind = AMQP_FIELD_KIND_UTF8
        out.value.bytes = amqp_b(raw)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        keep.append(raw)
        out.kind = AMQP_FIELD_KIND_BYTES
        out.value.bytes = amqp_b(raw)
    elif isinstance(value, dict):
        out.kind = AMQP_FIELD_KIND_TABLE
        amqp_encode_table(value, &out.value.table, pool, keep)
    elif isinstance(value, (list, tuple)):
        out.kind = AMQP_FIELD_KIND_ARRAY
        amqp_encode_array(value, &out.value.array, pool, keep)
    else:
        raise TypeError(f'cannot put a {type(value).__name__} in an AMQP field table')
    return 0


cdef int amqp_encode_array(object items, amqp_array_t *out, amqp_pool_t *pool, list keep) except -1:
    cdef Py_ssize_t n = len(items), i = 0
    out.num_entries = <int>n
    out.entries = NULL
    if n == 0:
        return 0
    out.entries = <amqp_field_value_t *>amqp_pool_alloc(pool, sizeof(amqp_field_value_t) * n)
    if out.entries == NULL:
        raise MemoryError()
    for item in items:
        amqp_encode_value(item, &out.entries[i], pool, keep)
        i += 1
    return 0


cdef int amqp_encode_table(dict table, amqp_table_t *out, amqp_pool_t *pool, list keep) except -1:
    cdef Py_ssize_t n = len(table), i = 0
    out.num_entries = <int>n
    out.entries = NULL
    if n == 0:
        return 0
    out.entries = <amqp_table_entry_t *>amqp_pool_alloc(pool, sizeof(amqp_table_entry_t) * n)
    if out.entries == NULL:
        raise MemoryError()
    for name, value in table.items():
        amqp_put_utf8(name, &out.entries[i].key, keep)
        amqp_encode_value(value, &out.entries[i].value, pool, keep)
        i += 1
    return 0


cdef object amqp_decode_value(amqp_field_value_t *v):
    cdef int kind = v.kind
    if kind == AMQP_FIELD_KIND_UTF8:
        return amqp_py_str(v.value.bytes)
    if kind == AMQP_FIELD_KIND_I64:
        return v.value.i64
    if kind == AMQP_FIELD_KIND_BOOLEAN:
        return bool(v.value.boolean)
    if kind == AMQP_FIELD_KIND_VOID:
        return None
    if kind == AMQP_FIELD_KIND_TABLE:
        return amqp_decode_table(&v.value.table)
    if kind == AMQP_FIELD_KIND_ARRAY:
        return [amqp_decode_value(&v.value.array.entries[i]) for i in range(v.value.array.num_entries)]
    if kind == AMQP_FIELD_KIND_I32:
        return v.value.i32
    if kind == AMQP_FIELD_KIND_U32:
        return v.value.u32
    if kind == AMQP_FIELD_KIND_I16:
        return v.value.i16
    if kind == AMQP_FIELD_KIND_U16:
        return v.value.u16
    if kind == AMQP_FIELD_KIND_I8:
        return v.value.i8
    if kind == AMQP_FIELD_KIND_U8:
        return v.value.u8
    if kind == AMQP_FIELD_KIND_U64 or kind == AMQP_FIELD_KIND_TIMESTAMP:
        return v.value.u64
    if kind == AMQP_FIELD_KIND_F64:
        return v.value.f64
    if kind == AMQP_FIELD_KIND_F32:
        return v.value.f32
    if kind == AMQP_FIELD_KIND_DECIMAL:
        return v.value.decimal.value / (10.0 ** v.value.decimal.decimals)
    if kind == AMQP_FIELD_KIND_BYTES:
        return amqp_py_bytes(v.value.bytes)
    return None


cdef dict amqp_decode_table(amqp_table_t *table):
    cdef dict out = {}
    cdef int i
    for i in range(table.num_entries):
        out[amqp_py_str(table.entries[i].key)] = amqp_decode_value(&table.entries[i].value)
    return out


cdef dict amqp_decode_properties(amqp_basic_properties_t *p):
    cdef dict out = {}
    cdef amqp_flags_t f = p._flags
    if f & AMQP_BASIC_CONTENT_TYPE_FLAG:
        out['content_type'] = amqp_py_str(p.content_type)
    if f & AMQP_BASIC_CONTENT_ENCODING_FLAG:
        out['content_encoding'] = amqp_py_str(p.content_encoding)
    if f & AMQP_BASIC_HEADERS_FLAG:
        out['headers'] = amqp_decode_table(&p.headers)
    if f & AMQP_BASIC_DELIVERY_MODE_FLAG:
        out['delivery_mode'] = p.delivery_mode
    if f & AMQP_BASIC_PRIORITY_FLAG:
        out['priority'] = p.priority
    if f & AMQP_BASIC_CORRELATION_ID_FLAG:
        out['correlation_id'] = amqp_py_str(p.correlation_id)
    if f & AMQP_BASIC_REPLY_TO_FLAG:
        out['reply_to'] = amqp_py_str(p.reply_to)
    if f & AMQP_BASIC_EXPIRATION_FLAG:
        out['expiration'] = amqp_py_str(p.expiration)
    if f & AMQP_BASIC_MESSAGE_ID_FLAG:
        out['message_id'] = amqp_py_str(p.message_id)
    if f & AMQP_BASIC_TIMESTAMP_FLAG:
        out['timestamp'] = p.timestamp
    if f & AMQP_BASIC_TYPE_FLAG:
        out['type'] = amqp_py_str(p.type)
    if f & AMQP_BASIC_USER_ID_FLAG:
        out['user_id'] = amqp_py_str(p.user_id)
    if f & AMQP_BASIC_APP_ID_FLAG:
        out['app_id'] = amqp_py_str(p.app_id)
    return out


cdef int amqp_encode_properties(dict props, amqp_basic_properties_t *p, amqp_pool_t *pool, list keep) except -1:
    p._flags = 0
    value = props.get('content_type')
    if value is not None:
        amqp_put_utf8(value, &p.content_type, keep)
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG
    value = props.get('content_encoding')
    if value is not None:
        amqp_put_utf8(value, &p.content_encoding, keep)
        p._flags |= AMQP_BASIC_CONTENT_ENCODING_FLAG
    value = props.get('headers')
    if value:
        amqp_encode_table(value, &p.headers, pool, keep)
        p._flags |= AMQP_BASIC_HEADERS_FLAG
    value = props.get('delivery_mode')
    if value is not None:
        p.delivery_mode = <int>value
        p._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG
    value = props.get('priority')
    if value is not None:
        p.priority = <int>value
        p._flags |= AMQP_BASIC_PRIORITY_FLAG
    value = props.get('correlation_id')
    if value is not None:
        amqp_put_utf8(value, &p.correlation_id, keep)
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG
    value = props.get('reply_to')
    if value is not None:
        amqp_put_utf8(value, &p.reply_to, keep)
        p._flags |= AMQP_BASIC_REPLY_TO_FLAG
    value = props.get('expiration')
    if value is not None:
        amqp_put_utf8(value, &p.expiration, keep)
        p._flags |= AMQP_BASIC_EXPIRATION_FLAG
    value = props.get('message_id')
    if value is not None:
        amqp_put_utf8(value, &p.message_id, keep)
        p._flags |= AMQP_BASIC_MESSAGE_ID_FLAG
    value = props.get('timestamp')
    if value is not None:
        p.timestamp = <uint64_t>value
        p._flags |= AMQP_BASIC_TIMESTAMP_FLAG
    value = props.get('type')
    if value is not None:
        amqp_put_utf8(value, &p.type, keep)
        p._flags |= AMQP_BASIC_TYPE_FLAG
    value = props.get('user_id')
    if value is not None:  # RabbitMQ refuses (406) a user_id other than the connection's user
        amqp_put_utf8(value, &p.user_id, keep)
        p._flags |= AMQP_BASIC_USER_ID_FLAG
    value = props.get('app_id')
    if value is not None:
        amqp_put_utf8(value, &p.app_id, keep)
        p._flags |= AMQP_BASIC_APP_ID_FLAG
    return 0


cdef inline timeval amqp_tv(double seconds) noexcept:
    cdef timeval tv
    if seconds < 0:
        seconds = 0
    tv.tv_sec = <long>seconds
    tv.tv_usec = <long>((seconds - <double>tv.tv_sec) * 1e6)
    return tv


@cython.final
@cython.auto_pickle(False)
cdef class Connection:
    """One AMQP connection (logged in when constructed). Use it from one thread only.

    Channels are numbered by the caller and opened with `open_channel`. Synchronous methods raise
    `AMQPChannelError` when the broker closes the channel (its `channel`: that one is then closed and may be
    opened again, the others stay open) and `BrokerConnectionError` when the connection is gone (the object
    is then unusable).
    """

    cdef amqp_connection_state_t conn
    cdef amqp_socket_t *sock
    cdef ConnState state
    cdef int fd
    cdef readonly int heartbeat
    cdef readonly dict server_properties

    def __cinit__(self):
        self.conn = NULL
        self.state = CONN_CLOSED
        self.fd = -1

    def __init__(self, str host, int port, str vhost, str user, str password, int heartbeat, int frame_max,
                 double connect_timeout, double rpc_timeout, object ssl):
        cdef bytes b_host = host.encode(), b_vhost = vhost.encode(), b_user = user.encode()
        cdef bytes b_password = password.encode()
        cdef char *c_host = b_host
        cdef char *c_vhost = b_vhost
        cdef char *c_user = b_user
        cdef char *c_password = b_password
        cdef timeval ctv = amqp_tv(connect_timeout)
        cdef timeval rtv = amqp_tv(rpc_timeout)
        cdef int status
        cdef amqp_rpc_reply_t reply
        self.heartbeat = heartbeat
        self.server_properties = {}
        self.conn = amqp_new_connection()
        if self.conn == NULL:
            raise MemoryError()
        if ssl is not None:
            self.sock = amqp_ssl_socket_new(self.conn)
            if self.sock == NULL:
                raise BrokerConnectionError('cannot create a TLS socket')
            self._setup_ssl(ssl)
        else:
            self.sock = amqp_tcp_socket_new(self.conn)
            if self.sock == NULL:
                raise MemoryError()
        amqp_set_handshake_timeout(self.conn, &ctv)
        amqp_set_rpc_timeout(self.conn, &rtv)
        with nogil:
            status = amqp_socket_open_noblock(self.sock, c_host, port, &ctv)
        if status != AMQP_STATUS_OK:
            raise BrokerConnectionError(f'cannot connect to {host}:{port}: {amqp_error_string2(status).decode()}')
        with nogil:
            reply = amqp_login(self.conn, c_vhost, 0, frame_max, heartbeat, AMQP_SASL_METHOD_PLAIN, c_user,
                               c_password)
        if reply.reply_type != AMQP_RESPONSE_NORMAL:
            self._fail_login(reply)
        self.state = CONN_OPEN
        self.fd = amqp_socket_get_sockfd(self.sock)
        self.server_properties = amqp_decode_table(amqp_get_server_properties(self.conn))

    cdef _setup_ssl(self, dict ssl):
        cacert = ssl.get('ca_certs')
        if cacert:
            if amqp_ssl_socket_set_cacert(self.sock, amqp_utf8(cacert)) != AMQP_STATUS_OK:
                raise BrokerConnectionError(f'cannot load CA certificates from {cacert}')
        certfile, keyfile = ssl.get('certfile'), ssl.get('keyfile')
        if certfile and keyfile:
            if amqp_ssl_socket_set_key(self.sock, amqp_utf8(certfile), amqp_utf8(keyfile)) != AMQP_STATUS_OK:
                raise BrokerConnectionError(f'cannot load the client certificate {certfile}')
        verify = bool(ssl.get('verify_peer', True))
        amqp_ssl_socket_set_verify_peer(self.sock, verify)
        amqp_ssl_socket_set_verify_hostname(self.sock, bool(ssl.get('verify_hostname', verify)))

    cdef _fail_login(self, amqp_rpc_reply_t reply):
        self._destroy()
        if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION:
            raise BrokerConnectionError('the broker refused the login (wrong user, password or vhost?)')
        raise BrokerConnectionError(f'login failed: {amqp_error_string2(reply.library_error).decode()}')

    cdef void _destroy(self) noexcept:
        if self.conn != NULL:
            amqp_destroy_connection(self.conn)
            self.conn = NULL
        self.state = CONN_CLOSED
        self.fd = -1

    def __dealloc__(self):
        self._destroy()

    @property
    def is_open(self):
        """False once the connection failed or was closed."""
        return self.state == CONN_OPEN

    def fileno(self):
        """The socket's descriptor (-1 when closed)."""
        return self.fd

    cdef int _check_open(self) except -1:
        if self.state != CONN_OPEN:
            raise BrokerConnectionError('the AMQP connection is closed')
        return 0

    cdef int _check_status(self, int status) except -1:
        if status != AMQP_STATUS_OK:
            self._destroy()
            raise BrokerConnectionError(f'AMQP connection lost: {amqp_error_string2(status).decode()}')
        return 0

    cdef int _check_reply(self, uint16_t channel) except -1:
        """Raise for the last synchronous call's reply (answering a close from the broker first)."""
        return self._raise_for(amqp_get_rpc_reply(self.conn), channel)

    cdef int _raise_for(self, amqp_rpc_reply_t reply, uint16_t channel) except -1:
        cdef amqp_channel_close_t *close
        cdef amqp_channel_close_ok_t close_ok
        cdef amqp_connection_close_ok_t conn_close_ok
        if reply.reply_type == AMQP_RESPONSE_NORMAL:
            return 0
        if reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION:
            close = <amqp_channel_close_t *>reply.reply.decoded
            code, text = close.reply_code, amqp_py_str(close.reply_text)
            if reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD:
                amqp_send_method(self.conn, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok)
                amqp_maybe_release_buffers(self.conn)
                raise AMQPChannelError(code, text, channel)
            amqp_send_method(self.conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &conn_close_ok)
            self._destroy()
            raise BrokerConnectionError(f'the broker closed the connection: {code} {text}')
        if reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION:
            self._destroy()
            raise BrokerConnectionError(f'AMQP connection lost: {amqp_error_string2(reply.library_error).decode()}')
        self._destroy()
        raise BrokerConnectionError('AMQP connection lost (end of stream)')

    # --- channels and topology ------------------------------------------------------------------------------

    def open_channel(self, int channel):
        self._check_open()
        with nogil:
            amqp_channel_open(self.conn, <uint16_t>channel)
        self._check_reply(channel)

    def close_channel(self, int channel):
        self._check_open()
        with nogil:
            amqp_channel_close(self.conn, <uint16_t>channel, AMQP_REPLY_SUCCESS)
        self._check_reply(channel)

    def exchange_declare(self, int channel, str name, str type, bint passive, bint durable, bint auto_delete,
                         dict arguments):
        cdef bytes b_name = name.encode(), b_type = type.encode()
        cdef amqp_pool_t pool
        cdef amqp_table_t args
        cdef list keep = []
        cdef amqp_bytes_t c_b_name, c_b_type
        self._check_open()
        init_amqp_pool(&pool, POOL_PAGE)
        try:
            amqp_encode_table(arguments, &args, &pool, keep)
            c_b_name = amqp_b(b_name)
            c_b_type = amqp_b(b_type)
            with nogil:
                amqp_exchange_declare(self.conn, <uint16_t>channel, c_b_name, c_b_type, passive,
                                      durable, auto_delete, 0, args)
        finally:
            empty_amqp_pool(&pool)
        self._check_reply(channel)

    def exchange_delete(self, int channel, str name, bint if_unused=False):
        cdef bytes b_name = name.encode()
        cdef amqp_bytes_t c_b_name
        self._check_open()
        c_b_name = amqp_b(b_name)
        with nogil:
            amqp_exchange_delete(self.conn, <uint16_t>channel, c_b_name, if_unused)
        self._check_reply(channel)

    def exchange_bind(self, int channel, str destination, str source, str routing_key):
        cdef bytes b_dest = destination.encode(), b_src = source.encode(), b_key = routing_key.encode()
        cdef amqp_bytes_t c_b_dest, c_b_key, c_b_src
        self._check_open()
        c_b_dest = amqp_b(b_dest)
        c_b_src = amqp_b(b_src)
        c_b_key = amqp_b(b_key)
        with nogil:
            amqp_exchange_bind(self.conn, <uint16_t>channel, c_b_dest, c_b_src, c_b_key,
                               amqp_empty_table)
        self._check_reply(channel)

    def queue_declare(self, int channel, str name, bint passive, bint durable, bint exclusive, bint auto_delete,
                      dict arguments):
        cdef bytes b_name = name.encode()
        cdef amqp_pool_t pool
        cdef amqp_table_t args
        cdef list keep = []
        cdef amqp_queue_declare_ok_t *ok = NULL
        cdef amqp_bytes_t c_b_name
        self._check_open()
        init_amqp_pool(&pool, POOL_PAGE)
        try:
            amqp_encode_table(arguments, &args, &pool, keep)
            c_b_name = amqp_b(b_name)
            with nogil:
                ok = amqp_queue_declare(self.conn, <uint16_t>channel, c_b_name, passive, durable,
                                        exclusive, auto_delete, args)
        finally:
            empty_amqp_pool(&pool)
        self._check_reply(channel)
        return amqp_py_str(ok.queue), ok.message_count, ok.consumer_count

    def queue_bind(self, int channel, str queue, str exchange, str routing_key, dict arguments):
        cdef bytes b_queue = queue.encode(), b_exchange = exchange.encode(), b_key = routing_key.encode()
        cdef amqp_pool_t pool
        cdef amqp_table_t args
        cdef list keep = []
        cdef amqp_bytes_t c_b_exchange, c_b_key, c_b_queue
        self._check_open()
        init_amqp_pool(&pool, POOL_PAGE)
        try:
            amqp_encode_table(arguments, &args, &pool, keep)
            c_b_queue = amqp_b(b_queue)
            c_b_exchange = amqp_b(b_exchange)
            c_b_key = amqp_b(b_key)
            with nogil:
                amqp_queue_bind(self.conn, <uint16_t>channel, c_b_queue, c_b_exchange, c_b_key,
                                args)
        finally:
            empty_amqp_pool(&pool)
        self._check_reply(channel)

    def queue_purge(self, int channel, str queue):
        cdef bytes b_queue = queue.encode()
        cdef amqp_queue_purge_ok_t *ok = NULL
        cdef amqp_bytes_t c_b_queue
        self._check_open()
        c_b_queue = amqp_b(b_queue)
        with nogil:
            ok = amqp_queue_purge(self.conn, <uint16_t>channel, c_b_queue)
        self._check_reply(channel)
        return ok.message_count

    def queue_delete(self, int channel, str queue, bint if_unused=False, bint if_empty=False):
        cdef bytes b_queue = queue.encode()
        cdef amqp_queue_delete_ok_t *ok = NULL
        cdef amqp_bytes_t c_b_queue
        self._check_open()
        c_b_queue = amqp_b(b_queue)
        with nogil:
            ok = amqp_queue_delete(self.conn, <uint16_t>channel, c_b_queue, if_unused, if_empty)
        self._check_reply(channel)
        return ok.message_count

    def qos(self, int channel, int prefetch_count, bint is_global):
        self._check_open()
        with nogil:
            amqp_basic_qos(self.conn, <uint16_t>channel, 0, <uint16_t>prefetch_count, is_global)
        self._check_reply(channel)

    def confirm_select(self, int channel):
        self._check_open()
        with nogil:
            amqp_confirm_select(self.conn, <uint16_t>channel)
        self._check_reply(channel)

    def consume(self, int channel, str queue, str consumer_tag, bint no_ack, dict arguments):
        cdef bytes b_queue = queue.encode(), b_tag = consumer_tag.encode()
        cdef amqp_pool_t pool
        cdef amqp_table_t args
        cdef list keep = []
        cdef amqp_basic_consume_ok_t *ok = NULL
        cdef amqp_bytes_t c_b_queue, c_b_tag
        self._check_open()
        init_amqp_pool(&pool, POOL_PAGE)
        try:
            amqp_encode_table(arguments, &args, &pool, keep)
            c_b_queue = amqp_b(b_queue)
            c_b_tag = amqp_b(b_tag)
            with nogil:
                ok = amqp_basic_consume(self.conn, <uint16_t>channel, c_b_queue, c_b_tag, 0, no_ack, 0,
                                        args)
        finally:
            empty_amqp_pool(&pool)
        self._check_reply(channel)
        return amqp_py_str(ok.consumer_tag)

    def cancel(self, int channel, str consumer_tag):
        cdef bytes b_tag = consumer_tag.encode()
        cdef amqp_bytes_t c_b_tag
        self._check_open()
        c_b_tag = amqp_b(b_tag)
        with nogil:
            amqp_basic_cancel(self.conn, <uint16_t>channel, c_b_tag)
        self._check_reply(channel)

    # --- messages -------------------------------------------------------------------------------------------

    def publish(self, int channel, str exchange, str routing_key, bytes body, dict properties, bint mandatory):
        """Send one message (asynchronous: with confirms on, its ack arrives later through `wait`)."""
        cdef bytes b_exchange = exchange.encode(), b_key = routing_key.encode()
        cdef amqp_pool_t pool
        cdef amqp_basic_properties_t props
        cdef list keep = []
        cdef int status
        cdef amqp_bytes_t c_b_exchange, c_b_key, c_body
        self._check_open()
        init_amqp_pool(&pool, POOL_PAGE)
        try:
            amqp_encode_properties(properties, &props, &pool, keep)
            c_b_exchange = amqp_b(b_exchange)
            c_b_key = amqp_b(b_key)
            c_body = amqp_b(body)
            with nogil:
                status = amqp_basic_publish(self.conn, <uint16_t>channel, c_b_exchange, c_b_key,
                                            mandatory, 0, &props, c_body)
        finally:
            empty_amqp_pool(&pool)
        self._check_status(status)

    def ack(self, int channel, uint64_t delivery_tag, bint multiple):
        self._check_open()
        self._check_status(amqp_basic_ack(self.conn, <uint16_t>channel, delivery_tag, multiple))

    def reject(self, int channel, uint64_t delivery_tag, bint requeue):
        self._check_open()
        self._check_status(amqp_basic_reject(self.conn, <uint16_t>channel, delivery_tag, requeue))

    def nack(self, int channel, uint64_t delivery_tag, bint multiple, bint requeue):
        self._check_open()
        self._check_status(amqp_basic_nack(self.conn, <uint16_t>channel, delivery_tag, multiple, requeue))

    def get(self, int channel, str queue, bint no_ack):
        """basic.get: None when the queue is empty, else
        (delivery_tag, redelivered, exchange, routing_key, message_count, properties, body)."""
        cdef bytes b_queue = queue.encode()
        cdef amqp_rpc_reply_t reply
        cdef amqp_basic_get_ok_t *ok
        cdef amqp_message_t message
        cdef amqp_bytes_t c_b_queue
        self._check_open()
        c_b_queue = amqp_b(b_queue)
        with nogil:
            reply = amqp_basic_get(self.conn, <uint16_t>channel, c_b_queue, no_ack)
        self._check_reply(channel)
        if reply.reply.id != AMQP_BASIC_GET_OK_METHOD:
            amqp_maybe_release_buffers(self.conn)
            return None
        ok = <amqp_basic_get_ok_t *>reply.reply.decoded
        head = (ok.delivery_tag, bool(ok.redelivered), amqp_py_str(ok.exchange), amqp_py_str(ok.routing_key),
                ok.message_count)
        with nogil:
            reply = amqp_read_message(self.conn, <uint16_t>channel, &message, 0)
        if reply.reply_type != AMQP_RESPONSE_NORMAL:
            self._raise_for(reply, channel)
        try:
            return head + (amqp_decode_properties(&message.properties), amqp_py_bytes(message.body))
        finally:
            amqp_destroy_message(&message)
            amqp_maybe_release_buffers(self.conn)

    # --- the event loop ---------------------------------------------------------------------------------------

    def wait(self, double timeout, int wake_fd):
        """Wait up to `timeout` seconds for frames (or for `wake_fd` to become readable), GIL released.

        Returns a list of events, maybe empty: (DELIVER, channel, consumer_tag, delivery_tag, redelivered,
        exchange, routing_key, properties, body), (CONFIRM_ACK | CONFIRM_NACK, channel, delivery_tag, multiple),
        (CHANNEL_CLOSED, channel, reply_code, reply_text), (CANCELLED, channel, consumer_tag),
        (RETURNED, channel, reply_code, reply_text, exchange, routing_key). Heartbeats are answered here.
        Raises `BrokerConnectionError` when the connection is lost (or a heartbeat timed out).
        """
        cdef list events = []
        cdef pollfd fds[2]
        cdef int nfds = 2 if wake_fd >= 0 else 1
        cdef int millis, ready, status
        cdef timeval zero
        cdef amqp_frame_t frame
        zero.tv_sec = 0
        zero.tv_usec = 0
        self._check_open()
        millis = <int>(timeout * 1000) if timeout > 0 else 0
        # The heartbeat must be serviced at least twice per interval even when nothing arrives.
        if self.heartbeat > 0 and millis > self.heartbeat * 250:
            millis = self.heartbeat * 250
        if not amqp_frames_enqueued(self.conn) and not amqp_data_in_buffer(self.conn):
            fds[0].fd = self.fd
            fds[0].events = POLLIN
            fds[0].revents = 0
            fds[1].fd = wake_fd
            fds[1].events = POLLIN
            fds[1].revents = 0
            with nogil:
                ready = poll(fds, nfds, millis)
        while len(events) < MAX_EVENTS:
            with nogil:
                status = amqp_simple_wait_frame_noblock(self.conn, &frame, &zero)
            if status == AMQP_STATUS_TIMEOUT:
                break
            self._check_status(status)
            self._on_frame(&frame, events)
            if not amqp_frames_enqueued(self.conn) and not amqp_data_in_buffer(self.conn):
                # Whatever the kernel holds already is read in this call too (a burst of deliveries).
                fds[0].fd = self.fd
                fds[0].events = POLLIN
                fds[0].revents = 0
                with nogil:
                    ready = poll(fds, 1, 0)
                if ready <= 0:
                    break
        amqp_maybe_release_buffers(self.conn)
        return events

    cdef int _on_frame(self, amqp_frame_t *frame, list events) except -1:
        cdef amqp_method_number_t method
        cdef uint16_t channel = frame.channel
        cdef amqp_basic_ack_t *ack
        cdef amqp_basic_nack_t *nack
        cdef amqp_basic_cancel_t *cancel
        if frame.frame_type != AMQP_FRAME_METHOD:
            return 0  # a stray header/body frame (never expected outside amqp_read_message)
        method = frame.payload.method.id
        if method == AMQP_BASIC_DELIVER_METHOD:
            self._on_deliver(channel, <amqp_basic_deliver_t *>frame.payload.method.decoded, events)
        elif method == AMQP_BASIC_ACK_METHOD:
            ack = <amqp_basic_ack_t *>frame.payload.method.decoded
            events.append((CONFIRM_ACK, channel, ack.delivery_tag, bool(ack.multiple)))
        elif method == AMQP_BASIC_NACK_METHOD:
            nack = <amqp_basic_nack_t *>frame.payload.method.decoded
            events.append((CONFIRM_NACK, channel, nack.delivery_tag, bool(nack.multiple)))
        elif method == AMQP_CHANNEL_CLOSE_METHOD:
            self._on_channel_close(channel, <amqp_channel_close_t *>frame.payload.method.decoded, events)
        elif method == AMQP_CONNECTION_CLOSE_METHOD:
            self._on_connection_close(<amqp_connection_close_t *>frame.payload.method.decoded)
        elif method == AMQP_BASIC_CANCEL_METHOD:
            cancel = <amqp_basic_cancel_t *>frame.payload.method.decoded
            events.append((CANCELLED, channel, amqp_py_str(cancel.consumer_tag)))
        elif method == AMQP_BASIC_RETURN_METHOD:
            self._on_return(channel, <amqp_basic_return_t *>frame.payload.method.decoded, events)
        return 0

    cdef int _on_deliver(self, uint16_t channel, amqp_basic_deliver_t *d, list events) except -1:
        cdef amqp_message_t message
        cdef amqp_rpc_reply_t reply
        head = (DELIVER, channel, amqp_py_str(d.consumer_tag), d.delivery_tag, bool(d.redelivered),
                amqp_py_str(d.exchange), amqp_py_str(d.routing_key))
        with nogil:
            reply = amqp_read_message(self.conn, channel, &message, 0)
        if reply.reply_type != AMQP_RESPONSE_NORMAL:
            self._raise_for(reply, channel)
        try:
            events.append(head + (amqp_decode_properties(&message.properties), amqp_py_bytes(message.body)))
        finally:
            amqp_destroy_message(&message)
        return 0

    cdef int _on_return(self, uint16_t channel, amqp_basic_return_t *r, list events) except -1:
        cdef amqp_message_t message
        cdef amqp_rpc_reply_t reply
        events.append((RETURNED, channel, r.reply_code, amqp_py_str(r.reply_text), amqp_py_str(r.exchange),
                       amqp_py_str(r.routing_key)))
        with nogil:
            reply = amqp_read_message(self.conn, channel, &message, 0)
        if reply.reply_type != AMQP_RESPONSE_NORMAL:
            self._raise_for(reply, channel)
        amqp_destroy_message(&message)
        return 0

    cdef int _on_channel_close(self, uint16_t channel, amqp_channel_close_t *close, list events) except -1:
        cdef amqp_channel_close_ok_t ok
        events.append((CHANNEL_CLOSED, channel, close.reply_code, amqp_py_str(close.reply_text)))
        self._check_status(amqp_send_method(self.conn, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok))
        return 0

    cdef int _on_connection_close(self, amqp_connection_close_t *close) except -1:
        cdef amqp_connection_close_ok_t ok
        text = f'the broker closed the connection: {close.reply_code} {amqp_py_str(close.reply_text)}'
        amqp_send_method(self.conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok)
        self._destroy()
        raise BrokerConnectionError(text)

    def close(self):
        """Close politely (channel and connection close handshakes), then free everything; idempotent."""
        if self.state == CONN_OPEN:
            with nogil:
                amqp_connection_close(self.conn, AMQP_REPLY_SUCCESS)
        self._destroy()
