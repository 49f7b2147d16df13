/* A single-threaded program that allocates for a while and counts its own threads
 * (the entries of /proc/self/task) as it goes (issue 10: leaktrace must create no thread in a
 * process that has only one).
 *
 * `run MS`:    for MS milliseconds, every ~5 ms: 20 blocks of 64 KiB allocated, touched and
 *              freed (churn), and one 16 KiB block leaked in task_leak. Counts the threads at
 *              1/8, 1/2 and the end of the run.
 * `wait FLAG`: prints "running" (flushed), then does the same every ~5 ms until the file FLAG
 *              exists (at most 20 s: exit 1), counting the threads at the start and the end.
 * Prints one JSON line: {"tasks": [counts...], "tasks_max": N, "leaked_blocks": N}. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;
static unsigned long leaked;

static int count_tasks(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) { perror("opendir /proc/self/task"); exit(1); }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

NOINLINE void churn(void) {
    for (int i = 0; i < 20; i++) {
        char *p = malloc(65536);
        memset(p, i, 65536);
        sink = p;
        free(p);
    }
}

NOINLINE void task_leak(void) {
    sink = malloc(16384);
    memset(sink, 7, 16384);
    leaked++;
}

static void step(void) {
    churn();
    task_leak();
    usleep(5000);
}

int main(int argc, char **argv) {
    int counts[8], n = 0;
    if (argc == 3 && strcmp(argv[1], "run") == 0) {
        double ms = atof(argv[2]), t0 = now_ms();
        int marks = 0;
        for (;;) {
            step();
            double t = now_ms() - t0;
            if (marks == 0 && t >= ms / 8) { counts[n++] = count_tasks(); marks++; }
            if (marks == 1 && t >= ms / 2) { counts[n++] = count_tasks(); marks++; }
            if (t >= ms) break;
        }
        counts[n++] = count_tasks();
    } else if (argc == 3 && strcmp(argv[1], "wait") == 0) {
        step();
        counts[n++] = count_tasks();
        printf("running\n");
        fflush(stdout);
        double t0 = now_ms();
        while (access(argv[2], F_OK) != 0) {
            if (now_ms() - t0 > 20000) { fprintf(stderr, "tasks: no %s after 20 s\n", argv[2]); return 1; }
            step();
        }
        counts[n++] = count_tasks();
    } else {
        fprintf(stderr, "usage: tasks run MS | tasks wait FLAG\n");
        return 1;
    }
    int max = 0;
    printf("{\"tasks\": [");
    for (int i = 0; i < n; i++) {
        printf("%s%d", i ? ", " : "", counts[i]);
        if (counts[i] > max) max = counts[i];
    }
    printf("], \"tasks_max\": %d, \"leaked_blocks\": %lu}\n", max, leaked);
    return 0;
}
