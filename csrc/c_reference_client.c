/* c_reference_client: the classic C resumption example, as a benchmark.
 *
 * The classic program connects to a server, offers the session saved
 * from the last connection with SSL_set_session, runs SSL_connect, checks
 * SSL_session_reused and saves SSL_get1_session.  Under TLS 1.3 that last
 * step saves a session without a ticket (the server sends its tickets
 * after the handshake), so nothing resumes.  This version has the usual
 * fix: sessions are saved from a new-session callback
 * (SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE), which sees
 * every ticket as it is processed.
 *
 * Per connection, exactly: TCP connect (TCP_NODELAY, and send and
 * receive timeouts of --timeout seconds, 10 by default, as tlsresume's
 * ClientContext sets them, so a server that never answers is an error
 * rather than a hang), SSL_set_session
 * with the saved session (resumed mode), SSL_connect, SSL_write of a
 * small request, one SSL_read of the first bytes of the answer (so TLS
 * 1.3 tickets are processed), SSL_shutdown once (close_notify), close.
 *
 * --read-ahead 1 turns on SSL_CTX_set_read_ahead, which the classic
 * example leaves off: libssl then reads whatever the socket holds in one
 * read() instead of a record header and a body at a time.  tlsresume's
 * ClientContext turns it on, so the bench runs this client both ways.
 *
 * Threads share one SSL_CTX; each keeps its own saved session.  Each
 * thread first makes one untimed connection (so every timed connection
 * in resumed mode has a session to offer), then all start together.
 *
 * Result, one line of JSON on stdout:
 *   {"connections": N, "seconds": S, "reused": R, "threads": T,
 *    "cpu_seconds": C, "server_cpu_seconds": SC,
 *    "openssl": "OpenSSL 3.0..."}
 * where C is the CPU time (user and system, all threads) this process
 * used from the moment the threads started together to the end, and SC
 * what the process --server-pid names used meanwhile (read from Linux's
 * /proc; null without --server-pid or where it cannot be read).
 * Any failure prints a message on stderr and exits with status 1.
 *
 * tlsresume's bench compiles it with: cc -O2 -pthread FILE -lssl -lcrypto
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static const char REQUEST[] = "GET / HTTP/1.0\r\n\r\n";
#define READ_SIZE 16

struct options {
    const char *host;
    int port;
    const char *servername;
    const char *tls;
    const char *cafile;
    int resumed;
    long connections;   /* per thread; 0 means run for `duration` */
    double duration;
    int threads;
    int read_ahead;
    long server_pid;    /* 0: none */
    struct timeval timeout_tv;  /* for each send and each receive */
};

struct worker {
    const struct options *opt;
    SSL_CTX *ctx;
    pthread_barrier_t *start;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    SSL_SESSION *saved;       /* this thread's saved session, or NULL */
    long connections;
    long reused;
    double began, ended;
    int failed;
};

static int worker_index = -1;   /* SSL ex_data slot: SSL -> worker */
static double cpu_began;        /* process CPU time at the start */
static double server_began;     /* the server's, or -1 */

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_time(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds process `pid` has used, all its threads (those ended
 * too), from Linux's /proc; -1 if it cannot be read. */
static double process_cpu(long pid)
{
    char path[64], text[1024], *end;
    unsigned long utime, stime;
    size_t n;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    /* utime and stime are fields 14 and 15, counted after the command
     * name (which may hold spaces) and its closing parenthesis. */
    end = strrchr(text, ')');
    if (end == NULL
        || sscanf(end + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u"
                  " %lu %lu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static void fail(const char *what)
{
    fprintf(stderr, "c_reference_client: %s\n", what);
    ERR_print_errors_fp(stderr);
}

/* The TLS 1.3 fix: keep the newest session the library hands us. */
static int new_session(SSL *ssl, SSL_SESSION *session)
{
    struct worker *w = SSL_get_ex_data(ssl, worker_index);

    if (w == NULL || !w->opt->resumed || !SSL_SESSION_is_resumable(session))
        return 0;   /* 0: OpenSSL keeps (and frees) its reference */
    if (w->saved != NULL)
        SSL_SESSION_free(w->saved);
    w->saved = session;
    return 1;       /* 1: the reference is ours now */
}

/* One connection; returns 0, or -1 after printing why. */
static int one_connection(struct worker *w)
{
    const struct options *opt = w->opt;
    char buf[READ_SIZE];
    int fd, one = 1, ret = -1;
    SSL *ssl = NULL;

    fd = socket(w->addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("c_reference_client: socket");
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Linux applies the send timeout to connect() too. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &opt->timeout_tv,
               sizeof(opt->timeout_tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &opt->timeout_tv,
               sizeof(opt->timeout_tv));
    if (connect(fd, (struct sockaddr *)&w->addr, w->addrlen) != 0) {
        perror("c_reference_client: connect");
        goto done;
    }

    ssl = SSL_new(w->ctx);
    if (ssl == NULL) {
        fail("SSL_new failed");
        goto done;
    }
    SSL_set_fd(ssl, fd);
    SSL_set_ex_data(ssl, worker_index, w);
    SSL_set_tlsext_host_name(ssl, opt->servername);
    if (opt->cafile != NULL && !SSL_set1_host(ssl, opt->servername)) {
        fail("SSL_set1_host failed");
        goto done;
    }
    if (opt->resumed && w->saved != NULL)
        SSL_set_session(ssl, w->saved);

    if (SSL_connect(ssl) != 1) {
        fail("SSL_connect failed");
        goto done;
    }
    if (SSL_session_reused(ssl))
        w->reused++;
    if (SSL_write(ssl, REQUEST, (int)strlen(REQUEST)) <= 0) {
        fail("SSL_write failed");
        goto done;
    }
    if (SSL_read(ssl, buf, sizeof(buf)) <= 0) {
        fail("SSL_read failed: no answer");
        goto done;
    }
    SSL_shutdown(ssl);
    ret = 0;

done:
    if (ssl != NULL)
        SSL_free(ssl);
    close(fd);
    ERR_clear_error();
    return ret;
}

static void *run_worker(void *arg)
{
    struct worker *w = arg;
    const struct options *opt = w->opt;
    double deadline;
    long n = 0;

    /* Untimed first connection: gives resumed mode its first session. */
    if (one_connection(w) != 0)
        w->failed = 1;
    w->reused = 0;
    /* One thread, the last to arrive, notes the CPU times so far. */
    if (pthread_barrier_wait(w->start) == PTHREAD_BARRIER_SERIAL_THREAD) {
        cpu_began = cpu_time();
        server_began = opt->server_pid ? process_cpu(opt->server_pid) : -1;
    }
    if (w->failed)
        return NULL;

    w->began = now();
    deadline = w->began + opt->duration;
    for (;;) {
        if (opt->connections > 0 ? n >= opt->connections
                                 : now() >= deadline)
            break;
        if (one_connection(w) != 0) {
            w->failed = 1;
            break;
        }
        n++;
    }
    w->ended = now();
    w->connections = n;
    return NULL;
}

static int resolve(const struct options *opt, struct sockaddr_storage *ss,
                   socklen_t *len)
{
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, opt->host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((unsigned short)opt->port);
        *len = sizeof(*in4);
        return 0;
    }
    if (inet_pton(AF_INET6, opt->host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)opt->port);
        *len = sizeof(*in6);
        return 0;
    }
    return -1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: c_reference_client --host IP --port N [--servername "
            "NAME]\n"
            "       [--tls 1.2|1.3] [--cafile FILE] [--mode full|resumed]\n"
            "       [--connections N | --duration SECONDS] [--threads N]\n"
            "       [--read-ahead 0|1] [--server-pid PID] [--timeout "
            "SECONDS]\n"
            "--host takes a numeric address; without --cafile the server "
            "is not verified.\n");
    exit(2);
}

/* The whole of `text` as a decimal number in [low, high], or usage(). */
static long whole_number(const char *text, long low, long high)
{
    char *end;
    long value;

    if (!(text[0] >= '0' && text[0] <= '9') && text[0] != '-')
        usage();    /* strtol would skip leading blanks, and take '+' */
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < low
        || value > high)
        usage();
    return value;
}

/* A positive, finite number of seconds (at most a day), or usage(). */
static double seconds(const char *text)
{
    char *end;
    double value;

    if (!(text[0] >= '0' && text[0] <= '9') && text[0] != '.')
        usage();    /* no blanks, signs, "inf" or "nan" */
    errno = 0;
    value = strtod(text, &end);
    /* NaN fails the first comparison, infinity the second. */
    if (errno != 0 || end == text || *end != '\0' || !(value > 0)
        || value > 86400)
        usage();
    return value;
}

static void parse(int argc, char **argv, struct options *opt)
{
    int i, timed = 0;
    double timeout = 10.0;

    opt->host = NULL;
    opt->port = 0;
    opt->servername = "localhost";
    opt->tls = NULL;
    opt->cafile = NULL;
    opt->resumed = 1;
    opt->connections = 0;
    opt->duration = 1.0;
    opt->threads = 1;
    opt->read_ahead = 0;
    opt->server_pid = 0;
    for (i = 1; i < argc; i++) {
        const char *name = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;

        if (value == NULL)
            usage();
        i++;
        if (strcmp(name, "--host") == 0)
            opt->host = value;
        else if (strcmp(name, "--port") == 0)
            opt->port = (int)whole_number(value, 1, 65535);
        else if (strcmp(name, "--servername") == 0)
            opt->servername = value;
        else if (strcmp(name, "--tls") == 0)
            opt->tls = value;
        else if (strcmp(name, "--cafile") == 0)
            opt->cafile = value;
        else if (strcmp(name, "--mode") == 0 && strcmp(value, "full") == 0)
            opt->resumed = 0;
        else if (strcmp(name, "--mode") == 0
                 && strcmp(value, "resumed") == 0)
            opt->resumed = 1;
        else if (strcmp(name, "--connections") == 0)
            opt->connections = whole_number(value, 1, 1000000000);
        else if (strcmp(name, "--duration") == 0) {
            opt->duration = seconds(value);
            timed = 1;
        } else if (strcmp(name, "--timeout") == 0)
            timeout = seconds(value);
        else if (strcmp(name, "--threads") == 0)
            opt->threads = (int)whole_number(value, 1, 100000);
        else if (strcmp(name, "--read-ahead") == 0)
            opt->read_ahead = (int)whole_number(value, 0, 1);
        else if (strcmp(name, "--server-pid") == 0)
            opt->server_pid = whole_number(value, 1, 1L << 30);
        else
            usage();
    }
    if (opt->host == NULL || opt->port == 0
        || (timed && opt->connections > 0)
        || (opt->tls != NULL && strcmp(opt->tls, "1.2") != 0
            && strcmp(opt->tls, "1.3") != 0))
        usage();
    opt->timeout_tv.tv_sec = (time_t)timeout;
    opt->timeout_tv.tv_usec =
        (suseconds_t)((timeout - (double)opt->timeout_tv.tv_sec) * 1e6);
    if (opt->timeout_tv.tv_sec == 0 && opt->timeout_tv.tv_usec == 0)
        opt->timeout_tv.tv_usec = 1;    /* 0 would mean no timeout */
}

static SSL_CTX *make_context(const struct options *opt)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL)
        return NULL;
    if (opt->tls != NULL) {
        int version = strcmp(opt->tls, "1.2") == 0 ? TLS1_2_VERSION
                                                    : TLS1_3_VERSION;

        SSL_CTX_set_min_proto_version(ctx, version);
        SSL_CTX_set_max_proto_version(ctx, version);
    }
    if (opt->cafile != NULL) {
        if (!SSL_CTX_load_verify_locations(ctx, opt->cafile, NULL)) {
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    if (opt->read_ahead)
        SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT
                                   | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session);
    return ctx;
}

int main(int argc, char **argv)
{
    struct options opt;
    struct worker *workers;
    pthread_t *tids;
    pthread_barrier_t start;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    double began = 0, ended = 0, server_used = -1;
    long connections = 0, reused = 0;
    int i, failed = 0;

    parse(argc, argv, &opt);
    if (resolve(&opt, &addr, &addrlen) != 0) {
        fprintf(stderr, "c_reference_client: --host must be a numeric "
                "address, not %s\n", opt.host);
        return 1;
    }
    worker_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    SSL_CTX *ctx = make_context(&opt);
    if (ctx == NULL) {
        fail("cannot set up the SSL_CTX");
        return 1;
    }

    workers = calloc((size_t)opt.threads, sizeof(*workers));
    tids = calloc((size_t)opt.threads, sizeof(*tids));
    if (workers == NULL || tids == NULL) {
        fail("out of memory");
        return 1;
    }
    pthread_barrier_init(&start, NULL, (unsigned)opt.threads);
    for (i = 0; i < opt.threads; i++) {
        workers[i].opt = &opt;
        workers[i].ctx = ctx;
        workers[i].start = &start;
        workers[i].addr = addr;
        workers[i].addrlen = addrlen;
        if (pthread_create(&tids[i], NULL, run_worker, &workers[i]) != 0) {
            fprintf(stderr, "c_reference_client: cannot start thread %d "
                    "of %d\n", i + 1, opt.threads);
            /* The threads started wait at the barrier, or use OpenSSL:
             * leave at once, without exit()'s clean-up under them. */
            _exit(1);
        }
    }
    for (i = 0; i < opt.threads; i++) {
        struct worker *w = &workers[i];

        pthread_join(tids[i], NULL);
        failed |= w->failed;
        connections += w->connections;
        reused += w->reused;
        if (i == 0 || w->began < began)
            began = w->began;
        if (w->ended > ended)
            ended = w->ended;
        if (w->saved != NULL)
            SSL_SESSION_free(w->saved);
    }
    if (failed)
        return 1;

    if (server_began >= 0) {
        double now_used = process_cpu(opt.server_pid);

        if (now_used >= 0)
            server_used = now_used - server_began;
    }
    printf("{\"connections\": %ld, \"seconds\": %.6f, \"reused\": %ld, "
           "\"threads\": %d, \"cpu_seconds\": %.6f, ",
           connections, ended - began, reused, opt.threads,
           cpu_time() - cpu_began);
    if (server_used >= 0)
        printf("\"server_cpu_seconds\": %.6f, ", server_used);
    else
        printf("\"server_cpu_seconds\": null, ");
    printf("\"openssl\": \"%s\"}\n", OpenSSL_version(OPENSSL_VERSION));
    pthread_barrier_destroy(&start);
    free(workers);
    free(tids);
    SSL_CTX_free(ctx);
    return 0;
}
