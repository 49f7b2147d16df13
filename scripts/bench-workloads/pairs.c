/* pairs.c - N malloc(64..176)/free pairs on one thread and nothing else: the workload of
 * scripts/hookcost, which counts the instructions each configuration adds per pair. The loop
 * runs on a created thread: under valgrind the main thread's stack is valgrind's, whose bounds
 * leaktrace cannot find, so it would skip every sample there. A warm-up, then a pause, comes
 * first: a tracer's start-up work (leaktrace builds its unwinder on its background thread's
 * first tick, and unwinds with libgcc until then) then lands before the counted loop. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The counted part; scripts/hookcost collects only inside it (callgrind --toggle-collect), so
 * the tracer's background thread and start-up are left out. */
__attribute__((noinline)) void *counted_pairs(long n) {
    void *volatile sink = 0;
    for (long i = 0; i < n; i++) {
        void *p = malloc(64 + (size_t)(i & 7) * 16);
        sink = p;
        free(p);
    }
    return sink;
}

static void *loop(void *arg) {
    for (int i = 0; i < 1000; i++) free(malloc(64));
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, 0);
    return counted_pairs(*(long *)arg);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    pthread_t t;
    void *last = 0;
    if (pthread_create(&t, 0, loop, &n) != 0 || pthread_join(t, &last) != 0) return 1;
    printf("%p\n", last);
    return 0;
}
