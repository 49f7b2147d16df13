/* 8 threads, started together, each leaking the same blocks from the same function
 * (thread_leak) while churning memory that it frees, so the hooks run concurrently.
 *
 * Prints one JSON line: the thread count, what one thread leaked, and the total. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))
#define THREADS 8
#define BLOCKS_PER_THREAD 400
#define CHURN_PER_BLOCK 96 /* a multiple of 8, see churn */

static pthread_barrier_t start;
void *volatile sink;

static size_t block_size(int i) { return 64 + 16 * (i % 7); }

NOINLINE void thread_leak(int i) {
    sink = malloc(block_size(i));
}

NOINLINE void churn(int i) {
    void *held[8];
    for (int k = 0; k < CHURN_PER_BLOCK; k++) {
        held[k & 7] = malloc(24 + (i * 13 + k * 7) % 1000);
        if ((k & 7) == 7)
            for (int j = 0; j < 8; j++) free(held[j]);
    }
    /* Every eighth round frees the eight held blocks: CHURN_PER_BLOCK must be a multiple of 8. */
}

static void *thread_main(void *arg) {
    (void)arg;
    pthread_barrier_wait(&start);
    for (int i = 0; i < BLOCKS_PER_THREAD; i++) {
        thread_leak(i);
        churn(i);
    }
    return NULL;
}

int main(void) {
    pthread_t t[THREADS];
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, thread_main, NULL)) return 2;
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    unsigned long per_thread = 0;
    for (int i = 0; i < BLOCKS_PER_THREAD; i++) per_thread += block_size(i);
    printf("{\"threads\":%d,\"per_thread_bytes\":%lu,\"per_thread_count\":%d,"
           "\"sites\":{\"thread_leak\":{\"bytes\":%lu,\"count\":%d}},\"not_leaking\":[\"churn\"]}\n",
           THREADS, per_thread, BLOCKS_PER_THREAD, per_thread * THREADS, BLOCKS_PER_THREAD * THREADS);
    return 0;
}
