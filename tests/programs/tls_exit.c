/* Threads that exit while tracing, with TLS destructors that free (and allocate): ROUNDS
 * rounds of 16 threads, each storing a block from tls_block_alloc under a pthread key whose
 * destructor frees it (after a malloc/free of its own). The main thread leaks 3 blocks in
 * tls_marker_leak so the trace is known to be live. Prints one JSON line. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))
static pthread_key_t key;
static pthread_key_t key2;
static volatile unsigned long destructed;
void *volatile sink;

NOINLINE void *tls_block_alloc(size_t n) {
    void *p = malloc(n);
    memset(p, 5, n);
    return p;
}

static void destroy(void *p) {
    void *tmp = malloc(64); /* allocating during thread teardown */
    memset(tmp, 6, 64);
    free(tmp);
    free(p);
    __sync_fetch_and_add(&destructed, 1);
}

/* A destructor that stores a new block once: glibc runs the destructors again for it. */
static void destroy2(void *p) {
    int again = ((char *)p)[0] == 1;
    free(p);
    if (again) {
        char *q = tls_block_alloc(48);
        q[0] = 2;
        pthread_setspecific(key2, q);
    }
    __sync_fetch_and_add(&destructed, 1);
}

static void *worker(void *arg) {
    (void)arg;
    pthread_setspecific(key, tls_block_alloc(777));
    char *b = tls_block_alloc(99);
    b[0] = 1;
    pthread_setspecific(key2, b);
    return NULL;
}

NOINLINE void tls_marker_leak(void) {
    for (int i = 0; i < 3; i++) { sink = malloc(4242); memset(sink, 7, 4242); }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    pthread_key_create(&key, destroy);
    pthread_key_create(&key2, destroy2);
    tls_marker_leak();
    for (int r = 0; r < rounds; r++) {
        pthread_t t[16];
        for (int i = 0; i < 16; i++)
            if (pthread_create(&t[i], NULL, worker, NULL) != 0) { perror("pthread_create"); return 1; }
        for (int i = 0; i < 16; i++) pthread_join(t[i], NULL);
    }
    printf("{\"threads\": %d, \"destructor_calls\": %lu, \"sites\": {\"tls_marker_leak\": {\"bytes\": %d, \"count\": 3}}, "
           "\"not_leaking\": [\"tls_block_alloc\", \"destroy\", \"destroy2\"]}\n",
           rounds * 16, destructed, 3 * 4242);
    return 0;
}
