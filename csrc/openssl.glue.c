/* C side of tlsresume._openssl: the headers and a little glue. */
#include <openssl/opensslv.h>

#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "tlsresume needs OpenSSL 1.1.1 or newer"
#endif

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/time.h>

/* Fallbacks for 1.1.1, where these names do not exist. */
#ifndef SSL_OP_IGNORE_UNEXPECTED_EOF
#define SSL_OP_IGNORE_UNEXPECTED_EOF 0
#endif
#ifndef SSL_R_UNEXPECTED_EOF_WHILE_READING
#define SSL_R_UNEXPECTED_EOF_WHILE_READING -1
#endif
#ifndef OPENSSL_ENGINES_DIR
#define OPENSSL_ENGINES_DIR 5
#endif

/* Stamped by csrc/build.py and checked on import. */
const char TLSRESUME_BUILD_VERSION[] = TLSRESUME_VERSION_STRING;

/* Put a receive and a send timeout on a blocking socket, so that a
 * blocking SSL_connect, SSL_read or SSL_write gives up after `seconds`
 * instead of hanging on a silent peer.  0 means no timeout.  Returns 0,
 * or -1 with errno set. */
int tlsresume_set_timeouts(int fd, double seconds)
{
    struct timeval tv;

    if (seconds < 0) {
        seconds = 0;
    }
    tv.tv_sec = (time_t)seconds;
    tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
    if (seconds > 0 && tv.tv_sec == 0 && tv.tv_usec == 0) {
        tv.tv_usec = 1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0) {
        return -1;
    }
    return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* The session cache's look at a session, in one call instead of four.
 *
 * A session's lifetime is the earliest of its timeout, its ticket
 * lifetime hint (when the server sent one) and, for TLS 1.3, 7 days
 * (RFC 8446, 4.6.1), counted from the session's time.  Returns it in
 * seconds: positive for TLS 1.2 and below, negated for TLS 1.3, and 0
 * when the session cannot be resumed.  These facts do not change once
 * OpenSSL hands the session out, so the cache reads them once. */
double tlsresume_session_lifetime(const SSL_SESSION *s)
{
    double lifetime;
    unsigned long hint;
    int tls13;

    if (s == NULL || !SSL_SESSION_is_resumable(s)) {
        return 0;
    }
    tls13 = SSL_SESSION_get_protocol_version(s) == TLS1_3_VERSION;
    lifetime = (double)SSL_SESSION_get_timeout(s);
    hint = SSL_SESSION_get_ticket_lifetime_hint(s);
    if (hint > 0 && (double)hint < lifetime) {
        lifetime = (double)hint;
    }
    if (tls13 && lifetime > 7 * 24 * 3600.0) {
        lifetime = 7 * 24 * 3600.0;
    }
    if (!(lifetime > 0)) {
        return 0;
    }
    return tls13 ? -lifetime : lifetime;
}
