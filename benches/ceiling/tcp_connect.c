/*
 * The box's ceiling for TCP connection setup, with no WebSocket at all: how many loopback
 * connections per second one process opens (non-blocking connect(), epoll until writable)
 * while another accepts them (accept4() until EAGAIN, epoll), each pinned to its own core.
 * Whatever this prints bounds every WebSocket server and client's handshake rate here.
 *
 * With a third argument `exchange`, each connection also carries the two messages of an
 * upgrade: the client writes a fixed 180-byte request once connected, the server reads it
 * and writes a fixed 129-byte 101 answer, the client reads that. Nothing is parsed or
 * hashed: it is the least any WebSocket handshake costs the kernel here.
 *
 *   gcc -O2 -o /tmp/tcp_connect benches/ceiling/tcp_connect.c
 *   /tmp/tcp_connect PORT N [exchange]   (the server runs on CPU 1, the client on CPU 0)
 * Keep N under half of net.ipv4.ip_local_port_range, or connect() itself slows down.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s PORT N [exchange]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]), inflight_max = 1024;
    int exchange = argc == 4 && strcmp(argv[3], "exchange") == 0;
    static char req[180], resp[129], buf[512];
    memset(req, 'q', sizeof req);
    memset(resp, 'r', sizeof resp);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (void *)&a, sizeof a) || listen(l, 4096)) die("listen");
    pid_t server = fork();
    if (server == 0) {
        pin(1);
        int ep = epoll_create1(0), accepted = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, evs[64];
        epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
        int answered = 0;
        while (accepted < n || (exchange && answered < accepted)) {
            int k = epoll_wait(ep, evs, 64, 1000);
            if (k <= 0 && accepted >= n) break;
            for (int i = 0; i < k; i++) {
                int fd = evs[i].data.fd;
                if (fd != l) {
                    /* A request arrived: answer it once. */
                    if (read(fd, buf, sizeof buf) == sizeof req) {
                        if (write(fd, resp, sizeof resp) != sizeof resp) die("write");
                        answered++;
                    }
                    continue;
                }
                for (;;) {
                    int c = accept4(l, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLET, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                    accepted++;
                }
            }
        }
        sleep(2); /* hold until the client has counted */
        _exit(0);
    }
    close(l);
    pin(0);
    int ep = epoll_create1(0), opened = 0, done = 0, inflight = 0;
    struct epoll_event evs[256];
    double t0 = now();
    while (done < n) {
        while (opened < n && inflight < inflight_max) {
            int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (s < 0) die("socket");
            if (connect(s, (void *)&a, sizeof a) && errno != EINPROGRESS) die("connect");
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.fd = s};
            epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
            opened++;
            inflight++;
        }
        int k = epoll_wait(ep, evs, 256, 1000);
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            if (!exchange && (evs[i].events & EPOLLOUT)) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                done++;
                inflight--;
            } else if (exchange && (evs[i].events & EPOLLOUT)) {
                /* Connected: send the request, then wait for the answer. */
                if (write(fd, req, sizeof req) != sizeof req) die("request");
                struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = fd};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            } else if (exchange && (evs[i].events & EPOLLIN)) {
                if (read(fd, buf, sizeof buf) == sizeof resp) {
                    done++;
                    inflight--;
                }
            }
        }
    }
    double dt = now() - t0;
    printf("%d TCP connections %s in %.3f s: %.1fk/s\n", n,
           exchange ? "established, each with a request and an answer" : "established", dt,
           n / dt / 1e3);
    waitpid(server, NULL, 0);
    return 0;
}
