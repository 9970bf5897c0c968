/* The sending half of bench.loadgen, in C: epoll over one keep-alive connection per client.

   bench.loadgen builds and signs the requests, then runs this when a C compiler is at hand. A Python
   client loop costs about a third of what hello-world's server spends per request, and on services it
   runs on the core that PostgreSQL, Redis and the writer process need: the instrument took CPU from
   the system it measured. This one costs a few microseconds per request.

   loadgen HOST PORT WARMUP_S SECONDS REQUESTS LATENCIES ERRORS
     REQUESTS   u32 clients, then per client: u32 count, then count x (u32 length, bytes); little-endian
     LATENCIES  written: one u32 per measured request, its latency in microseconds
     ERRORS     written: one line per measured answer that is not a 200, "STATUS BODY"
   Prints "measuring" when the measured phase starts, "done" when every client has stopped, then
   "SENT EXHAUSTED CPU_SECONDS" (answers read, clients that ran out of requests, CPU of the measured
   phase). Each client sends its next request when the previous answer has been read, until the clock
   passes the end; a request is measured when it left after the start and its answer came before the end.
*/
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFFER 65536
#define GRACE_S 30 /* a server that has not answered this long after the end fails the run */

typedef struct {
    int fd;
    uint32_t count, next, sent_bytes;
    char **requests;
    uint32_t *lengths;
    char buffer[BUFFER];
    size_t filled;
    double started;
    int active;
} Client;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static void fail(const char *what) {
    perror(what);
    exit(1);
}

static uint32_t read_u32(FILE *f) {
    unsigned char b[4];
    if (fread(b, 1, 4, f) != 4) fail("requests file");
    return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

static Client *load_requests(const char *path, uint32_t *clients) {
    FILE *f = fopen(path, "rb");
    if (!f) fail(path);
    *clients = read_u32(f);
    Client *all = calloc(*clients, sizeof(Client));
    for (uint32_t c = 0; c < *clients; c++) {
        Client *client = &all[c];
        client->count = read_u32(f);
        client->requests = calloc(client->count, sizeof(char *));
        client->lengths = calloc(client->count, sizeof(uint32_t));
        for (uint32_t i = 0; i < client->count; i++) {
            client->lengths[i] = read_u32(f);
            client->requests[i] = malloc(client->lengths[i]);
            if (fread(client->requests[i], 1, client->lengths[i], f) != client->lengths[i]) fail("requests file");
        }
    }
    fclose(f);
    return all;
}

static int connect_to(const char *host, int port) {
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1) fail("host (an IPv4 address)");
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) < 0) fail("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Writes what is left of the current request; 1 when all of it is out. */
static int send_rest(Client *client) {
    uint32_t length = client->lengths[client->next];
    while (client->sent_bytes < length) {
        ssize_t n = write(client->fd, client->requests[client->next] + client->sent_bytes, length - client->sent_bytes);
        if (n < 0 && errno == EAGAIN) return 0;
        if (n < 0) fail("write");
        client->sent_bytes += n;
    }
    return 1;
}

/* Starts the client's next request, or stops it: out of requests, or past the end. */
static void send_next(Client *client, int epoll, double until, uint32_t *exhausted) {
    if (client->next == client->count) {
        (*exhausted)++;
        client->active = 0;
        return;
    }
    client->started = now();
    if (client->started >= until) {
        client->active = 0;
        return;
    }
    client->sent_bytes = 0;
    if (!send_rest(client)) {
        struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = client};
        epoll_ctl(epoll, EPOLL_CTL_MOD, client->fd, &e);
    }
}

/* The length of a complete answer at the start of the buffer, or 0 while it is incomplete. */
static size_t complete_answer(Client *client, size_t *head_length, size_t *body_length) {
    char *end = memmem(client->buffer, client->filled, "\r\n\r\n", 4);
    if (!end) return 0;
    *head_length = end + 4 - client->buffer;
    *body_length = 0;
    for (char *line = client->buffer; line && line < end; line = memmem(line, end - line, "\r\n", 2)) {
        line += 2;
        if (strncasecmp(line, "content-length:", 15) == 0) *body_length = strtoul(line + 15, NULL, 10);
    }
    size_t total = *head_length + *body_length;
    if (total > BUFFER) {
        fprintf(stderr, "an answer of %zu bytes is over the buffer\n", total);
        exit(1);
    }
    return client->filled >= total ? total : 0;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: loadgen HOST PORT WARMUP_S SECONDS REQUESTS LATENCIES ERRORS\n");
        return 2;
    }
    uint32_t clients, exhausted = 0, sent = 0;
    Client *all = load_requests(argv[5], &clients);
    FILE *latencies = fopen(argv[6], "wb"), *errors = fopen(argv[7], "w");
    if (!latencies || !errors) fail("output files");
    int epoll = epoll_create1(0), active = clients;
    for (uint32_t c = 0; c < clients; c++) {
        all[c].fd = connect_to(argv[1], atoi(argv[2]));
        all[c].active = 1;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &all[c]};
        epoll_ctl(epoll, EPOLL_CTL_ADD, all[c].fd, &e);
    }
    double start = now(), measure_from = start + atof(argv[3]), until = measure_from + atof(argv[4]);
    double cpu_at_start = -1;
    for (uint32_t c = 0; c < clients; c++) {
        send_next(&all[c], epoll, until, &exhausted);
        if (!all[c].active) active--;
    }
    struct epoll_event events[256];
    while (active > 0) {
        int timeout = cpu_at_start < 0 ? (int)((measure_from - now()) * 1000) + 1 : 100;
        int ready = epoll_wait(epoll, events, 256, timeout < 0 ? 0 : timeout);
        if (ready < 0 && errno != EINTR) fail("epoll_wait");
        if (now() > until + GRACE_S) {
            fprintf(stderr, "%d clients still waiting for an answer %d s after the end\n", active, GRACE_S);
            return 1;
        }
        if (cpu_at_start < 0 && now() >= measure_from) {
            cpu_at_start = cpu_seconds();
            printf("measuring\n");
            fflush(stdout);
        }
        for (int i = 0; i < ready; i++) {
            Client *client = events[i].data.ptr;
            if (events[i].events & EPOLLOUT) {
                if (!send_rest(client)) continue;
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = client};
                epoll_ctl(epoll, EPOLL_CTL_MOD, client->fd, &e);
            }
            if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t n = read(client->fd, client->buffer + client->filled, BUFFER - client->filled);
            if (n < 0 && errno == EAGAIN) continue;
            if (n <= 0) {
                fprintf(stderr, "the server closed a connection\n");
                return 1;
            }
            client->filled += n;
            size_t head_length, body_length, total = complete_answer(client, &head_length, &body_length);
            if (!total) continue;
            double finished = now();
            sent++;
            if (client->started >= measure_from && finished <= until) {
                uint32_t micros = (uint32_t)((finished - client->started) * 1e6 + 0.5);
                fwrite(&micros, 4, 1, latencies);
                if (memcmp(client->buffer + 9, "200", 3) != 0)
                    fprintf(errors, "%.3s %.*s\n", client->buffer + 9, (int)body_length, client->buffer + head_length);
            }
            client->filled = 0; /* one request in flight: nothing can follow its answer */
            client->next++;
            send_next(client, epoll, until, &exhausted);
            if (!client->active) {
                active--;
                close(client->fd);
            }
        }
    }
    double cpu = cpu_seconds() - (cpu_at_start < 0 ? 0 : cpu_at_start);
    fclose(latencies);
    fclose(errors);
    printf("done\n%u %u %.6f\n", sent, exhausted, cpu);
    return 0;
}
