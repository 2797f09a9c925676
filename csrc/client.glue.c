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

#define TLSRESUME_STEP_TCP 1
#define TLSRESUME_STEP_SSL_NEW 2
#define TLSRESUME_STEP_SET_FD 3
#define TLSRESUME_STEP_SNI 4
#define TLSRESUME_STEP_HOST 5
#define TLSRESUME_STEP_IP 6
#define TLSRESUME_STEP_SESSION 7
#define TLSRESUME_STEP_CONNECT 8

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
 * TLSRESUME_STEP_CONNECT when all went well.  With `own_fd` the SSL
 * takes the descriptor over, and SSL_free closes it; *attached says
 * whether that happened. */
static int prepare(SSL *ssl, int fd, int own_fd, int *attached,
                   const char *sni, const char *host, const char *ip,
                   SSL_SESSION *session, int ex_index, void *data)
{
    if (own_fd) {
        BIO *bio = BIO_new_socket(fd, BIO_CLOSE);

        if (bio == NULL) {
            return TLSRESUME_STEP_SET_FD;
        }
        SSL_set_bio(ssl, bio, bio);
        *attached = 1;
    } else if (!SSL_set_fd(ssl, fd)) {
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

/* A client connection and its handshake, in one call.
 *
 * The TCP connection: `fd` if it is not negative (the caller keeps
 * owning it); else a new one to `address` (numeric, of `family`) and
 * `port`, with `timeout` as in tlsresume_tcp_connect, which the SSL
 * owns from then on: SSL_free closes it.
 *
 * Then SSL_new, and on the SSL: ex_data slot `ex_index` set to `data`
 * (before the handshake, so callbacks find their connection), SNI
 * (`sni`, none if NULL), the host name (`host`) or address (`ip`) to
 * verify (neither if both NULL) and the session to offer (may be NULL;
 * the SSL takes its own reference, and when `session_owned` is 1 the
 * caller's reference is dropped here too, whatever happens); then
 * SSL_connect.
 *
 * Returns the new SSL, which the caller frees, or NULL if the TCP
 * connection or SSL_new failed.  info[0] names the step reached:
 * TLSRESUME_STEP_CONNECT, or the step that failed (with errno set for
 * TLSRESUME_STEP_TCP, its reasons in the error queue for the others);
 * info[3] is SSL_connect's result (0 when it did not run), with errno as
 * SSL_connect left it (for SSL_get_error); after a handshake that
 * succeeded, info[1] is SSL_session_reused and info[2] SSL_version.
 * info[4] is the descriptor the SSL uses, or -1 if there is none (a
 * descriptor made here that no SSL took is closed here). */
SSL *tlsresume_client_handshake(SSL_CTX *ctx, int fd, int family,
                                const char *address, int port,
                                double timeout, const char *sni,
                                const char *host, const char *ip,
                                SSL_SESSION *session, int session_owned,
                                int ex_index, void *data, int *info)
{
    SSL *ssl = NULL;
    int step, own_fd = fd < 0, attached = 0, saved;

    info[1] = info[2] = info[3] = 0;
    info[4] = -1;
    if (own_fd) {
        fd = tlsresume_tcp_connect(family, address, port, timeout);
    }
    if (fd < 0) {
        step = TLSRESUME_STEP_TCP;
    } else {
        ssl = SSL_new(ctx);
        step = ssl == NULL ? TLSRESUME_STEP_SSL_NEW
                           : prepare(ssl, fd, own_fd, &attached, sni,
                                     host, ip, session, ex_index, data);
    }
    saved = errno;
    if (session != NULL && session_owned) {
        SSL_SESSION_free(session);
    }
    if (fd >= 0) {
        if (own_fd && !attached) {
            close(fd);
        } else {
            info[4] = fd;
        }
    }
    errno = saved;
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

/* The end of a client connection: close_notify, then, if
 * `wait_for_tickets` and the connection is TLS 1.3 and the peer has not
 * closed yet, wait up to `wait` seconds for the peer's close_notify so
 * tickets still in flight reach the new-session callback.  Clears the
 * connection's ex_data slot and frees the SSL (which closes a descriptor
 * it owns), and empties the error queue: a failing close is not
 * reported.  Returns the last SSL_shutdown result. */
int tlsresume_client_close(SSL *ssl, int ex_index, int wait_for_tickets,
                           double wait)
{
    int state = SSL_shutdown(ssl);

    if (state == 0 && wait_for_tickets
        && SSL_version(ssl) >= TLS1_3_VERSION) {
        tlsresume_set_timeouts(SSL_get_fd(ssl), wait);
        state = SSL_shutdown(ssl);
    }
    SSL_set_ex_data(ssl, ex_index, NULL);
    SSL_free(ssl);
    ERR_clear_error();
    return state;
}
