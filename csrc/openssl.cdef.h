/* Declarations cffi exposes as tlsresume.lib.  Parsed by cffi, not by a C
 * compiler: "..." asks cffi to take the real value or layout from the
 * headers at build time.  Several names are macros in OpenSSL 1.1+ (the
 * legacy init calls, SSL_CTX_set_session_cache_mode, ...); declaring them
 * as functions lets C code port unchanged. */

typedef ... SSL_CTX;
typedef ... SSL;
typedef ... SSL_METHOD;
typedef ... SSL_SESSION;
typedef ... SSL_CIPHER;
typedef ... X509;
typedef ... X509_VERIFY_PARAM;
typedef ... X509_STORE_CTX;
typedef ... CRYPTO_EX_DATA;
typedef ... CRYPTO_EX_new;
typedef ... CRYPTO_EX_dup;
/* Spelled out: an application's callback may run when a session, say,
 * is freed (the tests use it to see that every SSL_SESSION is). */
typedef void CRYPTO_EX_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad,
                            int idx, long argl, void *argp);

/* Versions and errors */
#define OPENSSL_VERSION_NUMBER ...
#define OPENSSL_VERSION ...
#define OPENSSL_DIR ...
#define OPENSSL_ENGINES_DIR ...
const char *OpenSSL_version(int);
unsigned long OpenSSL_version_num(void);
unsigned long ERR_get_error(void);
unsigned long ERR_peek_error(void);
void ERR_clear_error(void);
void ERR_error_string_n(unsigned long, char *, size_t);
const char *ERR_lib_error_string(unsigned long);
const char *ERR_reason_error_string(unsigned long);
int ERR_GET_LIB(unsigned long);
int ERR_GET_REASON(unsigned long);
const char *X509_verify_cert_error_string(long);
const char *X509_get_default_cert_file(void);
const char *X509_get_default_cert_dir(void);
const char *X509_get_default_cert_file_env(void);
const char *X509_get_default_cert_dir_env(void);

/* Legacy initialisation (no-ops since 1.1.0, kept so C code ports) */
int SSL_library_init(void);
void SSL_load_error_strings(void);
void OpenSSL_add_all_algorithms(void);

/* Methods and contexts */
const SSL_METHOD *TLS_method(void);
const SSL_METHOD *TLS_client_method(void);
const SSL_METHOD *TLS_server_method(void);
const SSL_METHOD *SSLv23_method(void);
const SSL_METHOD *SSLv23_client_method(void);
const SSL_METHOD *SSLv23_server_method(void);
SSL_CTX *SSL_CTX_new(const SSL_METHOD *);
int SSL_CTX_up_ref(SSL_CTX *);
void SSL_CTX_free(SSL_CTX *);
uint64_t SSL_CTX_set_options(SSL_CTX *, uint64_t);
uint64_t SSL_CTX_clear_options(SSL_CTX *, uint64_t);
uint64_t SSL_CTX_get_options(const SSL_CTX *);
int SSL_CTX_set_min_proto_version(SSL_CTX *, int);
int SSL_CTX_set_max_proto_version(SSL_CTX *, int);
void SSL_CTX_set_read_ahead(SSL_CTX *, int);
long SSL_CTX_get_read_ahead(SSL_CTX *);
long SSL_CTX_set_session_cache_mode(SSL_CTX *, long);
long SSL_CTX_get_session_cache_mode(SSL_CTX *);
long SSL_CTX_sess_set_cache_size(SSL_CTX *, long);
long SSL_CTX_sess_number(SSL_CTX *);
long SSL_CTX_sess_hits(SSL_CTX *);
void SSL_CTX_sess_set_new_cb(SSL_CTX *,
                             int (*)(SSL *, SSL_SESSION *));
int SSL_CTX_set_session_id_context(SSL_CTX *, const unsigned char *,
                                   unsigned int);
long SSL_CTX_set_timeout(SSL_CTX *, long);
long SSL_CTX_get_timeout(const SSL_CTX *);
int SSL_CTX_set_num_tickets(SSL_CTX *, size_t);
int SSL_CTX_load_verify_locations(SSL_CTX *, const char *, const char *);
int SSL_CTX_set_default_verify_paths(SSL_CTX *);
void SSL_CTX_set_verify(SSL_CTX *, int, int (*)(int, X509_STORE_CTX *));
int SSL_CTX_use_certificate_chain_file(SSL_CTX *, const char *);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *, const char *, int);
int SSL_CTX_check_private_key(const SSL_CTX *);
int SSL_CTX_set_alpn_protos(SSL_CTX *, const unsigned char *, unsigned int);
int SSL_CTX_set_cipher_list(SSL_CTX *, const char *);

/* Connections */
SSL *SSL_new(SSL_CTX *);
void SSL_free(SSL *);
SSL_CTX *SSL_get_SSL_CTX(const SSL *);
int SSL_set_fd(SSL *, int);
int SSL_get_fd(const SSL *);
long SSL_set_tlsext_host_name(SSL *, const char *);
const char *SSL_get_servername(const SSL *, const int);
int SSL_set1_host(SSL *, const char *);
X509_VERIFY_PARAM *SSL_get0_param(SSL *);
int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *, const char *);
void SSL_set_connect_state(SSL *);
void SSL_set_accept_state(SSL *);
int SSL_connect(SSL *);
int SSL_accept(SSL *);
int SSL_do_handshake(SSL *);
int SSL_read(SSL *, void *, int);
int SSL_peek(SSL *, void *, int);
int SSL_write(SSL *, const void *, int);
int SSL_pending(const SSL *);
int SSL_has_pending(const SSL *);
int SSL_shutdown(SSL *);
void SSL_set_shutdown(SSL *, int);
int SSL_get_shutdown(const SSL *);
int SSL_get_error(const SSL *, int);
const char *SSL_get_version(const SSL *);
int SSL_version(const SSL *);
long SSL_get_verify_result(const SSL *);
const SSL_CIPHER *SSL_get_current_cipher(const SSL *);
const char *SSL_CIPHER_get_name(const SSL_CIPHER *);
void SSL_get0_alpn_selected(const SSL *, const unsigned char **,
                            unsigned int *);
int SSL_get_ex_new_index(long, void *, CRYPTO_EX_new *, CRYPTO_EX_dup *,
                         CRYPTO_EX_free *);
int SSL_set_ex_data(SSL *, int, void *);
void *SSL_get_ex_data(const SSL *, int);
void SSL_set_verify(SSL *, int, int (*)(int, X509_STORE_CTX *));
uint64_t SSL_set_options(SSL *, uint64_t);

/* Sessions */
int SSL_set_session(SSL *, SSL_SESSION *);
SSL_SESSION *SSL_get_session(const SSL *);
SSL_SESSION *SSL_get1_session(SSL *);
int SSL_session_reused(const SSL *);
void SSL_SESSION_free(SSL_SESSION *);
int SSL_SESSION_up_ref(SSL_SESSION *);
int SSL_SESSION_is_resumable(const SSL_SESSION *);
long SSL_SESSION_get_time(const SSL_SESSION *);
long SSL_SESSION_get_timeout(const SSL_SESSION *);
unsigned long SSL_SESSION_get_ticket_lifetime_hint(const SSL_SESSION *);
int SSL_SESSION_get_protocol_version(const SSL_SESSION *);
int SSL_SESSION_has_ticket(const SSL_SESSION *);
const unsigned char *SSL_SESSION_get_id(const SSL_SESSION *, unsigned int *);
const SSL_CIPHER *SSL_SESSION_get0_cipher(const SSL_SESSION *);
uint32_t SSL_SESSION_get_max_early_data(const SSL_SESSION *);
int SSL_SESSION_get_ex_new_index(long, void *, CRYPTO_EX_new *,
                                 CRYPTO_EX_dup *, CRYPTO_EX_free *);
int SSL_SESSION_set_ex_data(SSL_SESSION *, int, void *);
void *SSL_SESSION_get_ex_data(const SSL_SESSION *, int);
#define CRYPTO_EX_INDEX_SSL_SESSION ...
int CRYPTO_free_ex_index(int class_index, int idx);
int i2d_SSL_SESSION(SSL_SESSION *, unsigned char **);
SSL_SESSION *d2i_SSL_SESSION(SSL_SESSION **, const unsigned char **, long);

/* Constants, with their values read from the headers */
#define SSL_FILETYPE_PEM ...
#define SSL_OP_ALL ...
#define SSL_OP_NO_TICKET ...
#define SSL_OP_NO_SSLv2 ...
#define SSL_OP_NO_SSLv3 ...
#define SSL_OP_NO_TLSv1 ...
#define SSL_OP_NO_TLSv1_1 ...
#define SSL_OP_NO_TLSv1_2 ...
#define SSL_OP_NO_TLSv1_3 ...
#define SSL_OP_NO_COMPRESSION ...
#define SSL_OP_IGNORE_UNEXPECTED_EOF ...
#define SSL_OP_NO_RENEGOTIATION ...
#define SSL_OP_ENABLE_MIDDLEBOX_COMPAT ...
#define SSL_SESS_CACHE_OFF ...
#define SSL_SESS_CACHE_CLIENT ...
#define SSL_SESS_CACHE_SERVER ...
#define SSL_SESS_CACHE_BOTH ...
#define SSL_SESS_CACHE_NO_AUTO_CLEAR ...
#define SSL_SESS_CACHE_NO_INTERNAL_LOOKUP ...
#define SSL_SESS_CACHE_NO_INTERNAL_STORE ...
#define SSL_SESS_CACHE_NO_INTERNAL ...
#define TLS1_VERSION ...
#define TLS1_1_VERSION ...
#define TLS1_2_VERSION ...
#define TLS1_3_VERSION ...
#define SSL_ERROR_NONE ...
#define SSL_ERROR_SSL ...
#define SSL_ERROR_WANT_READ ...
#define SSL_ERROR_WANT_WRITE ...
#define SSL_ERROR_WANT_X509_LOOKUP ...
#define SSL_ERROR_SYSCALL ...
#define SSL_ERROR_ZERO_RETURN ...
#define SSL_ERROR_WANT_CONNECT ...
#define SSL_ERROR_WANT_ACCEPT ...
#define SSL_VERIFY_NONE ...
#define SSL_VERIFY_PEER ...
#define SSL_VERIFY_FAIL_IF_NO_PEER_CERT ...
#define SSL_VERIFY_CLIENT_ONCE ...
#define SSL_SENT_SHUTDOWN ...
#define SSL_RECEIVED_SHUTDOWN ...
#define X509_V_OK ...
#define ERR_LIB_SSL ...
#define SSL_R_UNEXPECTED_EOF_WHILE_READING ...
#define SSL_R_CERTIFICATE_VERIFY_FAILED ...

/* tlsresume glue (csrc/openssl.glue.c) */
extern const char TLSRESUME_BUILD_VERSION[];
extern "Python" int _tlsresume_new_session_cb(SSL *, SSL_SESSION *);
int tlsresume_set_timeouts(int fd, double seconds);
double tlsresume_session_lifetime(const SSL_SESSION *);
