# cython: language_level=3, embedsignature=True
"""fastq's pool IPC: moves framed bytes between the worker parent and its children.

The frame layout lives in fastq._core (Rust) only; this module moves bytes. The parent drives many channels
from one selector loop, so nothing here may block it: writes are non-blocking and what the socket does not
take stays queued until `flush`. Children block in `wait` / `flush_blocking`, which release the GIL in short
steps and run signal handlers between them, so Ctrl-C reaches a child that is waiting for work.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.errno cimport EAGAIN, EBADF, ECONNRESET, EINTR, EPIPE, errno
from libc.math cimport INFINITY, ceil
from posix.fcntl cimport F_GETFD, F_GETFL, F_SETFD, F_SETFL, FD_CLOEXEC, O_NONBLOCK, fcntl
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close as close_fd, read

from ipc_c cimport (
    MSG_NOSIGNAL, POLLIN, POLLNVAL, POLLOUT, SO_TYPE, SOCK_STREAM, SOL_SOCKET,
    getsockopt, poll, pollfd, socklen_t, send as sock_send,
)

from os import strerror

from fastq._core import FrameDecoder, encode_frame, encode_frames

WAIT_TIMEOUT = 0
WAIT_READY = 1

# 64 KiB per read(); at most this many bytes per recv() call, so that one chatty child cannot hold the
# parent's loop while the others wait (the selector reports the rest on its next turn).
cdef Py_ssize_t READ_CHUNK = 64 * 1024
cdef Py_ssize_t READ_BUDGET = 4 * 1024 * 1024
# Longest stretch spent in poll() with the GIL released before signal handlers get a chance to run.
cdef int STEP_MS = 50


cdef enum ChanState:
    CHAN_OPEN      # both directions usable
    CHAN_EOF       # the peer sent end of file: nothing more to read, but writing may still work
    CHAN_CLOSED    # our descriptor is closed (or was never set up)


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef double _deadline(object timeout):
    """Absolute monotonic deadline, so that a wait made of several polls still ends on time."""
    if timeout is None:
        return INFINITY
    cdef double seconds = timeout
    if seconds != seconds:
        raise ValueError('timeout must not be NaN')
    return _now() + (seconds if seconds > 0 else 0)


cdef int _raise_errno(int err) except -1:
    # ECONNRESET means the same to a caller as EPIPE (the child is gone), so both give BrokenPipeError.
    if err == EPIPE or err == ECONNRESET:
        raise BrokenPipeError(err, strerror(err))
    raise OSError(err, strerror(err))


@cython.final
@cython.auto_pickle(False)
cdef class Channel:
    """One end of a connected stream socket carrying `(job_id, kind, payload)` frames.

    Not thread-safe: one thread uses a channel at a time (another may `close` it to end a `wait`). Only
    poll() runs with the GIL released: the non-blocking read() and send() calls return in microseconds, and
    dropping the GIL around them would let any busy thread keep it for a whole switch interval (5 ms) on
    every call of the parent's loop.
    """

    cdef int _fd
    cdef ChanState _state
    cdef bint _broken        # the peer stopped reading: queued output was dropped, every write fails
    cdef bytearray _out      # encoded frames the socket has not taken yet
    cdef object _decoder     # fastq._core.FrameDecoder
    cdef char *_rbuf         # READ_CHUNK bytes; reused by every read()

    def __cinit__(self):
        self._fd = -1
        self._state = CHAN_CLOSED
        self._out = bytearray()
        self._rbuf = <char *>PyMem_Malloc(READ_CHUNK)
        if self._rbuf == NULL:
            raise MemoryError()

    def __init__(self, int fd):
        """Take ownership of `fd` (a connected SOCK_STREAM socket) and make it non-blocking and close-on-exec."""
        if self._state != CHAN_CLOSED:
            raise RuntimeError('Channel is already initialised')
        # Writes use send(MSG_NOSIGNAL), which needs a socket, and partial writes resume mid-frame, which only
        # a byte stream allows. On failure the caller still owns `fd`.
        cdef int sotype = 0
        cdef socklen_t optlen = sizeof(sotype)
        if getsockopt(fd, SOL_SOCKET, SO_TYPE, &sotype, &optlen) < 0:
            _raise_errno(errno)
        if sotype != SOCK_STREAM:
            raise ValueError(f'fd {fd} is not a SOCK_STREAM socket')
        cdef int fd_flags = fcntl(fd, F_GETFD)
        if fd_flags < 0 or fcntl(fd, F_SETFD, fd_flags | FD_CLOEXEC) < 0:
            _raise_errno(errno)
        cdef int fl_flags = fcntl(fd, F_GETFL)
        if fl_flags < 0 or fcntl(fd, F_SETFL, fl_flags | O_NONBLOCK) < 0:
            _raise_errno(errno)
        self._decoder = FrameDecoder()
        self._broken = False
        self._fd = fd
        self._state = CHAN_OPEN

    def __dealloc__(self):
        if self._fd >= 0:
            close_fd(self._fd)
        PyMem_Free(self._rbuf)

    def fileno(self):
        self._check_open()
        return self._fd

    @property
    def closed(self):
        return self._state == CHAN_CLOSED

    @property
    def pending_output(self):
        """Bytes accepted by `send` but not yet written to the socket."""
        return len(self._out)

    def send(self, job_id, kind, payload):
        """Queue one frame and write as much as the socket takes now, without blocking.

        Raises:
            BrokenPipeError: the peer has closed its end.
        """
        self._check_writable()
        self._queue(encode_frame(job_id, kind, payload))

    def send_many(self, frames):
        """Queue several frames with one write: one syscall and one encoding pass for a whole batch."""
        self._check_writable()
        self._queue(encode_frames(frames))

    def flush(self):
        """Write queued output without blocking; True when nothing is left queued."""
        self._check_writable()
        return self._flush_out()

    def flush_blocking(self, timeout=None):
        """Write all queued output, waiting (GIL released, signals checked) for the peer to read.

        Raises:
            TimeoutError: the timeout passed with output still queued.
            BrokenPipeError: the peer has closed its end.
        """
        self._check_writable()
        cdef double deadline = _deadline(timeout)
        while not self._flush_out():
            if not self._poll(POLLOUT, deadline):
                raise TimeoutError(f'{len(self._out)} bytes still queued after {timeout} s')

    def recv(self):
        """Read everything available now, without blocking, and return the complete frames (maybe none).

        Frames that arrived before end of file are returned first; EOFError comes on the call after.

        Raises:
            EOFError: the peer closed its end and no complete frame is left.
            ValueError: the stream is corrupt (a frame announces an impossible length).
        """
        self._check_open()
        cdef list frames = []
        cdef Py_ssize_t total = 0
        cdef ssize_t n
        cdef int err
        while self._state == CHAN_OPEN and total < READ_BUDGET:
            n = read(self._fd, self._rbuf, READ_CHUNK)
            if n > 0:
                total += n
                frames += self._decoder.feed(PyBytes_FromStringAndSize(self._rbuf, n))
                if n < READ_CHUNK:
                    break  # drained: skip the read() that would only say EAGAIN
            elif n == 0:
                self._state = CHAN_EOF
            else:
                err = errno
                if err == EAGAIN:  # == EWOULDBLOCK wherever fastq runs (Linux, macOS)
                    break
                if err == ECONNRESET:
                    # A Unix socket reports ECONNRESET instead of EOF when the peer closed with our data
                    # still unread in its buffer; what it sent before that has already been read.
                    self._state = CHAN_EOF
                elif err != EINTR:
                    _raise_errno(err)
        if not frames and self._state == CHAN_EOF:
            left = self._decoder.buffered
            if left:
                raise EOFError(f'peer closed the channel in the middle of a frame ({left} bytes received)')
            raise EOFError('peer closed the channel')
        return frames

    def wait(self, timeout):
        """Block until readable or `timeout` seconds pass (None: forever), with the GIL released in steps of
        at most 50 ms and signals checked between steps (a KeyboardInterrupt raised by a handler propagates).
        Returns WAIT_READY or WAIT_TIMEOUT."""
        self._check_open()
        if self._state == CHAN_EOF or self._poll(POLLIN, _deadline(timeout)):
            return WAIT_READY
        return WAIT_TIMEOUT

    def close(self):
        """Close the socket (idempotent); queued output is dropped."""
        if self._state == CHAN_CLOSED:
            return
        cdef int fd = self._fd
        self._fd = -1
        self._state = CHAN_CLOSED
        del self._out[:]
        # Linux frees the descriptor even when close() fails with EINTR, so it is never retried.
        if close_fd(fd) < 0 and errno != EINTR:
            _raise_errno(errno)

    cdef int _check_open(self) except -1:
        if self._state == CHAN_CLOSED:
            raise ValueError('I/O operation on closed channel')
        return 0

    cdef int _check_writable(self) except -1:
        self._check_open()
        if self._broken:
            raise BrokenPipeError(EPIPE, 'peer closed the channel')
        return 0

    cdef int _queue(self, bytes data) except -1:
        cdef Py_ssize_t size = len(data)
        cdef Py_ssize_t done
        if self._out:
            self._out += data
            self._flush_out()
        elif size:
            # Nothing queued (the usual case): write straight from `data` and copy only what is left.
            done = self._write(PyBytes_AS_STRING(data), size)
            if done < size:
                self._out += memoryview(data)[done:]
        return 0

    cdef bint _flush_out(self) except -1:
        cdef Py_ssize_t done
        if self._out:
            done = self._write(PyByteArray_AS_STRING(self._out), len(self._out))
            if done:
                del self._out[:done]  # O(1) in CPython: a bytearray drops its head by moving its start
        return not self._out

    cdef Py_ssize_t _write(self, const char *buf, Py_ssize_t size) except -1:
        """Send what the socket takes now. `buf` must stay valid: the GIL is held, so nothing can resize it."""
        cdef Py_ssize_t done = 0
        cdef ssize_t n
        cdef int err
        while done < size:
            n = sock_send(self._fd, buf + done, size - done, MSG_NOSIGNAL)
            if n >= 0:
                done += n
                continue
            err = errno
            if err == EAGAIN:  # == EWOULDBLOCK wherever fastq runs (Linux, macOS)
                break
            if err != EINTR:
                if err == EPIPE or err == ECONNRESET:
                    self._broken = True
                    del self._out[:]  # nobody will read it
                _raise_errno(err)
        return done

    cdef bint _poll(self, short events, double deadline) except -1:
        """Whether `events` (or an error or hang-up) arrived before `deadline`.

        poll() runs without the GIL for at most STEP_MS at a time; between steps the pending signal handlers
        run here (Python only runs them in the main thread, between bytecodes), and an exception they raise,
        e.g. KeyboardInterrupt, ends the wait.
        """
        cdef pollfd pfd
        cdef int step, rc, err
        cdef double left_ms
        pfd.fd = self._fd
        pfd.events = events
        while True:
            if deadline == INFINITY:
                step = STEP_MS
            else:
                left_ms = (deadline - _now()) * 1000.0
                step = 0 if left_ms <= 0 else <int>ceil(min(left_ms, <double>STEP_MS))
            pfd.revents = 0
            with nogil:
                rc = poll(&pfd, 1, step)
                err = errno
            PyErr_CheckSignals()
            self._check_open()  # another thread may have closed the channel to stop this wait
            if rc > 0:
                if pfd.revents & POLLNVAL:
                    raise OSError(EBADF, strerror(EBADF))
                return True
            if rc < 0 and err != EINTR:
                _raise_errno(err)
            if deadline != INFINITY and _now() >= deadline:
                return False
