# C declarations for fastq._ipc that Cython's bundled posix/libc .pxd files lack.

cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t

    cdef struct pollfd:
        int fd
        short events
        short revents

    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLNVAL

    int poll(pollfd *fds, nfds_t nfds, int timeout)


cdef extern from *:
    """
    #include <sys/socket.h>
    /* Platforms without MSG_NOSIGNAL rely on Python ignoring SIGPIPE (it does at startup). */
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    """
    ctypedef unsigned int socklen_t

    enum:
        SOL_SOCKET
        SO_TYPE
        SOCK_STREAM
        MSG_NOSIGNAL

    ssize_t send(int sockfd, const void *buf, size_t len, int flags) nogil
    int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen) nogil
