/* A service for the attach tests, started without the preload. It runs:
 * - 4 threads that churn: every block is filled with a pattern and checked before it is freed
 *   (a corrupted block counts in "bad");
 * - threads blocked in epoll_wait, nanosleep, read on a pipe, accept and a condition variable
 *   (a wait that fails with EINTR counts in "eintr": a stop must not surface);
 * - the main thread, which waits for commands on stdin in the way argv[1] says (read, epoll,
 *   poll, sleep) and answers each on stdout:
 *     leak N        leak N entries of 128 bytes into a global list (remember_request)
 *     dlopen PATH   load a library
 *     plugin N      call plugin_leak(N) in it
 *     fork          fork a child that leaks 7 entries and exits
 *     quit          stop everything, print one JSON line, exit 0 if nothing went wrong
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct entry {
    struct entry *next;
    char payload[120];
};

static struct entry *requests;
static long leaked;
static volatile int stopping;
static long bad, eintr;
static pthread_mutex_t counts = PTHREAD_MUTEX_INITIALIZER;
static int wake_pipe[2];
static int listener;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

static void count(long *what) {
    pthread_mutex_lock(&counts);
    (*what)++;
    pthread_mutex_unlock(&counts);
}

__attribute__((noinline)) void remember_request(int i) {
    struct entry *e = malloc(sizeof *e);
    snprintf(e->payload, sizeof e->payload, "request %d", i);
    e->next = requests;
    requests = e;
}

static void *churn(void *arg) {
    long id = (long)arg;
    while (!stopping) {
        unsigned char *blocks[32];
        size_t sizes[32];
        for (int i = 0; i < 32; i++) {
            sizes[i] = 16 + (size_t)((i * 131 + id * 17) % 2000);
            blocks[i] = malloc(sizes[i]);
            memset(blocks[i], (int)((id * 31 + i) & 0xff), sizes[i]);
        }
        for (int i = 0; i < 32; i++) {
            for (size_t k = 0; k < sizes[i]; k++) {
                if (blocks[i][k] != (unsigned char)((id * 31 + i) & 0xff)) {
                    count(&bad);
                    break;
                }
            }
            free(blocks[i]);
        }
    }
    return NULL;
}

static void *in_epoll(void *arg) {
    (void)arg;
    int ep = epoll_create1(0);
    struct epoll_event ev;
    while (!stopping)
        if (epoll_wait(ep, &ev, 1, 300) < 0 && errno == EINTR) count(&eintr);
    close(ep);
    return NULL;
}

static void *in_nanosleep(void *arg) {
    (void)arg;
    while (!stopping) {
        struct timespec ts = {0, 200 * 1000 * 1000};
        if (nanosleep(&ts, NULL) < 0 && errno == EINTR) count(&eintr);
    }
    return NULL;
}

static void *in_read(void *arg) {
    (void)arg;
    char c;
    while (!stopping) {
        ssize_t n = read(wake_pipe[0], &c, 1);
        if (n < 0 && errno == EINTR) count(&eintr);
    }
    return NULL;
}

static void *in_accept(void *arg) {
    (void)arg;
    while (!stopping) {
        int fd = accept(listener, NULL, NULL);
        if (fd >= 0) close(fd);
        else if (errno == EINTR) count(&eintr);
    }
    return NULL;
}

static void *in_cond(void *arg) {
    (void)arg;
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&m);
    while (!stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        int rc = pthread_cond_timedwait(&never, &m, &until);
        if (rc == EINTR) count(&eintr);
    }
    pthread_mutex_unlock(&m);
    return NULL;
}

/* Wait until stdin has a line, in the way `mode` says; EINTR counts. */
static void wait_for_input(const char *mode) {
    if (strcmp(mode, "epoll") == 0) {
        static int ep = -1;
        if (ep < 0) {
            ep = epoll_create1(0);
            struct epoll_event ev = {.events = EPOLLIN};
            epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
        }
        struct epoll_event ev;
        for (;;) {
            int n = epoll_wait(ep, &ev, 1, -1);
            if (n > 0) return;
            if (n < 0 && errno == EINTR) count(&eintr);
        }
    } else if (strcmp(mode, "poll") == 0) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        for (;;) {
            int n = poll(&p, 1, -1);
            if (n > 0) return;
            if (n < 0 && errno == EINTR) count(&eintr);
        }
    } else if (strcmp(mode, "sleep") == 0) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        while (poll(&p, 1, 0) == 0) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            if (nanosleep(&ts, NULL) < 0 && errno == EINTR) count(&eintr);
        }
    }
    /* "read": fgets blocks in read(0) itself. */
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "read";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(wake_pipe) != 0) return 3;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 4) != 0) return 3;
    pthread_t threads[9];
    int n = 0;
    for (long i = 0; i < 4; i++) pthread_create(&threads[n++], NULL, churn, (void *)i);
    pthread_create(&threads[n++], NULL, in_epoll, NULL);
    pthread_create(&threads[n++], NULL, in_nanosleep, NULL);
    pthread_create(&threads[n++], NULL, in_read, NULL);
    pthread_create(&threads[n++], NULL, in_accept, NULL);
    pthread_create(&threads[n++], NULL, in_cond, NULL);
    printf("ready %d\n", getpid());

    void *plugin = NULL;
    char line[4096];
    for (;;) {
        wait_for_input(mode);
        if (!fgets(line, sizeof line, stdin)) {
            if (ferror(stdin) && errno == EINTR) {
                count(&eintr);
                clearerr(stdin);
                continue;
            }
            break;
        }
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "leak ", 5) == 0) {
            int k = atoi(line + 5);
            for (int i = 0; i < k; i++) remember_request(i);
            leaked += k;
            printf("leaked %d\n", k);
        } else if (strncmp(line, "dlopen ", 7) == 0) {
            plugin = dlopen(line + 7, RTLD_NOW);
            printf("dlopen %s\n", plugin ? "ok" : dlerror());
        } else if (strncmp(line, "plugin ", 7) == 0) {
            int (*leak)(int) = plugin ? (int (*)(int))dlsym(plugin, "plugin_leak") : NULL;
            printf("plugin %d\n", leak ? leak(atoi(line + 7)) : -1);
        } else if (strcmp(line, "fork") == 0) {
            pid_t child = fork();
            if (child == 0) {
                for (int i = 0; i < 7; i++) remember_request(i);
                _exit(0);
            }
            int status = 0;
            waitpid(child, &status, 0);
            printf("forked %d %d\n", child, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        } else if (strcmp(line, "quit") == 0) {
            break;
        }
    }
    stopping = 1;
    if (write(wake_pipe[1], "x", 1) != 1) return 3;
    shutdown(listener, SHUT_RDWR);
    for (int i = 0; i < n; i++) pthread_join(threads[i], NULL);
    printf("{\"leaked\":%ld,\"bad\":%ld,\"eintr\":%ld}\n", leaked, bad, eintr);
    return bad || eintr ? 1 : 0;
}
