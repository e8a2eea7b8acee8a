/*
 * loadgen: the benchmark's load generator (tools/bench compiles and runs it).
 *
 * Python is too slow to load a DTLS server, so the load comes from here:
 * C, OpenSSL 3 for DTLS 1.2 with a pre-shared key (PSK-AES128-CCM8, the one
 * suite tinydtls offers), epoll, a few threads each driving many clients
 * over non-blocking connected UDP sockets.
 *
 * Modes:
 *   coap       N clients, each its own socket and DTLS session, each sending
 *              confirmable CoAP requests in a closed loop for D seconds or C
 *              requests; every latency is recorded.
 *   udp        the same CoAP-shaped datagrams over plain UDP (for an echo
 *              server: any datagram with the request's message id and token
 *              answers it).
 *   handshake  N slots each doing full handshakes in a loop: new socket, new
 *              session, optionally one request, close_notify, close.
 *   hold       N sessions kept alive, each sending one request every I ms,
 *              for D seconds; reports whether every session was served.
 *   echo       a trivial UDP echo server in C (the generator's own ceiling).
 *   storm      a reconnect storm: N clients each hold a session and an Observe
 *              registration; after "loadgen: ready" the caller restarts the
 *              server and sends SIGUSR1; then every client reconnects at the
 *              same moment, resends its last request and registers again; one
 *              change (a PUT) checks that every observation was restored.
 *
 * Phase lines go to stderr ("loadgen: ready", "loadgen: done") so a caller
 * can sample the server between them; the result is one JSON object on
 * stdout.  Every loop is bounded by --duration, plus a watchdog.
 *
 * Build: gcc -O2 -pthread -o loadgen loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_COAP, M_UDP, M_HANDSHAKE, M_HOLD, M_ECHO, M_STORM };

enum state {
    S_IDLE,       /* not connected (handshake mode: waiting to reconnect) */
    S_HANDSHAKE,  /* DTLS handshake in progress */
    S_READY,      /* connected, no request outstanding */
    S_WAITING,    /* a request is outstanding */
    S_DEAD        /* gave up */
};

#define MAX_CREDS 4096
#define MAX_PAYLOAD 512
#define MAX_PATH_SEGMENTS 8
#define MAX_THREADS 64

struct cred {
    char identity[64];
    unsigned char key[64];
    unsigned int key_len;
};

/* ------------------------------------------------------------------ options */

static struct {
    enum mode mode;
    const char *host;
    int port;
    int clients;
    int threads;
    double duration_s;
    long count;
    int timeout_ms;
    int retries;
    int interval_ms;
    int handshake_timeout_ms;
    int hs_timer_ms;
    int ramp;
    double wait_ready_s;
    double setup_timeout_s;
    const char *cipher;
    int method; /* CoAP code: 1 GET, 2 POST, 3 PUT */
    char *segments[MAX_PATH_SEGMENTS];
    int nsegments;
    unsigned char payload[MAX_PAYLOAD];
    int payload_len;
    int content_format; /* -1: none */
    int with_request;   /* handshake mode: one request per session */
    int no_close_notify;  /* end sessions by dropping them, without close_notify */
    int query_per_client; /* add Uri-Query "c=<client index>": requests of different
                             clients differ, so a server cannot share one answer */
    int source_port_base; /* bind client sockets to ports from this base ... */
    int source_ports;     /* ... cycling over this many (0: the kernel picks) */
    long max_samples;
    /* storm mode: the two payloads the change PUTs alternate (before and after the storm) */
    unsigned char change[2][MAX_PAYLOAD];
    int change_len[2];
    int change_format;
    int notify_wait_ms; /* how long to wait for the notifications of one change */
    double storm_wait_s; /* how long to wait for SIGUSR1 */
} opt = {
    .mode = M_COAP,
    .host = "127.0.0.1",
    .port = 5684,
    .clients = 1,
    .threads = 1,
    .duration_s = 5,
    .count = 0,
    .timeout_ms = 1000,
    .retries = 4,
    .interval_ms = 2000,
    .handshake_timeout_ms = 10000,
    .hs_timer_ms = 1000,
    .ramp = 64,
    .wait_ready_s = 0,
    .setup_timeout_s = 60,
    .cipher = "PSK-AES128-CCM8",
    .method = 1,
    .content_format = -1,
    .max_samples = 50000000,
    .change_format = 60,
    .notify_wait_ms = 5000,
    .storm_wait_s = 120,
};

static struct cred creds[MAX_CREDS];
static int ncreds;

static struct sockaddr_storage server_addr;
static socklen_t server_addr_len;
static SSL_CTX *ssl_ctx;

/* ------------------------------------------------------------------ time */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double realtime_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

/* ------------------------------------------------------------------ shared run state */

static atomic_int stop_flag;         /* set by a signal, the count limit or the deadline */
static atomic_long total_done;       /* completed requests in the measured phase */
static atomic_int measuring;         /* 1 during the measured phase */
static uint64_t phase_start_ns;      /* valid once measuring */
static uint64_t phase_deadline_ns;
static pthread_barrier_t barrier;
static atomic_long first_response_us; /* realtime of the first answered request, in µs */

static void on_signal(int sig) {
    (void)sig;
    atomic_store(&stop_flag, 1);
}

static void on_watchdog(int sig) {
    (void)sig;
    static const char msg[] = "loadgen: watchdog expired, exiting\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(3);
}

/* ------------------------------------------------------------------ samples */

struct samples {
    uint32_t *lat_us;  /* latency of each completed request */
    uint32_t *done_us; /* its completion time since the phase start (sorted) */
    long n, cap;
};

static void sample_add(struct samples *s, uint32_t lat_us, uint32_t done_us) {
    if (s->n >= opt.max_samples) return;
    if (s->n == s->cap) {
        long cap = s->cap ? s->cap * 2 : 65536;
        uint32_t *a = realloc(s->lat_us, cap * sizeof *a);
        uint32_t *b = realloc(s->done_us, cap * sizeof *b);
        if (!a || !b) die("out of memory for samples");
        s->lat_us = a;
        s->done_us = b;
        s->cap = cap;
    }
    s->lat_us[s->n] = lat_us;
    s->done_us[s->n] = done_us;
    s->n++;
}

/* ------------------------------------------------------------------ clients */

struct client {
    int idx;
    int fd;
    SSL *ssl;
    enum state state;
    const struct cred *cred;
    uint16_t mid;
    uint32_t seq;
    unsigned char token[4];
    unsigned char req[MAX_PAYLOAD + 128];
    int req_len;
    int acked;         /* an empty ACK arrived: the answer comes separately */
    int retransmits;   /* of the outstanding request */
    uint64_t first_sent_ns, deadline_ns;
    uint64_t conn_start_ns; /* socket created (handshake latency) */
    uint64_t next_ns;       /* hold: next request; handshake: next connect */
    long responses;         /* answered during the measured phase */
    long hs_attempts;
    /* storm mode */
    int kind;               /* what the outstanding request is: K_LAST, K_REG, K_CHANGE */
    int reply_observe;      /* the answer being completed carried an Observe option */
    int obs_state;          /* OBS_NONE, OBS_REGISTERED, OBS_DECLINED */
    unsigned char obs_token[4];
    int answered;           /* its last request was answered (this round) */
    int settled;            /* registered, declined or given up (this round) */
    int notified_round;     /* the change round whose notification arrived */
    uint64_t answered_ns;
    long hs_retx, req_retx; /* retransmissions this round */
};

struct worker {
    pthread_t thread;
    int id;
    int epfd;
    struct client *clients;
    int nclients;
    struct samples samples;
    struct samples hs_samples; /* handshake latencies (setup, or handshake mode) */
    /* counters */
    long errors, timeouts, failed, strays, drops, hs_ok, hs_fail, socket_errors;
    long codes[256];
    int in_flight_handshakes;
    int ramp_limit;
    int connected;
};

static struct worker workers[MAX_THREADS];

/* ------------------------------------------------------------------ storm state */

enum { K_LAST, K_REG, K_CHANGE };
enum { OBS_NONE, OBS_REGISTERED, OBS_DECLINED };
enum { P_SETUP, P_BASELINE, P_WAIT, P_STORM, P_CHANGE, P_DONE };
static atomic_int storm_phase;
static atomic_int go_flag;       /* SIGUSR1: the server is back, reconnect now */
static atomic_int change_round;  /* 1 before the storm, 2 after */
static atomic_int n_answered, n_registered, n_declined, n_settled, n_notified;
static uint64_t storm_start_ns;

static void on_go(int sig) {
    (void)sig;
    atomic_store(&go_flag, 1);
}

/* Does a CoAP message carry option number `want`?  (Options are sorted.) */
static int has_option(const unsigned char *d, int n, int want) {
    int i = 4 + (d[0] & 0xf), num = 0;
    while (i < n && d[i] != 0xff) {
        int delta = d[i] >> 4, len = d[i] & 0xf;
        i++;
        if (delta == 15 || len == 15) return 0;
        if (delta == 13) {
            if (i >= n) return 0;
            delta = d[i++] + 13;
        } else if (delta == 14) {
            if (i + 1 >= n) return 0;
            delta = (d[i] << 8 | d[i + 1]) + 269;
            i += 2;
        }
        if (len == 13) {
            if (i >= n) return 0;
            len = d[i++] + 13;
        } else if (len == 14) {
            if (i + 1 >= n) return 0;
            len = (d[i] << 8 | d[i + 1]) + 269;
            i += 2;
        }
        num += delta;
        if (num == want) return 1;
        if (num > want) return 0;
        i += len;
    }
    return 0;
}

static void settle(struct client *c) {
    if (c->settled) return;
    c->settled = 1;
    atomic_fetch_add(&n_settled, 1);
}

static unsigned int psk_cb(SSL *ssl, const char *hint, char *identity, unsigned int max_identity,
                           unsigned char *psk, unsigned int max_psk) {
    (void)hint;
    struct client *c = SSL_get_app_data(ssl);
    const struct cred *cr = c ? c->cred : &creds[0];
    size_t len = strlen(cr->identity);
    if (len + 1 > max_identity || cr->key_len > max_psk) return 0;
    memcpy(identity, cr->identity, len + 1);
    memcpy(psk, cr->key, cr->key_len);
    return cr->key_len;
}

static unsigned int timer_cb(SSL *ssl, unsigned int timer_us) {
    (void)ssl;
    if (timer_us == 0) return (unsigned int)opt.hs_timer_ms * 1000u;
    unsigned int next = timer_us * 2;
    return next > 8000000u ? 8000000u : next;
}

static void encode_request(struct client *c) {
    unsigned char *p = c->req;
    c->mid++;
    c->seq++;
    uint32_t t = ((uint32_t)c->idx << 20) ^ c->seq;
    c->token[0] = t >> 24;
    c->token[1] = t >> 16;
    c->token[2] = t >> 8;
    c->token[3] = t;
    *p++ = 0x40 | 4; /* version 1, CON, token length 4 */
    *p++ = (unsigned char)opt.method;
    *p++ = c->mid >> 8;
    *p++ = c->mid & 0xff;
    memcpy(p, c->token, 4);
    p += 4;
    int last = 0;
    for (int i = 0; i < opt.nsegments; i++) {
        int len = (int)strlen(opt.segments[i]);
        int delta = 11 - last;
        last = 11;
        unsigned char *hdr = p++;
        int dn = delta < 13 ? delta : 13;
        int ln = len < 13 ? len : (len < 269 ? 13 : 14);
        *hdr = (unsigned char)(dn << 4 | ln);
        if (dn == 13) *p++ = (unsigned char)(delta - 13);
        if (ln == 13) *p++ = (unsigned char)(len - 13);
        if (ln == 14) {
            *p++ = (unsigned char)((len - 269) >> 8);
            *p++ = (unsigned char)(len - 269);
        }
        memcpy(p, opt.segments[i], len);
        p += len;
    }
    if (opt.content_format >= 0) {
        int delta = 12 - last;
        if (opt.content_format == 0) {
            *p++ = (unsigned char)(delta << 4);
        } else if (opt.content_format < 256) {
            *p++ = (unsigned char)(delta << 4 | 1);
            *p++ = (unsigned char)opt.content_format;
        } else {
            *p++ = (unsigned char)(delta << 4 | 2);
            *p++ = (unsigned char)(opt.content_format >> 8);
            *p++ = (unsigned char)opt.content_format;
        }
        last = 12;
    }
    if (opt.query_per_client) {
        char query[16];
        int len = snprintf(query, sizeof query, "c=%d", c->idx);
        *p++ = (unsigned char)((15 - last) << 4 | len); /* Uri-Query; len < 13 */
        memcpy(p, query, len);
        p += len;
    }
    if (opt.payload_len > 0) {
        *p++ = 0xff;
        memcpy(p, opt.payload, opt.payload_len);
        p += opt.payload_len;
    }
    c->req_len = (int)(p - c->req);
}

/* Storm mode: the last request (GET), the Observe registration (GET, Observe 0) or the
 * change (PUT of one of the two payloads), each with a fresh message id and token. */
static void encode_storm(struct client *c, int kind) {
    unsigned char *p = c->req;
    c->mid++;
    c->seq++;
    uint32_t t = ((uint32_t)c->idx << 12) ^ (c->seq * 2654435761u);
    c->token[0] = t >> 24;
    c->token[1] = t >> 16;
    c->token[2] = t >> 8;
    c->token[3] = t;
    *p++ = 0x40 | 4;
    *p++ = kind == K_CHANGE ? 3 : 1;
    *p++ = c->mid >> 8;
    *p++ = c->mid & 0xff;
    memcpy(p, c->token, 4);
    p += 4;
    int last = 0;
    if (kind == K_REG) {
        *p++ = 6 << 4; /* Observe: 0 (register), zero-length */
        last = 6;
    }
    for (int i = 0; i < opt.nsegments; i++) {
        int len = (int)strlen(opt.segments[i]);
        if (len > 12) die("storm mode: path segments must be at most 12 bytes");
        *p++ = (unsigned char)((11 - last) << 4 | len);
        last = 11;
        memcpy(p, opt.segments[i], len);
        p += len;
    }
    if (kind == K_CHANGE) {
        int r = (atomic_load(&change_round) - 1) & 1;
        *p++ = (unsigned char)((12 - last) << 4 | 1);
        *p++ = (unsigned char)opt.change_format;
        if (opt.change_len[r] > 0) {
            *p++ = 0xff;
            memcpy(p, opt.change[r], opt.change_len[r]);
            p += opt.change_len[r];
        }
    }
    c->kind = kind;
    c->req_len = (int)(p - c->req);
}

static int transmit(struct worker *w, struct client *c, const unsigned char *data, int len) {
    if (c->ssl) {
        int r = SSL_write(c->ssl, data, len);
        if (r <= 0) {
            ERR_clear_error();
            w->socket_errors++;
            return -1;
        }
        return 0;
    }
    if (send(c->fd, data, len, 0) < 0) {
        w->socket_errors++;
        return -1;
    }
    return 0;
}

static void close_client(struct worker *w, struct client *c, int notify) {
    if (c->state == S_READY || c->state == S_WAITING) w->connected--;
    if (opt.no_close_notify) notify = 0;
    if (c->ssl) {
        if (notify && (c->state == S_READY || c->state == S_WAITING)) SSL_shutdown(c->ssl);
        SSL_free(c->ssl); /* frees the BIO too; the BIO does not own the socket */
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == S_HANDSHAKE) w->in_flight_handshakes--;
    c->state = S_IDLE;
}

static void start_request(struct worker *w, struct client *c, uint64_t now);
static int cmp_u32(const void *a, const void *b);
static double pct(const uint32_t *v, long n, double p);
static void finish_session(struct worker *w, struct client *c, uint64_t now);

static int open_socket(struct worker *w, struct client *c) {
    int fd = socket(server_addr.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        w->socket_errors++;
        return -1;
    }
    if (opt.source_ports > 0) { /* reuse a small set of source ports on purpose */
        static atomic_int next_port;
        int bound = 0;
        for (int tries = 0; tries < opt.source_ports && !bound; tries++) {
            int port = opt.source_port_base + atomic_fetch_add(&next_port, 1) % opt.source_ports;
            struct sockaddr_storage local;
            memcpy(&local, &server_addr, sizeof local);
            if (local.ss_family == AF_INET)
                ((struct sockaddr_in *)&local)->sin_port = htons((uint16_t)port);
            else
                ((struct sockaddr_in6 *)&local)->sin6_port = htons((uint16_t)port);
            bound = bind(fd, (struct sockaddr *)&local, server_addr_len) == 0;
        }
        if (!bound) {
            close(fd);
            w->socket_errors++;
            return -1;
        }
    }
    if (connect(fd, (struct sockaddr *)&server_addr, server_addr_len) < 0) {
        close(fd);
        w->socket_errors++;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        w->socket_errors++;
        return -1;
    }
    c->fd = fd;
    return 0;
}

static void on_connected(struct worker *w, struct client *c, uint64_t now) {
    c->state = S_READY;
    w->in_flight_handshakes--;
    w->hs_ok++;
    w->connected++;
    uint64_t lat = now - c->conn_start_ns;
    if (opt.mode != M_HANDSHAKE || atomic_load(&measuring))
        sample_add(&w->hs_samples, (uint32_t)(lat / 1000), 0);
    if (opt.mode == M_HANDSHAKE) {
        if (opt.with_request)
            start_request(w, c, now);
        else
            finish_session(w, c, now);
    } else if (opt.mode == M_HOLD) {
        c->next_ns = now + (uint64_t)(rand() % opt.interval_ms) * 1000000ull;
    } else if (opt.mode == M_STORM) {
        int phase = atomic_load(&storm_phase);
        if (phase == P_SETUP || phase == P_STORM) start_request(w, c, now);
    } else if (atomic_load(&measuring) && !atomic_load(&stop_flag)) {
        start_request(w, c, now); /* a session re-established during the measured phase */
    }
}

static void drive_handshake(struct worker *w, struct client *c, uint64_t now) {
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        on_connected(w, c, now);
        return;
    }
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
    /* an alert, a refused port (ICMP), or a protocol error */
    w->hs_fail++;
    ERR_clear_error();
    close_client(w, c, 0);
    /* retry where retrying makes sense: soon while waiting for a server to start */
    c->next_ns = now + (opt.wait_ready_s > 0 ? 2000000ull : 10000000ull);
}

static void start_connect(struct worker *w, struct client *c, uint64_t now) {
    c->conn_start_ns = now;
    c->hs_attempts++;
    if (open_socket(w, c) < 0) {
        c->state = S_IDLE;
        c->next_ns = now + 10000000ull;
        return;
    }
    if (opt.mode == M_UDP) {
        c->state = S_READY;
        w->connected++;
        if (atomic_load(&measuring) && !atomic_load(&stop_flag)) start_request(w, c, now);
        return;
    }
    BIO *bio = BIO_new_dgram(c->fd, BIO_NOCLOSE);
    BIO_ADDR *peer = BIO_ADDR_new();
    if (server_addr.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&server_addr;
        BIO_ADDR_rawmake(peer, AF_INET, &sin->sin_addr, sizeof sin->sin_addr, sin->sin_port);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&server_addr;
        BIO_ADDR_rawmake(peer, AF_INET6, &sin6->sin6_addr, sizeof sin6->sin6_addr,
                         sin6->sin6_port);
    }
    BIO_ctrl_set_connected(bio, peer);
    BIO_ADDR_free(peer);
    c->ssl = SSL_new(ssl_ctx);
    SSL_set_app_data(c->ssl, c);
    SSL_set_bio(c->ssl, bio, bio);
    SSL_set_options(c->ssl, SSL_OP_NO_QUERY_MTU);
    DTLS_set_link_mtu(c->ssl, 1400);
    DTLS_set_timer_cb(c->ssl, timer_cb);
    SSL_set_connect_state(c->ssl);
    c->state = S_HANDSHAKE;
    w->in_flight_handshakes++;
    drive_handshake(w, c, now);
}

static void start_storm_request(struct worker *w, struct client *c, int kind, uint64_t now);

static void start_request(struct worker *w, struct client *c, uint64_t now) {
    if (opt.mode == M_STORM) {
        start_storm_request(w, c, c->answered ? K_REG : K_LAST, now);
        return;
    }
    encode_request(c);
    c->acked = 0;
    c->retransmits = 0;
    c->first_sent_ns = now;
    c->deadline_ns = now + (uint64_t)opt.timeout_ms * 1000000ull;
    c->state = S_WAITING;
    if (transmit(w, c, c->req, c->req_len) < 0) {
        /* the session broke (e.g. ICMP unreachable): count and reconnect */
        w->drops++;
        close_client(w, c, 0);
        c->next_ns = now + 10000000ull;
    }
}

static void start_storm_request(struct worker *w, struct client *c, int kind, uint64_t now) {
    encode_storm(c, kind);
    c->acked = 0;
    c->retransmits = 0;
    c->first_sent_ns = now;
    c->deadline_ns = now + (uint64_t)opt.timeout_ms * 1000000ull;
    c->state = S_WAITING;
    if (transmit(w, c, c->req, c->req_len) < 0) {
        w->drops++;
        close_client(w, c, 0);
        c->next_ns = now + 10000000ull;
    }
}

/* Storm mode: an answer to the outstanding request. */
static void storm_complete(struct worker *w, struct client *c, int code, uint64_t now) {
    w->codes[code & 0xff]++;
    int ok = (code >> 5) == 2;
    if (!ok) w->errors++;
    c->state = S_READY;
    if (c->kind == K_LAST) {
        if (!ok) {
            settle(c);
            return;
        }
        if (!c->answered) {
            c->answered = 1;
            c->answered_ns = now;
            atomic_fetch_add(&n_answered, 1);
        }
        start_storm_request(w, c, K_REG, now);
    } else if (c->kind == K_REG) {
        if (ok && c->reply_observe) {
            c->obs_state = OBS_REGISTERED;
            memcpy(c->obs_token, c->token, 4);
            atomic_fetch_add(&n_registered, 1);
        } else {
            c->obs_state = OBS_DECLINED;
            atomic_fetch_add(&n_declined, 1);
        }
        settle(c);
    }
}

/* A handshake-mode session is complete: record it, close it, start the next. */
static void finish_session(struct worker *w, struct client *c, uint64_t now) {
    if (atomic_load(&measuring)) {
        uint64_t lat = now - c->conn_start_ns;
        sample_add(&w->samples, (uint32_t)(lat / 1000), (uint32_t)((now - phase_start_ns) / 1000));
        long done = atomic_fetch_add(&total_done, 1) + 1;
        if (opt.count > 0 && done >= opt.count) atomic_store(&stop_flag, 1);
    }
    close_client(w, c, 1);
    c->next_ns = now; /* next handshake at once */
}

static void complete_request(struct worker *w, struct client *c, int code, uint64_t now) {
    if (opt.mode == M_STORM) {
        storm_complete(w, c, code, now);
        return;
    }
    w->codes[code & 0xff]++;
    int ok = (code >> 5) == 2 || opt.mode == M_UDP;
    if (!ok) w->errors++;
    if (opt.mode == M_HANDSHAKE) { /* the session is the unit: finish_session records it */
        if (ok) {
            c->state = S_READY;
            finish_session(w, c, now);
        } else {
            close_client(w, c, 1);
            c->next_ns = now;
        }
        return;
    }
    if (atomic_load(&measuring)) {
        if (atomic_load(&first_response_us) == 0 && ok)
            atomic_store(&first_response_us, (long)(realtime_s() * 1e6));
        if (ok) {
            uint64_t lat = now - c->first_sent_ns;
            sample_add(&w->samples, (uint32_t)(lat / 1000),
                       (uint32_t)((now - phase_start_ns) / 1000));
            c->responses++;
            long done = atomic_fetch_add(&total_done, 1) + 1;
            if (opt.count > 0 && done >= opt.count) atomic_store(&stop_flag, 1);
        }
    }
    c->state = S_READY;
    if (opt.mode == M_HOLD) {
        c->next_ns = c->first_sent_ns + (uint64_t)opt.interval_ms * 1000000ull;
    } else if (atomic_load(&measuring) && !atomic_load(&stop_flag)) {
        start_request(w, c, now); /* closed loop */
    }
}

/* A decrypted (or plain) datagram for a client: match it to the outstanding request. */
static void on_datagram(struct worker *w, struct client *c, const unsigned char *d, int n,
                        uint64_t now) {
    if (n < 4 || (d[0] >> 6) != 1) {
        w->strays++;
        return;
    }
    int type = (d[0] >> 4) & 3, tkl = d[0] & 0xf, code = d[1];
    uint16_t mid = (uint16_t)(d[2] << 8 | d[3]);
    if (opt.mode == M_STORM) {
        c->reply_observe = has_option(d, n, 6);
        if (c->obs_state == OBS_REGISTERED && (type == 0 || type == 1) && tkl == 4 && n >= 8 &&
            memcmp(d + 4, c->obs_token, 4) == 0) { /* a notification */
            if (type == 0) {
                unsigned char ack[4] = {0x60, 0, d[2], d[3]};
                transmit(w, c, ack, 4);
            }
            int round = atomic_load(&change_round);
            if (round > 0 && c->notified_round != round && (code >> 5) == 2) {
                c->notified_round = round;
                atomic_fetch_add(&n_notified, 1);
            }
            return;
        }
    }
    if (c->state != S_WAITING) {
        w->strays++;
        return;
    }
    if (opt.mode == M_UDP) { /* an echo: the message id and token must match */
        if (mid == c->mid && tkl == 4 && n >= 8 && memcmp(d + 4, c->token, 4) == 0)
            complete_request(w, c, 0x45, now);
        else
            w->strays++;
        return;
    }
    if (type == 2 && mid == c->mid) { /* ACK */
        if (code == 0) {                /* empty ACK: a separate response follows */
            c->acked = 1;
            c->deadline_ns = c->first_sent_ns + 30000000000ull; /* 30 s for it to come */
            return;
        }
        if (tkl == 4 && n >= 8 && memcmp(d + 4, c->token, 4) == 0)
            complete_request(w, c, code, now);
        else
            w->strays++;
        return;
    }
    if (type == 3 && mid == c->mid) { /* RST */
        w->errors++;
        w->codes[0]++;
        c->state = S_READY;
        if (opt.mode == M_COAP && atomic_load(&measuring) && !atomic_load(&stop_flag))
            start_request(w, c, now);
        else if (opt.mode == M_HOLD)
            c->next_ns = c->first_sent_ns + (uint64_t)opt.interval_ms * 1000000ull;
        return;
    }
    if ((type == 0 || type == 1) && tkl == 4 && n >= 8 && memcmp(d + 4, c->token, 4) == 0) {
        if (type == 0) { /* a confirmable separate response: acknowledge it */
            unsigned char ack[4] = {0x60, 0, d[2], d[3]};
            transmit(w, c, ack, 4);
        }
        complete_request(w, c, code, now);
        return;
    }
    w->strays++;
}

static void on_readable(struct worker *w, struct client *c, uint64_t now) {
    unsigned char buf[2048];
    if (c->state == S_HANDSHAKE) {
        drive_handshake(w, c, now);
        return;
    }
    if (c->fd < 0) return;
    if (!c->ssl) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) w->socket_errors++;
            return;
        }
        on_datagram(w, c, buf, (int)n, now);
        return;
    }
    int n = SSL_read(c->ssl, buf, sizeof buf);
    if (n > 0) {
        on_datagram(w, c, buf, n, now);
        return;
    }
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
    /* close_notify (ZERO_RETURN), a fatal alert or a socket error: the session is gone */
    ERR_clear_error();
    w->drops++;
    int was_waiting = c->state == S_WAITING;
    close_client(w, c, 0);
    w->connected--;
    if (was_waiting && opt.mode != M_STORM) w->failed++;
    c->next_ns = now + 10000000ull;
}

static void on_timer(struct worker *w, struct client *c, uint64_t now) {
    switch (c->state) {
    case S_HANDSHAKE: {
        if (now - c->conn_start_ns > (uint64_t)opt.handshake_timeout_ms * 1000000ull) {
            w->hs_fail++;
            close_client(w, c, 0);
            c->next_ns = now;
            return;
        }
        struct timeval tv;
        if (DTLSv1_get_timeout(c->ssl, &tv) && tv.tv_sec == 0 && tv.tv_usec == 0) {
            c->hs_retx++;
            if (DTLSv1_handle_timeout(c->ssl) < 0) {
                w->hs_fail++;
                ERR_clear_error();
                close_client(w, c, 0);
                c->next_ns = now + 10000000ull;
            }
        }
        return;
    }
    case S_WAITING:
        if (now < c->deadline_ns) return;
        if (c->acked || c->retransmits >= opt.retries) {
            w->timeouts++;
            w->failed++;
            c->state = S_READY;
            if (opt.mode == M_STORM) {
                settle(c); /* given up: a failed client */
            } else if (opt.mode == M_HANDSHAKE) {
                close_client(w, c, 1);
                c->next_ns = now;
            } else if (opt.mode == M_HOLD) {
                c->next_ns = now;
            } else if (atomic_load(&measuring) && !atomic_load(&stop_flag)) {
                start_request(w, c, now);
            }
            return;
        }
        w->timeouts++;
        c->retransmits++;
        c->req_retx++;
        c->deadline_ns = now + ((uint64_t)opt.timeout_ms << c->retransmits) * 1000000ull;
        transmit(w, c, c->req, c->req_len);
        return;
    case S_READY:
        if (opt.mode == M_HOLD && atomic_load(&measuring) && !atomic_load(&stop_flag) &&
            now >= c->next_ns)
            start_request(w, c, now);
        return;
    case S_IDLE:
        if (now < c->next_ns) return;
        if (opt.mode == M_HANDSHAKE) {
            if (atomic_load(&measuring) && !atomic_load(&stop_flag)) start_connect(w, c, now);
        } else if (opt.mode == M_STORM) {
            int phase = atomic_load(&storm_phase); /* no reconnecting while the server is away */
            if ((phase == P_SETUP && w->in_flight_handshakes < w->ramp_limit) || phase == P_STORM)
                start_connect(w, c, now);
        } else if (w->in_flight_handshakes < w->ramp_limit) {
            start_connect(w, c, now);
        }
        return;
    default:
        return;
    }
}

/* One pass of the event loop: wait up to timeout_ms, handle events, then timers. */
static void loop_once(struct worker *w, int timeout_ms, uint64_t *last_scan) {
    struct epoll_event events[256];
    int n = epoll_wait(w->epfd, events, 256, timeout_ms);
    uint64_t now = now_ns();
    for (int i = 0; i < n; i++) on_readable(w, events[i].data.ptr, now);
    if (n <= 0 || now - *last_scan >= 1000000ull) { /* timers at most every millisecond */
        *last_scan = now;
        for (int i = 0; i < w->nclients; i++) on_timer(w, &w->clients[i], now);
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    uint64_t last_scan = 0;
    uint64_t t0 = now_ns();
    uint64_t setup_deadline = t0 + (uint64_t)(opt.setup_timeout_s * 1e9);
    if (opt.wait_ready_s > 0) setup_deadline = t0 + (uint64_t)(opt.wait_ready_s * 1e9);

    /* set-up: establish every session (not in handshake mode) */
    if (opt.mode != M_HANDSHAKE) {
        for (int i = 0; i < w->nclients; i++) w->clients[i].next_ns = t0;
        /* a refused key fails every time: give up early unless waiting for a server to start */
        long max_failures = opt.wait_ready_s > 0 ? -1 : 3L * w->nclients + 20;
        while (w->connected < w->nclients && !atomic_load(&stop_flag) &&
               now_ns() < setup_deadline && (max_failures < 0 || w->hs_fail <= max_failures))
            loop_once(w, 1, &last_scan);
    }
    pthread_barrier_wait(&barrier); /* everyone set up */
    pthread_barrier_wait(&barrier); /* main started the measured phase */

    uint64_t now = now_ns();
    if (opt.mode == M_HANDSHAKE) {
        for (int i = 0; i < w->nclients; i++) w->clients[i].next_ns = now;
    } else if (opt.mode == M_HOLD) { /* spread the sessions' requests over the interval */
        for (int i = 0; i < w->nclients; i++)
            w->clients[i].next_ns = now + (uint64_t)(rand() % opt.interval_ms) * 1000000ull;
    } else {
        for (int i = 0; i < w->nclients; i++)
            if (w->clients[i].state == S_READY) start_request(w, &w->clients[i], now);
    }
    while (!atomic_load(&stop_flag) && now_ns() < phase_deadline_ns) loop_once(w, 1, &last_scan);
    atomic_store(&stop_flag, 1);
    pthread_barrier_wait(&barrier); /* measured phase over */
    pthread_barrier_wait(&barrier); /* main took its numbers */
    for (int i = 0; i < w->nclients; i++) close_client(w, &w->clients[i], 1);
    return NULL;
}

/* ------------------------------------------------------------------ storm mode */

/* The change: the first registered client of worker 0 PUTs the payload of this round. */
static void send_change(struct worker *w, uint64_t now) {
    for (int i = 0; i < w->nclients; i++) {
        struct client *c = &w->clients[i];
        if (c->obs_state == OBS_REGISTERED && c->state == S_READY) {
            start_storm_request(w, c, K_CHANGE, now);
            return;
        }
    }
}

static void *storm_worker(void *arg) {
    struct worker *w = arg;
    uint64_t last_scan = 0;
    int seen = P_SETUP;
    uint64_t t0 = now_ns();
    for (int i = 0; i < w->nclients; i++) w->clients[i].next_ns = t0;
    while (!atomic_load(&stop_flag)) {
        int phase = atomic_load(&storm_phase);
        if (phase == P_DONE) break;
        if (phase != seen) {
            uint64_t now = now_ns();
            if (phase == P_STORM) { /* the server is back: everyone at once, on a new socket */
                for (int i = 0; i < w->nclients; i++) {
                    struct client *c = &w->clients[i];
                    close_client(w, c, 0);
                    c->answered = c->settled = 0;
                    c->obs_state = OBS_NONE;
                    c->hs_retx = c->req_retx = 0;
                    c->next_ns = now;
                }
                for (int i = 0; i < w->nclients; i++) start_connect(w, &w->clients[i], now);
            }
            if ((phase == P_BASELINE || phase == P_CHANGE) && w->id == 0) send_change(w, now);
            seen = phase;
        }
        loop_once(w, 1, &last_scan);
    }
    for (int i = 0; i < w->nclients; i++) close_client(w, &w->clients[i], 1);
    return NULL;
}

/* Wait (bounded) until `counter` reaches `goal`. */
static void wait_for(atomic_int *counter, int goal, double seconds) {
    uint64_t deadline = now_ns() + (uint64_t)(seconds * 1e9);
    while (atomic_load(counter) < goal && now_ns() < deadline && !atomic_load(&stop_flag)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static int run_storm(struct client *all) {
    signal(SIGUSR1, on_go);
    double cpu0 = cpu_s();
    uint64_t t0 = now_ns();
    for (int t = 0; t < opt.threads; t++)
        pthread_create(&workers[t].thread, NULL, storm_worker, &workers[t]);
    wait_for(&n_settled, opt.clients, opt.setup_timeout_s);
    int setup_answered = atomic_load(&n_answered), setup_registered = atomic_load(&n_registered);
    int setup_declined = atomic_load(&n_declined);
    double setup_s = (now_ns() - t0) / 1e9;
    atomic_store(&change_round, 1);
    atomic_store(&storm_phase, P_BASELINE);
    wait_for(&n_notified, setup_registered, opt.notify_wait_ms / 1000.0);
    int setup_notified = atomic_load(&n_notified);
    atomic_store(&storm_phase, P_WAIT);
    fprintf(stderr, "loadgen: ready sessions=%d registered=%d notified=%d\n", setup_answered,
            setup_registered, setup_notified);
    uint64_t wait_deadline = now_ns() + (uint64_t)(opt.storm_wait_s * 1e9);
    while (!atomic_load(&go_flag) && !atomic_load(&stop_flag) && now_ns() < wait_deadline) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    int go = atomic_load(&go_flag);
    double cpu1 = cpu_s();
    for (int t = 0; t < opt.threads; t++) { /* what happened while waiting is not the storm's */
        struct worker *w = &workers[t];
        w->errors = w->timeouts = w->failed = w->strays = w->drops = w->hs_ok = w->hs_fail = 0;
        memset(w->codes, 0, sizeof w->codes);
    }
    atomic_store(&n_answered, 0);
    atomic_store(&n_registered, 0);
    atomic_store(&n_declined, 0);
    atomic_store(&n_settled, 0);
    atomic_store(&n_notified, 0);
    storm_start_ns = now_ns();
    double storm_s = 0, notify_s = 0;
    int storm_registered = 0;
    if (go) {
        atomic_store(&storm_phase, P_STORM);
        fprintf(stderr, "loadgen: storm\n");
        wait_for(&n_settled, opt.clients, opt.duration_s);
        storm_s = (now_ns() - storm_start_ns) / 1e9;
        storm_registered = atomic_load(&n_registered);
        uint64_t change_ns = now_ns();
        atomic_store(&change_round, 2);
        atomic_store(&storm_phase, P_CHANGE);
        wait_for(&n_notified, storm_registered, opt.notify_wait_ms / 1000.0);
        notify_s = (now_ns() - change_ns) / 1e9;
    }
    double cpu2 = cpu_s();
    atomic_store(&storm_phase, P_DONE);
    fprintf(stderr, "loadgen: done\n");
    for (int t = 0; t < opt.threads; t++) pthread_join(workers[t].thread, NULL);

    long errors = 0, timeouts = 0, failed = 0, drops = 0, hs_ok = 0, hs_fail = 0, codes[256] = {0};
    for (int t = 0; t < opt.threads; t++) {
        struct worker *w = &workers[t];
        errors += w->errors;
        timeouts += w->timeouts;
        failed += w->failed;
        drops += w->drops;
        hs_ok += w->hs_ok;
        hs_fail += w->hs_fail;
        for (int k = 0; k < 256; k++) codes[k] += w->codes[k];
    }
    uint32_t *lat = malloc((opt.clients ? opt.clients : 1) * sizeof *lat);
    long answered = 0, retx_clients = 0, hs_retx = 0, req_retx = 0;
    for (int i = 0; i < opt.clients; i++) {
        struct client *c = &all[i];
        if (c->answered) lat[answered++] = (uint32_t)((c->answered_ns - storm_start_ns) / 1000);
        if (c->hs_retx || c->req_retx) retx_clients++;
        hs_retx += c->hs_retx;
        req_retx += c->req_retx;
    }
    qsort(lat, answered, sizeof *lat, cmp_u32);
    double sum = 0;
    for (long i = 0; i < answered; i++) sum += lat[i];
    printf("{\"mode\": \"storm\", \"clients\": %d, \"threads\": %d, ", opt.clients, opt.threads);
    printf("\"setup\": {\"answered\": %d, \"registered\": %d, \"declined\": %d, "
           "\"notified\": %d, \"elapsed_s\": %.3f}, ",
           setup_answered, setup_registered, setup_declined, setup_notified, setup_s);
    printf("\"go\": %s, \"answered\": %ld, \"unanswered\": %ld, ", go ? "true" : "false",
           answered, opt.clients - answered);
    printf("\"all_answered_ms\": %.3f, ",
           answered == opt.clients && answered ? lat[answered - 1] / 1000.0 : -1.0);
    printf("\"reconnect_ms\": {\"n\": %ld, \"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, "
           "\"p99\": %.3f, \"max\": %.3f}, ",
           answered, answered ? sum / answered / 1000.0 : -1.0, pct(lat, answered, 50),
           pct(lat, answered, 90), pct(lat, answered, 99),
           answered ? lat[answered - 1] / 1000.0 : -1.0);
    printf("\"registered\": %d, \"declined\": %d, \"notified\": %d, ", storm_registered,
           atomic_load(&n_declined), atomic_load(&n_notified));
    printf("\"settled_s\": %.4f, \"notify_s\": %.4f, ", storm_s, notify_s);
    printf("\"clients_retransmitting\": %ld, \"handshake_retransmissions\": %ld, "
           "\"request_retransmissions\": %ld, ",
           retx_clients, hs_retx, req_retx);
    printf("\"errors\": %ld, \"timeouts\": %ld, \"failed\": %ld, \"drops\": %ld, "
           "\"handshakes_ok\": %ld, \"handshake_failures\": %ld, ",
           errors, timeouts, failed, drops, hs_ok, hs_fail);
    printf("\"setup_cpu_s\": %.4f, \"cpu_s\": %.4f, \"codes\": {", cpu1 - cpu0, cpu2 - cpu1);
    int first = 1;
    for (int k = 0; k < 256; k++) {
        if (!codes[k]) continue;
        printf("%s\"%d.%02d\": %ld", first ? "" : ", ", k >> 5, k & 31, codes[k]);
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
    free(lat);
    return 0;
}

/* ------------------------------------------------------------------ echo server mode */

static void *echo_main(void *arg) {
    int fd = *(int *)arg;
    unsigned char buf[2048];
    uint64_t deadline = now_ns() + (uint64_t)(opt.duration_s * 1e9);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (!atomic_load(&stop_flag) && now_ns() < deadline) {
        struct sockaddr_storage from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n < 0) continue;
        sendto(fd, buf, n, 0, (struct sockaddr *)&from, len);
        atomic_fetch_add(&total_done, 1);
    }
    return NULL;
}

static int run_echo(void) {
    int fd = socket(server_addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int size = 4 * 1024 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    if (fd < 0 || bind(fd, (struct sockaddr *)&server_addr, server_addr_len) < 0)
        die("echo: cannot bind %s:%d: %s", opt.host, opt.port, strerror(errno));
    fprintf(stderr, "loadgen: ready\n");
    pthread_t t[MAX_THREADS];
    for (int i = 0; i < opt.threads; i++) pthread_create(&t[i], NULL, echo_main, &fd);
    for (int i = 0; i < opt.threads; i++) pthread_join(t[i], NULL);
    printf("{\"mode\": \"echo\", \"echoed\": %ld}\n", atomic_load(&total_done));
    close(fd);
    return 0;
}

/* ------------------------------------------------------------------ results */

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const uint32_t *v, long n, double p) {
    if (n == 0) return -1;
    long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    if (i >= n) i = n - 1;
    return v[i] / 1000.0;
}

static void print_latency(const char *name, int with_gap) {
    long n = 0;
    for (int t = 0; t < opt.threads; t++)
        n += with_gap ? workers[t].samples.n : workers[t].hs_samples.n;
    uint32_t *v = malloc((n ? n : 1) * sizeof *v);
    long k = 0;
    double sum = 0;
    for (int t = 0; t < opt.threads; t++) {
        struct samples *s = with_gap ? &workers[t].samples : &workers[t].hs_samples;
        memcpy(v + k, s->lat_us, s->n * sizeof *v);
        k += s->n;
    }
    for (long i = 0; i < n; i++) sum += v[i];
    qsort(v, n, sizeof *v, cmp_u32);
    printf("\"%s\": {\"n\": %ld, \"mean\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
           "\"max\": %.3f}",
           name, n, n ? sum / n / 1000.0 : -1.0, pct(v, n, 50), pct(v, n, 90), pct(v, n, 99),
           n ? v[n - 1] / 1000.0 : -1.0);
    free(v);
}

/* Longest time between two consecutive completions (over all threads): a pause. */
static double max_gap_ms(void) {
    long idx[MAX_THREADS] = {0};
    long prev = -1;
    uint32_t gap = 0;
    for (;;) {
        int best = -1;
        for (int t = 0; t < opt.threads; t++) {
            struct samples *s = &workers[t].samples;
            if (idx[t] < s->n && (best < 0 || s->done_us[idx[t]] < workers[best].samples.done_us[idx[best]]))
                best = t;
        }
        if (best < 0) break;
        uint32_t at = workers[best].samples.done_us[idx[best]++];
        if (prev >= 0 && at - (uint32_t)prev > gap) gap = at - (uint32_t)prev;
        prev = at;
    }
    return gap / 1000.0;
}

/* ------------------------------------------------------------------ arguments */

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int parse_hex(const char *s, unsigned char *out, int max) {
    int n = (int)strlen(s);
    if (n % 2 || n / 2 > max) return -1;
    for (int i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return n / 2;
}

static void usage(void) {
    fputs("usage: loadgen coap|udp|handshake|hold|echo|storm [options]\n"
          "  --host H --port P            server (default 127.0.0.1:5684)\n"
          "  --identity ID                PSK identity\n"
          "  --key TEXT | --key-hex HEX   PSK\n"
          "  --creds FILE                 lines 'identity hexkey'; client i uses line i mod n\n"
          "  --clients N --threads T      concurrent clients, worker threads\n"
          "  --duration S --count C       measured phase: seconds, and/or completed requests\n"
          "  --timeout-ms T --retries R   retransmit after T ms (doubling), R times\n"
          "  --path a/b --method get|post|put --payload-hex HEX --content-format N\n"
          "  --request                    handshake mode: one request per session\n"
          "  --interval-ms I              hold mode: one request per session every I ms\n"
          "  --ramp N                     most handshakes in flight while setting up\n"
          "  --handshake-timeout-ms T --hs-timer-ms T\n"
          "  --wait-ready S               keep retrying the first handshake for S seconds\n"
          "  --setup-timeout S            give up setting up sessions after S seconds\n"
          "  --cipher LIST                OpenSSL cipher list (default PSK-AES128-CCM8)\n"
          "  --source-port-base B --source-ports K   bind clients to ports B..B+K-1, cycling\n"
          "  --no-close-notify            end sessions without close_notify (just drop them)\n"
          "  --query-per-client           add Uri-Query c=N (N: the client index) to each request\n"
          "  storm: --change-hex A,B      payloads of the change PUTs before / after the storm\n"
          "         --change-format N     their Content-Format (default 60, CBOR)\n"
          "         --notify-wait-ms T    wait at most T ms for a change's notifications\n"
          "         --storm-wait S        wait at most S s for SIGUSR1 (the server is back)\n"
          "         --duration S          the storm: at most S s for every client to settle\n",
          stderr);
    exit(2);
}

static void read_creds(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read %s: %s", path, strerror(errno));
    char line[512], id[256], hex[256];
    while (fgets(line, sizeof line, f) && ncreds < MAX_CREDS) {
        if (sscanf(line, "%255s %255s", id, hex) != 2) continue;
        if (strlen(id) >= sizeof creds[0].identity) die("identity too long in %s", path);
        strcpy(creds[ncreds].identity, id);
        int k = parse_hex(hex, creds[ncreds].key, sizeof creds[0].key);
        if (k <= 0) die("bad hex key in %s", path);
        creds[ncreds].key_len = (unsigned int)k;
        ncreds++;
    }
    fclose(f);
    if (ncreds == 0) die("no credentials in %s", path);
}

static void parse_args(int argc, char **argv) {
    if (argc < 2) usage();
    const char *m = argv[1];
    if (!strcmp(m, "coap")) opt.mode = M_COAP;
    else if (!strcmp(m, "udp")) opt.mode = M_UDP;
    else if (!strcmp(m, "handshake")) opt.mode = M_HANDSHAKE;
    else if (!strcmp(m, "hold")) opt.mode = M_HOLD;
    else if (!strcmp(m, "echo")) opt.mode = M_ECHO;
    else if (!strcmp(m, "storm")) opt.mode = M_STORM;
    else usage();
    static char path_buf[512] = "light";
    const char *identity = NULL, *key = NULL, *key_hex = NULL, *creds_file = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
#define ARG() (i + 1 < argc ? argv[++i] : (usage(), ""))
        if (!strcmp(a, "--host")) opt.host = ARG();
        else if (!strcmp(a, "--port")) opt.port = atoi(ARG());
        else if (!strcmp(a, "--identity")) identity = ARG();
        else if (!strcmp(a, "--key")) key = ARG();
        else if (!strcmp(a, "--key-hex")) key_hex = ARG();
        else if (!strcmp(a, "--creds")) creds_file = ARG();
        else if (!strcmp(a, "--clients")) opt.clients = atoi(ARG());
        else if (!strcmp(a, "--threads")) opt.threads = atoi(ARG());
        else if (!strcmp(a, "--duration")) opt.duration_s = atof(ARG());
        else if (!strcmp(a, "--count")) opt.count = atol(ARG());
        else if (!strcmp(a, "--timeout-ms")) opt.timeout_ms = atoi(ARG());
        else if (!strcmp(a, "--retries")) opt.retries = atoi(ARG());
        else if (!strcmp(a, "--interval-ms")) opt.interval_ms = atoi(ARG());
        else if (!strcmp(a, "--handshake-timeout-ms")) opt.handshake_timeout_ms = atoi(ARG());
        else if (!strcmp(a, "--hs-timer-ms")) opt.hs_timer_ms = atoi(ARG());
        else if (!strcmp(a, "--ramp")) opt.ramp = atoi(ARG());
        else if (!strcmp(a, "--wait-ready")) opt.wait_ready_s = atof(ARG());
        else if (!strcmp(a, "--setup-timeout")) opt.setup_timeout_s = atof(ARG());
        else if (!strcmp(a, "--cipher")) opt.cipher = ARG();
        else if (!strcmp(a, "--request")) opt.with_request = 1;
        else if (!strcmp(a, "--no-close-notify")) opt.no_close_notify = 1;
        else if (!strcmp(a, "--query-per-client")) opt.query_per_client = 1;
        else if (!strcmp(a, "--source-port-base")) opt.source_port_base = atoi(ARG());
        else if (!strcmp(a, "--source-ports")) opt.source_ports = atoi(ARG());
        else if (!strcmp(a, "--max-samples")) opt.max_samples = atol(ARG());
        else if (!strcmp(a, "--content-format")) opt.content_format = atoi(ARG());
        else if (!strcmp(a, "--path")) snprintf(path_buf, sizeof path_buf, "%s", ARG());
        else if (!strcmp(a, "--method")) {
            const char *v = ARG();
            opt.method = !strcmp(v, "get") ? 1 : !strcmp(v, "post") ? 2 : !strcmp(v, "put") ? 3 : 0;
            if (!opt.method) usage();
        } else if (!strcmp(a, "--change-hex")) {
            char buf[2 * MAX_PAYLOAD + 2];
            snprintf(buf, sizeof buf, "%s", ARG());
            char *comma = strchr(buf, ',');
            if (!comma) die("--change-hex wants two payloads: A,B");
            *comma = 0;
            opt.change_len[0] = parse_hex(buf, opt.change[0], MAX_PAYLOAD);
            opt.change_len[1] = parse_hex(comma + 1, opt.change[1], MAX_PAYLOAD);
            if (opt.change_len[0] < 0 || opt.change_len[1] < 0) die("bad --change-hex");
        } else if (!strcmp(a, "--change-format")) opt.change_format = atoi(ARG());
        else if (!strcmp(a, "--notify-wait-ms")) opt.notify_wait_ms = atoi(ARG());
        else if (!strcmp(a, "--storm-wait")) opt.storm_wait_s = atof(ARG());
        else if (!strcmp(a, "--payload-hex")) {
            opt.payload_len = parse_hex(ARG(), opt.payload, MAX_PAYLOAD);
            if (opt.payload_len < 0) die("bad --payload-hex");
        } else usage();
#undef ARG
    }
    char *save = NULL;
    for (char *seg = strtok_r(path_buf, "/", &save); seg && opt.nsegments < MAX_PATH_SEGMENTS;
         seg = strtok_r(NULL, "/", &save))
        opt.segments[opt.nsegments++] = seg;
    if (opt.clients < 1 || opt.clients > 100000) die("--clients must be 1..100000");
    if (opt.threads < 1 || opt.threads > MAX_THREADS) die("--threads must be 1..%d", MAX_THREADS);
    if (opt.threads > opt.clients && opt.mode != M_ECHO) opt.threads = opt.clients;
    if (opt.duration_s <= 0 || opt.duration_s > 3600) die("--duration must be in (0, 3600]");
    if (opt.interval_ms < 1) die("--interval-ms must be at least 1");
    if (creds_file) read_creds(creds_file);
    else if (identity && (key || key_hex)) {
        if (strlen(identity) >= sizeof creds[0].identity) die("identity too long");
        strcpy(creds[0].identity, identity);
        if (key) {
            if (strlen(key) > sizeof creds[0].key) die("key too long");
            memcpy(creds[0].key, key, strlen(key));
            creds[0].key_len = (unsigned int)strlen(key);
        } else {
            int k = parse_hex(key_hex, creds[0].key, sizeof creds[0].key);
            if (k <= 0) die("bad --key-hex");
            creds[0].key_len = (unsigned int)k;
        }
        ncreds = 1;
    } else if (opt.mode != M_UDP && opt.mode != M_ECHO) {
        die("give --identity and --key/--key-hex, or --creds");
    }
}

static void resolve(void) {
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICHOST};
    struct addrinfo *res;
    char port[16];
    snprintf(port, sizeof port, "%d", opt.port);
    if (getaddrinfo(opt.host, port, &hints, &res) != 0)
        die("--host must be a numeric address (loopback), got %s", opt.host);
    memcpy(&server_addr, res->ai_addr, res->ai_addrlen);
    server_addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    resolve();
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_watchdog);
    double setup = opt.wait_ready_s > 0 ? opt.wait_ready_s : opt.setup_timeout_s;
    if (opt.mode == M_STORM) setup += opt.storm_wait_s + 2 * opt.notify_wait_ms / 1000.0;
    alarm((unsigned int)(opt.duration_s + setup + 30));
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (opt.mode == M_ECHO) return run_echo();

    if (opt.mode != M_UDP) {
        ssl_ctx = SSL_CTX_new(DTLS_client_method());
        if (!ssl_ctx) die("SSL_CTX_new failed");
        SSL_CTX_set_min_proto_version(ssl_ctx, DTLS1_2_VERSION);
        SSL_CTX_set_max_proto_version(ssl_ctx, DTLS1_2_VERSION);
        SSL_CTX_set_security_level(ssl_ctx, 0); /* CCM8 (64-bit tags) needs level 0 */
        SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_TICKET | SSL_OP_NO_QUERY_MTU);
        SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);
        if (SSL_CTX_set_cipher_list(ssl_ctx, opt.cipher) != 1)
            die("OpenSSL refuses the cipher list %s", opt.cipher);
        SSL_CTX_set_psk_client_callback(ssl_ctx, psk_cb);
    }

    srand((unsigned int)getpid());
    struct client *all = calloc(opt.clients, sizeof *all);
    if (!all) die("out of memory");
    for (int t = 0; t < opt.threads; t++) {
        struct worker *w = &workers[t];
        w->id = t;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->clients = all + (long)opt.clients * t / opt.threads;
        w->nclients = (int)((long)opt.clients * (t + 1) / opt.threads - (long)opt.clients * t / opt.threads);
        w->ramp_limit = opt.ramp / opt.threads > 0 ? opt.ramp / opt.threads : 1;
    }
    for (int i = 0; i < opt.clients; i++) {
        all[i].idx = i;
        all[i].fd = -1;
        all[i].state = S_IDLE;
        all[i].mid = (uint16_t)rand();
        all[i].cred = ncreds ? &creds[i % ncreds] : NULL;
    }
    if (opt.mode == M_STORM) return run_storm(all);
    pthread_barrier_init(&barrier, NULL, opt.threads + 1);
    for (int t = 0; t < opt.threads; t++) pthread_create(&workers[t].thread, NULL, worker_main, &workers[t]);

    pthread_barrier_wait(&barrier); /* set up */
    int sessions = 0;
    long hs_fail_setup = 0;
    for (int t = 0; t < opt.threads; t++) {
        sessions += workers[t].connected;
        hs_fail_setup += workers[t].hs_fail;
    }
    fprintf(stderr, "loadgen: ready sessions=%d\n", sessions);
    double cpu0 = cpu_s();
    phase_start_ns = now_ns();
    phase_deadline_ns = phase_start_ns + (uint64_t)(opt.duration_s * 1e9);
    atomic_store(&measuring, 1);
    pthread_barrier_wait(&barrier); /* go */
    pthread_barrier_wait(&barrier); /* measured phase over */
    uint64_t phase_end = now_ns();
    atomic_store(&measuring, 0);
    double cpu1 = cpu_s();
    fprintf(stderr, "loadgen: done\n");
    pthread_barrier_wait(&barrier);
    for (int t = 0; t < opt.threads; t++) pthread_join(workers[t].thread, NULL);

    long errors = 0, timeouts = 0, failed = 0, strays = 0, drops = 0, hs_ok = 0, hs_fail = 0,
         sock_err = 0, codes[256] = {0};
    long min_resp = -1, unserved = 0;
    for (int t = 0; t < opt.threads; t++) {
        struct worker *w = &workers[t];
        errors += w->errors;
        timeouts += w->timeouts;
        failed += w->failed;
        strays += w->strays;
        drops += w->drops;
        hs_ok += w->hs_ok;
        hs_fail += w->hs_fail;
        sock_err += w->socket_errors;
        for (int k = 0; k < 256; k++) codes[k] += w->codes[k];
    }
    for (int i = 0; i < opt.clients; i++) {
        if (min_resp < 0 || all[i].responses < min_resp) min_resp = all[i].responses;
        if (all[i].responses == 0) unserved++;
    }
    double elapsed = (phase_end - phase_start_ns) / 1e9;
    long done = atomic_load(&total_done);
    static const char *names[] = {"coap", "udp", "handshake", "hold", "echo", "storm"};
    printf("{\"mode\": \"%s\", \"clients\": %d, \"threads\": %d, \"sessions\": %d, ",
           names[opt.mode], opt.clients, opt.threads, sessions);
    printf("\"count\": %ld, \"elapsed_s\": %.4f, \"rate\": %.1f, ", done, elapsed,
           elapsed > 0 ? done / elapsed : 0.0);
    printf("\"errors\": %ld, \"timeouts\": %ld, \"failed\": %ld, \"strays\": %ld, \"drops\": %ld, "
           "\"socket_errors\": %ld, ",
           errors, timeouts, failed, strays, drops, sock_err);
    printf("\"handshakes_ok\": %ld, \"handshake_failures\": %ld, \"setup_handshake_failures\": %ld, ",
           hs_ok, hs_fail, hs_fail_setup);
    print_latency("latency_ms", 1);
    printf(", ");
    print_latency("handshake_ms", 0);
    printf(", \"max_gap_ms\": %.3f, ", max_gap_ms());
    printf("\"min_responses_per_session\": %ld, \"sessions_unserved\": %ld, ", min_resp, unserved);
    printf("\"first_response_unix\": %.6f, ", atomic_load(&first_response_us) / 1e6);
    printf("\"cpu_s\": %.4f, \"cpu_share\": %.3f, ", cpu1 - cpu0,
           elapsed > 0 ? (cpu1 - cpu0) / elapsed : 0.0);
    printf("\"codes\": {");
    int first = 1;
    for (int k = 0; k < 256; k++) {
        if (!codes[k]) continue;
        printf("%s\"%d.%02d\": %ld", first ? "" : ", ", k >> 5, k & 31, codes[k]);
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
    for (int t = 0; t < opt.threads; t++) {
        close(workers[t].epfd);
        free(workers[t].samples.lat_us);
        free(workers[t].samples.done_us);
        free(workers[t].hs_samples.lat_us);
        free(workers[t].hs_samples.done_us);
    }
    free(all);
    SSL_CTX_free(ssl_ctx);
    return 0;
}
