/* The client's hot path: each function does in one C call what took
 * several from Python.  Every cffi call drops and takes back the GIL and
 * converts its arguments; at thousands of connections a second those
 * costs add up to more than the TLS work of a resumed handshake. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#define TLSRESUME_STEP_SSL_NEW 1
#define TLSRESUME_STEP_SET_FD 2
#define TLSRESUME_STEP_SNI 3
#define TLSRESUME_STEP_HOST 4
#define TLSRESUME_STEP_IP 5
#define TLSRESUME_STEP_SESSION 6
#define TLSRESUME_STEP_CONNECT 7

/* A connect() interrupted by a signal goes on in the background: wait
 * for it as the blocking call would have.  Returns 0 once connected, or
 * -1 with errno set (EINPROGRESS when `timeout` runs out). */
static int wait_connected(int fd, double timeout)
{
    struct pollfd pfd;
    socklen_t size = sizeof(int);
    int ms = timeout > 0 ? (int)(timeout * 1000) + 1 : -1, ready, error = 0;

    pfd.fd = fd;
    pfd.events = POLLOUT;
    do {
        ready = poll(&pfd, 1, ms);
    } while (ready < 0 && errno == EINTR);
    if (ready < 0) {
        return -1;
    }
    if (ready == 0) {
        errno = EINPROGRESS;
        return -1;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) != 0) {
        return -1;
    }
    if (error != 0) {
        errno = error;
        return -1;
    }
    return 0;
}

/* A blocking TCP connection to a numeric address, with TCP_NODELAY and
 * kernel timeouts (on Linux SO_SNDTIMEO also bounds connect(), which then
 * fails with EINPROGRESS).  Returns the descriptor, or -1 with errno set
 * and nothing left open. */
int tlsresume_tcp_connect(int family, const char *address, int port,
                          double timeout)
{
    struct sockaddr_storage addr;
    socklen_t len;
    int fd, one = 1, saved;

    memset(&addr, 0, sizeof(addr));
    if (family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&addr;

        in4->sin_family = AF_INET;
        in4->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, address, &in4->sin_addr) != 1) {
            errno = EINVAL;
            return -1;
        }
        len = sizeof(*in4);
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&addr;

        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)port);
        if (inet_pton(AF_INET6, address, &in6->sin6_addr) != 1) {
            errno = EINVAL;
            return -1;
        }
        len = sizeof(*in6);
    } else {
        errno = EAFNOSUPPORT;
        return -1;
    }

    fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0
        || tlsresume_set_timeouts(fd, timeout) != 0) {
        goto fail;
    }
    if (connect(fd, (struct sockaddr *)&addr, len) != 0) {
        if (errno != EINTR || wait_connected(fd, timeout) != 0) {
            goto fail;
        }
    }
    return fd;

fail:
    saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

/* Everything before the handshake; returns the step that failed, or
 * TLSRESUME_STEP_CONNECT when all went well. */
static int prepare(SSL *ssl, int fd, const char *sni, const char *host,
                   const char *ip, SSL_SESSION *session, int ex_index,
                   void *data)
{
    if (!SSL_set_fd(ssl, fd)) {
        return TLSRESUME_STEP_SET_FD;
    }
    SSL_set_ex_data(ssl, ex_index, data);
    if (sni != NULL && !SSL_set_tlsext_host_name(ssl, sni)) {
        return TLSRESUME_STEP_SNI;
    }
    if (host != NULL && !SSL_set1_host(ssl, host)) {
        return TLSRESUME_STEP_HOST;
    }
    if (ip != NULL
        && !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip)) {
        return TLSRESUME_STEP_IP;
    }
    if (session != NULL && !SSL_set_session(ssl, session)) {
        return TLSRESUME_STEP_SESSION;
    }
    return TLSRESUME_STEP_CONNECT;
}

/* The SSL for one client connection on `fd`, and its handshake.
 *
 * Sets ex_data slot `ex_index` to `data` (before the handshake, so
 * callbacks find their connection), SNI (`sni`, none if NULL), the host
 * name (`host`) or address (`ip`) to verify (neither if both NULL) and
 * the session to offer (may be NULL; the SSL takes its own reference,
 * and when `session_owned` is 1 the caller's reference is dropped here
 * too, whatever happens); then runs SSL_connect.
 *
 * Returns the new SSL, which the caller frees, or NULL if SSL_new
 * failed.  info[0] names the step reached: TLSRESUME_STEP_CONNECT, or
 * the step that failed (its reasons in the error queue); info[3] is
 * SSL_connect's result (0 when it did not run), with errno as
 * SSL_connect left it (for SSL_get_error); after a handshake that
 * succeeded, info[1] is SSL_session_reused and info[2] SSL_version. */
SSL *tlsresume_client_handshake(SSL_CTX *ctx, int fd, const char *sni,
                                const char *host, const char *ip,
                                SSL_SESSION *session, int session_owned,
                                int ex_index, void *data, int *info)
{
    SSL *ssl;
    int step;

    info[1] = info[2] = info[3] = 0;
    ssl = SSL_new(ctx);
    step = ssl == NULL ? TLSRESUME_STEP_SSL_NEW
                       : prepare(ssl, fd, sni, host, ip, session, ex_index,
                                 data);
    if (session != NULL && session_owned) {
        SSL_SESSION_free(session);
    }
    info[0] = step;
    if (step != TLSRESUME_STEP_CONNECT) {
        return ssl;
    }
    info[3] = SSL_connect(ssl);
    if (info[3] == 1) {
        info[1] = SSL_session_reused(ssl);
        info[2] = SSL_version(ssl);
    }
    return ssl;
}

/* The end of a client connection, short of SSL_free: close_notify, then,
 * if `wait_for_tickets` and the connection is TLS 1.3 and the peer has
 * not closed yet, wait up to `wait` seconds for the peer's close_notify
 * so tickets still in flight reach the new-session callback.  Clears the
 * connection's ex_data slot, empties the error queue (a failing close is
 * not reported) and, when `close_fd` is 1, closes `fd`.  Returns the
 * last SSL_shutdown result. */
int tlsresume_client_close(SSL *ssl, int fd, int close_fd, int ex_index,
                           int wait_for_tickets, double wait)
{
    int state = SSL_shutdown(ssl);

    if (state == 0 && wait_for_tickets
        && SSL_version(ssl) >= TLS1_3_VERSION) {
        tlsresume_set_timeouts(fd, wait);
        state = SSL_shutdown(ssl);
    }
    SSL_set_ex_data(ssl, ex_index, NULL);
    ERR_clear_error();
    if (close_fd) {
        close(fd);
    }
    return state;
}
