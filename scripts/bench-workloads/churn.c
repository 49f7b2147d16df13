/* churn.c - multi-threaded malloc/free churn workload for scripts/bench.
 *
 * usage: churn THREADS OPS_PER_THREAD [WINDOW]
 *
 * Each thread keeps a window of WINDOW live objects (default 4096) and, OPS
 * times, replaces a random one with a new object of a random size between
 * 16 B and 64 KiB (log-uniform-ish: a power-of-two bucket 2^4..2^15 chosen
 * uniformly, then a uniform offset inside the bucket).  Operation mix:
 *   10% realloc of the victim to the new size
 *   10% free + calloc
 *   80% free + malloc
 * Every new object is touched (first 64 bytes and last byte) so that pages
 * are really faulted in.  The RNG is a per-thread xorshift64 seeded from the
 * thread index, so every run does exactly the same work.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int id;
    uint64_t ops;
    size_t window;
    uint64_t checksum;
} worker_arg;

static inline uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static inline size_t random_size(uint64_t *s)
{
    uint64_t r = xorshift64(s);
    unsigned bucket = 4 + (unsigned)(r % 12);          /* 2^4 .. 2^15 */
    size_t base = (size_t)1 << bucket;
    return base + (size_t)((r >> 8) & (base - 1));     /* 16 .. 65535 */
}

static inline void touch(unsigned char *p, size_t n, uint64_t v)
{
    size_t k = n < 64 ? n : 64;
    memset(p, (int)(v & 0xff), k);
    p[n - 1] = (unsigned char)(v >> 8);
}

static void die(const char *what)
{
    fprintf(stderr, "churn: %s failed\n", what);
    exit(2);
}

static void *worker(void *argp)
{
    worker_arg *a = argp;
    uint64_t seed = 0x9E3779B97F4A7C15ull * (uint64_t)(a->id + 1) ^ 0xD1B54A32D192ED03ull;
    if (seed == 0)
        seed = 1;
    unsigned char **slot = calloc(a->window, sizeof *slot);
    size_t *len = calloc(a->window, sizeof *len);
    if (!slot || !len)
        die("calloc(window)");
    uint64_t sum = 0;

    for (size_t i = 0; i < a->window; i++) {
        size_t n = random_size(&seed);
        slot[i] = malloc(n);
        if (!slot[i])
            die("malloc");
        len[i] = n;
        touch(slot[i], n, i);
    }

    for (uint64_t op = 0; op < a->ops; op++) {
        uint64_t r = xorshift64(&seed);
        size_t i = (size_t)(r % a->window);
        unsigned kind = (unsigned)((r >> 32) % 100);
        size_t n = random_size(&seed);
        unsigned char *old = slot[i];
        sum += old[0] + old[len[i] - 1];
        unsigned char *p;
        if (kind < 10) {
            p = realloc(old, n);
            if (!p)
                die("realloc");
        } else if (kind < 20) {
            free(old);
            p = calloc(1, n);
            if (!p)
                die("calloc");
            sum += p[n / 2];
        } else {
            free(old);
            p = malloc(n);
            if (!p)
                die("malloc");
        }
        touch(p, n, r);
        slot[i] = p;
        len[i] = n;
    }

    for (size_t i = 0; i < a->window; i++)
        free(slot[i]);
    free(slot);
    free(len);
    a->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s THREADS OPS_PER_THREAD [WINDOW]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    uint64_t ops = strtoull(argv[2], NULL, 10);
    size_t window = argc > 3 ? strtoull(argv[3], NULL, 10) : 4096;
    if (threads < 1 || window < 1) {
        fprintf(stderr, "churn: bad arguments\n");
        return 2;
    }
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    worker_arg *args = calloc((size_t)threads, sizeof *args);
    if (!tid || !args)
        die("calloc(threads)");
    for (int t = 0; t < threads; t++) {
        args[t] = (worker_arg){.id = t, .ops = ops, .window = window};
        if (pthread_create(&tid[t], NULL, worker, &args[t]) != 0)
            die("pthread_create");
    }
    uint64_t total = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tid[t], NULL);
        total += args[t].checksum;
    }
    printf("churn threads=%d ops=%llu window=%zu checksum=%llu\n", threads,
           (unsigned long long)ops, window, (unsigned long long)total);
    free(tid);
    free(args);
    return 0;
}
