/* 32 threads allocate and free across threads for SECONDS (default 3): each allocates in
 * churn_alloc, pushes the block on a shared, mutex-protected queue and frees whatever block
 * is at the queue's head, usually another thread's. Then the queue is drained and each thread
 * leaks a known amount in final_leak. Prints one JSON line. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS 32
#define QCAP 4096
#define QKEEP 1024
#define NOINLINE __attribute__((noinline))

static void *queue[QCAP];
static size_t qhead, qlen;
static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t barrier;
static double seconds = 3.0;
static unsigned long iterations[THREADS], cross_frees[THREADS];
void *volatile sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

NOINLINE void *churn_alloc(size_t n, int owner) {
    uint32_t *p = malloc(n);
    if (!p) abort();
    p[0] = (uint32_t)owner;
    return p;
}

NOINLINE void final_leak(int id) {
    for (int i = 0; i < 8; i++) { sink = malloc(100 + id); memset(sink, 4, 100 + id); }
}

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t x = 0x9e3779b97f4a7c15ull * (id + 1);
    double end = now() + seconds;
    unsigned long it = 0;
    while (1) {
        if ((it & 255) == 0 && now() >= end) break;
        it++;
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t n = 8 + x % 600;
        void *p = churn_alloc(n, id), *victim = NULL;
        pthread_mutex_lock(&qlock);
        if (qlen < QCAP) {
            queue[(qhead + qlen) % QCAP] = p;
            qlen++;
            p = NULL;
        }
        if (qlen > QKEEP) {
            victim = queue[qhead];
            qhead = (qhead + 1) % QCAP;
            qlen--;
        }
        pthread_mutex_unlock(&qlock);
        if (victim) {
            if (*(uint32_t *)victim != (uint32_t)id) cross_frees[id]++;
            free(victim);
        }
        free(p);
    }
    iterations[id] = it;
    pthread_barrier_wait(&barrier);
    if (id == 0) {
        while (qlen) { free(queue[qhead]); qhead = (qhead + 1) % QCAP; qlen--; }
    }
    pthread_barrier_wait(&barrier);
    final_leak(id);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) seconds = atof(argv[1]);
    pthread_t t[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) != 0) { perror("pthread_create"); return 1; }
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    unsigned long its = 0, cross = 0, bytes = 0;
    for (int i = 0; i < THREADS; i++) { its += iterations[i]; cross += cross_frees[i]; bytes += 8 * (100 + i); }
    printf("{\"threads\": %d, \"iterations\": %lu, \"cross_thread_frees\": %lu, "
           "\"sites\": {\"final_leak\": {\"bytes\": %lu, \"count\": %d}}, \"not_leaking\": [\"churn_alloc\"]}\n",
           THREADS, its, cross, bytes, THREADS * 8);
    return 0;
}
