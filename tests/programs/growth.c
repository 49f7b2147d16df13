// Six memory behaviours side by side, for the growth verdict: two steady leaks at different
// rates, a leak that starts late, a cache that fills and plateaus, a cache that is emptied and
// refilled, and churn whose last allocations are still in flight at exit.
// Usage: growth [seconds] (default 8). Prints its own rates as JSON at the end.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_NS 10000000L
#define BLOCK 4096

static unsigned long long rng = 0x9e3779b97f4a7c15ull;
static unsigned long long next_random(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct rate { double first, last; unsigned long long bytes; };
static void note(struct rate *r, size_t n) {
    double t = now();
    if (r->bytes == 0) r->first = t;
    r->last = t;
    r->bytes += n;
}

static struct rate slow, fast, late;
static void *keep(void *p) { static void **all; static size_t n, cap;
    if (n == cap) { cap = cap ? cap * 2 : 4096; all = realloc(all, cap * sizeof *all); }
    all[n++] = p; return p; }

__attribute__((noinline)) void leak_slow(void) { keep(malloc(BLOCK)); note(&slow, BLOCK); }
__attribute__((noinline)) void leak_fast(void) { keep(malloc(BLOCK)); note(&fast, BLOCK); }
__attribute__((noinline)) void late_leak(void) { keep(malloc(BLOCK)); note(&late, BLOCK); }

#define PLATEAU_SLOTS 4096
static void *plateau[PLATEAU_SLOTS];
__attribute__((noinline)) void cache_plateau(size_t slot) {
    free(plateau[slot]);
    plateau[slot] = malloc(8192);
}

#define REFILL_SLOTS 2048
static void *refill[REFILL_SLOTS];
__attribute__((noinline)) void cache_refill(size_t slot) {
    free(refill[slot]);
    refill[slot] = malloc(8192);
}

#define CHURN_N 40
static void *in_flight[CHURN_N];
__attribute__((noinline)) void churn(void) {
    for (int i = 0; i < CHURN_N; i++) {
        free(in_flight[i]);
        in_flight[i] = malloc(1024 + next_random() % 65536);
    }
}

// Each cache is filled and replaced through one call of its insert function, so each is one
// call site (two insertion paths would be two sites, each with its own trend).
static void plateau_tick(double f, long ticks) {
    long lo, hi;
    if (f < 0.25) {                                      // fill in the first quarter...
        lo = (long)(f * 4 * PLATEAU_SLOTS);
        hi = (long)((f + 1.0 / ticks) * 4 * PLATEAU_SLOTS);
    } else {                                             // ...then replace 30 entries a tick
        lo = 0;
        hi = 30;
    }
    for (long s = lo; s < hi && s < PLATEAU_SLOTS; s++)
        cache_plateau(f < 0.25 ? (size_t)s : next_random() % PLATEAU_SLOTS);
}

static void refill_tick(double f, long ticks) {
    if (f >= 0.4 && f < 0.4 + 1.0 / ticks) {             // evict everything once
        for (int s = 0; s < REFILL_SLOTS; s++) { free(refill[s]); refill[s] = NULL; }
        return;
    }
    long lo = 0, hi = 10;
    int sequential = 0;
    if (f < 0.2) {                                       // first fill
        lo = (long)(f * 5 * REFILL_SLOTS);
        hi = (long)((f + 1.0 / ticks) * 5 * REFILL_SLOTS);
        sequential = 1;
    } else if (f >= 0.4 && f < 0.55) {                   // refill after the eviction
        lo = (long)((f - 0.4) / 0.15 * REFILL_SLOTS);
        hi = (long)((f - 0.4 + 1.0 / ticks) / 0.15 * REFILL_SLOTS);
        sequential = 1;
    }
    for (long s = lo; s < hi && s < REFILL_SLOTS; s++)
        cache_refill(sequential ? (size_t)s : next_random() % REFILL_SLOTS);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 8.0;
    long ticks = (long)(seconds * 1e9 / TICK_NS);
    for (long t = 0; t < ticks; t++) {
        double f = (double)t / ticks;
        for (int i = 0; i < 9; i++) leak_slow();           // ~3.7 MB/s: 30 MB over 8 s
        for (int i = 0; i < 27; i++) leak_fast();          // ~11 MB/s
        if (f >= 0.6) for (int i = 0; i < 23; i++) late_leak();   // 30 MB over the last 40%
        plateau_tick(f, ticks);
        refill_tick(f, ticks);
        churn();
        struct timespec pause = {0, TICK_NS};
        nanosleep(&pause, NULL);
    }
    printf("{\"leak_slow\":{\"bytes\":%llu,\"bytes_per_sec\":%.0f},"
           "\"leak_fast\":{\"bytes\":%llu,\"bytes_per_sec\":%.0f},"
           "\"late_leak\":{\"bytes\":%llu,\"bytes_per_sec\":%.0f}}\n",
           slow.bytes, slow.bytes / (slow.last - slow.first),
           fast.bytes, fast.bytes / (fast.last - fast.first),
           late.bytes, late.bytes / (late.last - late.first));
    return 0;
}
