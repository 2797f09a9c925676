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
