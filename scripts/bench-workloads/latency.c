/* latency.c - per-operation latency of a single-threaded malloc/free loop, for scripts/bench.
 *
 * usage: latency PAIRS [WINDOW]
 *
 * One thread, and no thread is ever created (glibc's single-threaded fast path stays on unless
 * a preload takes it away).  The program keeps WINDOW live blocks (default 1024) and, PAIRS
 * times, frees a random one and mallocs its replacement; the free+malloc pair is timed.  The
 * new block is written (first and last byte) after the second timestamp, so its page faults are
 * not in the timed part but its memory is really used.  Sizes: 50% 16-64 B, 30% 65-256 B, 15%
 * 257 B-2 KiB, 4% 2-16 KiB, 1% 16-64 KiB (a mean of about 1 KiB, so leaktrace's default 512 KiB
 * sampling mean records about one pair in 500: p99.9 sees the sampled pairs, p99 does not).
 * Deterministic xorshift RNG.  Before the timed pairs, PAIRS/10 untimed ones warm up the heap.
 *
 * glibc's trim threshold is fixed at 1 MiB first (mallopt; no effect under another allocator).
 * Left dynamic, it rises the first time a block over the mmap threshold is freed, and whether
 * that happened decides the tail: at the default 128 KiB this loop shrinks and regrows the heap
 * with brk every ~2000 pairs (p99.9 ~1.9 us on the machine this was written on; ~0.3 us once
 * the threshold is up).  A tracer whose start-up frees a large block would then make the loop
 * faster than no tracer at all.  A long-running service has usually raised it long ago.
 *
 * Each pair is timed with the TSC (lfence; rdtsc ... rdtscp; lfence) on x86-64, converted to ns
 * with a rate calibrated against CLOCK_MONOTONIC over the timed loop; elsewhere with
 * clock_gettime(CLOCK_MONOTONIC).  The durations go into a static histogram (1-tick buckets up
 * to 2^16 ticks, then power-of-two buckets; the maximum is kept exactly), so measuring
 * allocates nothing; percentiles are interpolated inside the timer's steps (see quantile).  The cost of the timer itself (an empty timed interval, median of 100,000)
 * is printed as timer_ns; it is included in every percentile, not subtracted.
 *
 * Output, one line on stdout (scripts/bench parses it):
 *   latency pairs=N window=W timer_ns=T mean_ns=M p50_ns=.. p90_ns=.. p99_ns=.. p999_ns=..
 *   p9999_ns=.. max_ns=.. tick_ghz=.. step_ns=.. checksum=..
 */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define EXACT_TICKS 65536u
#define LOG_BUCKETS 48

static uint32_t exact_hist[EXACT_TICKS];
static uint64_t log_hist[LOG_BUCKETS];
static uint64_t max_ticks, sum_ticks, counted;
static double step_ticks = 1; /* how far the timer advances at a time: see timer_step */

#define XORSHIFT_SEED 0x9E3779B97F4A7C15ull
#include "xorshift.h"

static inline size_t pick_size(void)
{
    uint64_t r = next();
    unsigned kind = (unsigned)(r % 100);
    uint64_t u = r >> 16;
    if (kind < 50)
        return 16 + (size_t)(u % 49);          /* 16..64 */
    if (kind < 80)
        return 65 + (size_t)(u % 192);         /* 65..256 */
    if (kind < 95)
        return 257 + (size_t)(u % 1792);       /* 257..2048 */
    if (kind < 99)
        return 2049 + (size_t)(u % 14336);     /* 2049..16384 */
    return 16385 + (size_t)(u % 49152);        /* 16385..65536 */
}

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#if defined(__x86_64__)
static inline uint64_t t_start(void)
{
    uint32_t lo, hi;
    __asm__ volatile("lfence\n\trdtsc" : "=a"(lo), "=d"(hi)::"memory");
    return ((uint64_t)hi << 32) | lo;
}

static inline uint64_t t_end(void)
{
    uint32_t lo, hi, aux;
    __asm__ volatile("rdtscp\n\tlfence" : "=a"(lo), "=d"(hi), "=c"(aux)::"memory");
    return ((uint64_t)hi << 32) | lo;
}
/* A bare read, for timer_step: no fence, so successive reads are as close as they can be. */
static inline uint64_t t_raw(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
#else
static inline uint64_t t_start(void) { return now_ns(); }
static inline uint64_t t_end(void) { return now_ns(); }
static inline uint64_t t_raw(void) { return now_ns(); }
#endif

static inline void record(uint64_t ticks)
{
    if (ticks < EXACT_TICKS) {
        exact_hist[ticks]++;
    } else {
        unsigned b = 63u - (unsigned)__builtin_clzll(ticks); /* >= 16 */
        log_hist[b < LOG_BUCKETS ? b : LOG_BUCKETS - 1]++;
    }
    if (ticks > max_ticks)
        max_ticks = ticks;
    sum_ticks += ticks;
    counted++;
}

/* The duration below which a fraction q of the recorded intervals fall, in ticks.  The TSC of
 * some machines advances in steps (10 ns, 26 ticks, on the AMD EPYC VM this was written on), so
 * the exact buckets hold a comb of values; the count of each occupied bucket is taken as spread
 * evenly from the midpoint with the occupied bucket below to the midpoint with the one above,
 * but no further than half a step either side, and the quantile is interpolated inside it.  Past the exact range: the upper bound of the
 * power-of-two bucket (capped at the maximum). */
static double quantile(double q)
{
    double target = q * (double)counted;
    double cum = 0;
    int64_t prev = -1;
    for (uint32_t t = 0; t < EXACT_TICKS; t++) {
        if (!exact_hist[t])
            continue;
        uint32_t nxt = t + 1;
        while (nxt < EXACT_TICKS && !exact_hist[nxt])
            nxt++;
        double c = exact_hist[t];
        if (cum + c >= target) {
            double below = prev < 0 ? step_ticks : (double)(t - prev);
            double above = nxt < EXACT_TICKS ? (double)(nxt - t) : step_ticks;
            double lo = t - (below < step_ticks ? below : step_ticks) / 2;
            double hi = t + (above < step_ticks ? above : step_ticks) / 2;
            return lo + (hi - lo) * (target - cum) / c;
        }
        cum += c;
        prev = t;
    }
    for (unsigned b = 16; b < LOG_BUCKETS; b++) {
        cum += (double)log_hist[b];
        if (cum >= target) {
            uint64_t hi = (2ull << b) - 1;
            return (double)(hi < max_ticks ? hi : max_ticks);
        }
    }
    return (double)max_ticks;
}

/* The timer's step: the most common difference between successive distinct readings in a
 * tight loop (on a fine-grained TSC, about the cost of one read: a few ns, harmless as a cap). */
static double timer_step(void)
{
    enum { SAMPLES = 256, MAXD = 4096 };
    static uint16_t seen[MAXD];
    uint64_t prev = t_raw();
    for (int n = 0; n < SAMPLES;) {
        uint64_t t = t_raw();
        if (t != prev) {
            uint64_t d = t - prev;
            if (d < MAXD)
                seen[d]++;
            prev = t;
            n++;
        }
    }
    unsigned best = 1;
    for (unsigned d = 1; d < MAXD; d++)
        if (seen[d] > seen[best])
            best = d;
    return best;
}

static void reset(void)
{
    for (uint32_t t = 0; t < EXACT_TICKS; t++)
        exact_hist[t] = 0;
    for (unsigned b = 0; b < LOG_BUCKETS; b++)
        log_hist[b] = 0;
    max_ticks = sum_ticks = counted = 0;
}

static void die(const char *what)
{
    fprintf(stderr, "latency: %s failed\n", what);
    exit(2);
}

static inline void touch(unsigned char *p, size_t n, uint64_t v)
{
    p[0] = (unsigned char)v;
    p[n - 1] = (unsigned char)(v >> 8);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PAIRS [WINDOW]\n", argv[0]);
        return 2;
    }
    uint64_t pairs = strtoull(argv[1], NULL, 10);
    size_t window = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024;
    if (pairs < 1000 || window < 1) {
        fprintf(stderr, "latency: bad arguments\n");
        return 2;
    }
#ifdef M_TRIM_THRESHOLD
    mallopt(M_TRIM_THRESHOLD, 1 << 20);
#endif
    unsigned char **slot = calloc(window, sizeof *slot);
    if (!slot)
        die("calloc(window)");
    for (size_t i = 0; i < window; i++) {
        size_t n = pick_size();
        if (!(slot[i] = malloc(n)))
            die("malloc");
        touch(slot[i], n, i);
    }

    step_ticks = timer_step();
    /* The timer's own cost: empty intervals. */
    for (int i = 0; i < 100000; i++) {
        uint64_t a = t_start();
        uint64_t b = t_end();
        record(b - a);
    }
    double timer_ticks = quantile(0.5);
    reset();

    uint64_t warm = pairs / 10;
    uint64_t sum = 0;
    uint64_t wall0 = 0, tick0 = 0;
    for (uint64_t op = 0; op < warm + pairs; op++) {
        if (op == warm) {
            wall0 = now_ns();
            tick0 = t_start();
        }
        uint64_t r = next();
        size_t i = (size_t)(r % window);
        size_t n = pick_size();
        uint64_t a = t_start();
        free(slot[i]);
        unsigned char *p = malloc(n);
        uint64_t b = t_end();
        if (!p)
            die("malloc");
        if (op >= warm)
            record(b - a);
        touch(p, n, r);
        sum += p[0];
        slot[i] = p;
    }
    uint64_t tick1 = t_end();
    uint64_t wall1 = now_ns();

#if defined(__x86_64__)
    double ticks_per_ns = (double)(tick1 - tick0) / (double)(wall1 - wall0);
#else
    double ticks_per_ns = 1.0;
    (void)tick0;
    (void)tick1;
#endif
#define NS(t) ((double)(t) / ticks_per_ns)
    printf("latency pairs=%llu window=%zu timer_ns=%.1f mean_ns=%.1f p50_ns=%.1f p90_ns=%.1f "
           "p99_ns=%.1f p999_ns=%.1f p9999_ns=%.1f max_ns=%.1f tick_ghz=%.3f step_ns=%.1f checksum=%llu\n",
           (unsigned long long)pairs, window, NS(timer_ticks), NS((double)sum_ticks / (double)counted),
           NS(quantile(0.5)), NS(quantile(0.9)), NS(quantile(0.99)), NS(quantile(0.999)),
           NS(quantile(0.9999)), NS(max_ticks), ticks_per_ns, NS(step_ticks), (unsigned long long)sum);

    for (size_t i = 0; i < window; i++)
        free(slot[i]);
    free(slot);
    return 0;
}
