/* The ceiling: the fastest manifest-HEAD loop this machine can run, as a reference for digest-audit check.
 *
 * Built by the benchmark at run time (gcc -O2), never shipped. N keep-alive connections on one epoll loop;
 * each sends `HEAD /v2/<repository>/manifests/<tag>` with the same full Accept set as digest-audit, reads the
 * response head, and compares Docker-Content-Digest with the expected digest: the least work a correct checker
 * must do. Plain HTTP only (the bench's loopback registry and latency proxy).
 *
 *   ceiling HOST PORT REFS_FILE CONNECTIONS ROUNDS ACCEPT
 *   REFS_FILE: one `host/repository:tag@sha256:...` per line.
 * Prints {"seconds": [...], "match": N, "drift": N, "other": N} (counts of the last round) on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *path; /* "/v2/<repository>/manifests/<tag>" */
    char *digest;
} ref_t;

typedef struct {
    int fd;
    long current; /* index into refs, -1 when idle */
    char buf[16384];
    size_t have;
    char out[8192];
    size_t out_len;
} conn_t;

static ref_t *refs;
static long nrefs, next_ref, done_refs;
static long matched, drifted, other;
static const char *host_header;
static const char *accept_header;

static void die(const char *what) {
    perror(what);
    exit(2);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void load_refs(const char *file) {
    FILE *in = fopen(file, "r");
    if (!in) die("refs");
    size_t cap = 1024;
    refs = malloc(cap * sizeof *refs);
    char line[2048];
    while (fgets(line, sizeof line, in)) {
        line[strcspn(line, "\r\n")] = 0;
        char *at = strchr(line, '@'), *slash = strchr(line, '/');
        if (!at || !slash) continue;
        *at = 0;
        char *name = slash + 1, *colon = strrchr(name, ':');
        if (!colon) continue;
        *colon = 0;
        if ((size_t)nrefs == cap) refs = realloc(refs, (cap *= 2) * sizeof *refs);
        char path[2048];
        snprintf(path, sizeof path, "/v2/%s/manifests/%s", name, colon + 1);
        refs[nrefs].path = strdup(path);
        refs[nrefs].digest = strdup(at + 1);
        nrefs++;
    }
    fclose(in);
}

static int open_conn(struct sockaddr_in *addr) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)addr, sizeof *addr) < 0) die("connect");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static int start_next(conn_t *c) {
    if (next_ref >= nrefs) {
        c->current = -1;
        return 0;
    }
    c->current = next_ref++;
    c->out_len = (size_t)snprintf(c->out, sizeof c->out,
                                  "HEAD %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench-ceiling-c\r\nAccept: %s\r\n\r\n",
                                  refs[c->current].path, host_header, accept_header);
    c->have = 0;
    /* a few hundred bytes into an idle connection's empty send buffer: one write, never EAGAIN in practice */
    ssize_t n = write(c->fd, c->out, c->out_len);
    if (n != (ssize_t)c->out_len) die("write (short)");
    return 1;
}

static void judge(conn_t *c, const char *head) {
    ref_t *r = &refs[c->current];
    done_refs++;
    if (strncmp(head + 9, "200", 3) != 0) {
        other++;
        return;
    }
    const char *p = strcasestr(head, "\r\ndocker-content-digest:");
    if (!p) {
        other++;
        return;
    }
    p += strlen("\r\ndocker-content-digest:");
    while (*p == ' ') p++;
    size_t len = strcspn(p, "\r\n");
    if (len == strlen(r->digest) && strncmp(p, r->digest, len) == 0)
        matched++;
    else
        drifted++;
}

static double one_round(struct sockaddr_in *addr, int connections) {
    next_ref = done_refs = matched = drifted = other = 0;
    int ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)connections, sizeof *conns);
    double started = now();
    int active = 0;
    for (int i = 0; i < connections; i++) {
        conns[i].fd = open_conn(addr);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
        active += start_next(&conns[i]);
    }
    struct epoll_event events[256];
    while (done_refs < nrefs && active > 0) {
        int n = epoll_wait(ep, events, 256, 30000);
        if (n <= 0) die("epoll_wait (30 s without an answer)");
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            for (;;) {
                ssize_t got = read(c->fd, c->buf + c->have, sizeof c->buf - 1 - c->have);
                if (got < 0 && errno == EAGAIN) break;
                if (got <= 0) die("read (the server closed a keep-alive connection)");
                c->have += (size_t)got;
                c->buf[c->have] = 0;
                char *end = strstr(c->buf, "\r\n\r\n");
                if (!end) continue;
                /* a HEAD answer has no body, whatever its Content-Length says */
                end[2] = 0;
                judge(c, c->buf);
                if (!start_next(c)) {
                    active--;
                    break;
                }
            }
        }
    }
    double seconds = now() - started;
    for (int i = 0; i < connections; i++) close(conns[i].fd);
    close(ep);
    free(conns);
    return seconds;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT REFS_FILE CONNECTIONS ROUNDS ACCEPT\n", argv[0]);
        return 2;
    }
    static char host[512];
    snprintf(host, sizeof host, "%s:%s", argv[1], argv[2]);
    host_header = host;
    accept_header = argv[6];
    load_refs(argv[3]);
    int connections = atoi(argv[4]), rounds = atoi(argv[5]);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) die("HOST must be an IPv4 address");
    printf("{\"seconds\": [");
    for (int r = 0; r < rounds; r++) printf("%s%.6f", r ? ", " : "", one_round(&addr, connections));
    printf("], \"match\": %ld, \"drift\": %ld, \"other\": %ld}\n", matched, drifted, other);
    return 0;
}
