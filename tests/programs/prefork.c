/* Prefork servers (issue 10): nginx, gunicorn, apache, php-fpm, postgres, redis.
 *
 * `prefork workers FLAG`: the master forks 2 workers and prints "workers PID1 PID2" (flushed).
 *     Each worker leaks a 1024-byte block in worker_leak every ~2 ms until the file FLAG exists
 *     (at most 20 s: exit 3), then goes on for 1.5 s more and exits normally (exit(0)). The
 *     master waits for both and prints {"workers": [PID1, PID2], "failed": K}.
 * `prefork late-fork FLAG`: allocates and frees (4 KiB blocks, ~every 2 ms) printing "ready"
 *     (flushed) until the file FLAG exists (at most 20 s: exit 3); then forks a child that leaks
 *     200 blocks of 64 KiB in late_child_leak and exits normally; prints {"child_pid": PID,
 *     "failed": K}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

NOINLINE void worker_leak(void) {
    sink = malloc(1024);
    memset(sink, 5, 1024);
}

NOINLINE void worker_churn(void) {
    for (int i = 0; i < 8; i++) {
        char *p = malloc(4096);
        p[0] = (char)i;
        sink = p;
        free(p);
    }
}

static void worker(const char *flag) {
    double t0 = now_ms();
    while (access(flag, F_OK) != 0) {
        if (now_ms() - t0 > 20000) { fprintf(stderr, "prefork worker: no %s after 20 s\n", flag); exit(3); }
        worker_leak();
        worker_churn();
        usleep(2000);
    }
    double t1 = now_ms();
    while (now_ms() - t1 < 1500) {
        worker_leak();
        worker_churn();
        usleep(2000);
    }
    exit(0);
}

NOINLINE void late_child_leak(void) {
    for (int i = 0; i < 200; i++) { sink = malloc(65536); memset(sink, 6, 65536); }
}

static int wait_ok(pid_t pid) {
    int st = 0;
    if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); exit(1); }
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "workers") == 0) {
        pid_t w[2];
        fflush(stdout);
        for (int i = 0; i < 2; i++) {
            w[i] = fork();
            if (w[i] < 0) { perror("fork"); return 1; }
            if (w[i] == 0) worker(argv[2]);
        }
        printf("workers %d %d\n", (int)w[0], (int)w[1]);
        fflush(stdout);
        int failed = !wait_ok(w[0]) + !wait_ok(w[1]);
        printf("{\"workers\": [%d, %d], \"failed\": %d}\n", (int)w[0], (int)w[1], failed);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "late-fork") == 0) {
        worker_churn();
        printf("ready\n");
        fflush(stdout);
        double t0 = now_ms();
        while (access(argv[2], F_OK) != 0) {
            if (now_ms() - t0 > 20000) { fprintf(stderr, "prefork: no %s after 20 s\n", argv[2]); return 3; }
            worker_churn();
            usleep(2000);
        }
        worker_churn();
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            late_child_leak();
            exit(0);
        }
        int failed = !wait_ok(pid);
        printf("{\"child_pid\": %d, \"failed\": %d}\n", (int)pid, failed);
        return 0;
    }
    fprintf(stderr, "usage: prefork workers FLAG | prefork late-fork FLAG\n");
    return 1;
}
