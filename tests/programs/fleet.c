/* One process of a fleet, for the exporter's scale test (tests/serve.rs): for SECONDS (default
 * 10) it leaks KIB_PER_SEC KiB a second (default 256) in 4 KiB blocks from leak_steady, and
 * allocates and frees 100 short-lived blocks of 64 B to 4 KiB from churn, every 10 ms. Prints
 * "running" once started, and one JSON line at exit. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TICK_NS 10000000L

static unsigned long long rng = 0x9e3779b97f4a7c15ull;
static unsigned long long next_random(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static void **kept;
static size_t n_kept, cap_kept;

__attribute__((noinline)) void leak_steady(size_t bytes) {
    for (size_t done = 0; done < bytes; done += 4096) {
        if (n_kept == cap_kept) {
            cap_kept = cap_kept ? cap_kept * 2 : 1024;
            kept = realloc(kept, cap_kept * sizeof *kept);
        }
        kept[n_kept] = malloc(4096);
        memset(kept[n_kept], 1, 64);
        n_kept++;
    }
}

__attribute__((noinline)) void churn(void) {
    void *p[100];
    for (int i = 0; i < 100; i++) {
        p[i] = malloc(64 + next_random() % 4032);
        memset(p[i], 2, 16);
    }
    for (int i = 0; i < 100; i++) free(p[i]);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10.0;
    long kib_per_sec = argc > 2 ? atol(argv[2]) : 256;
    long ticks = (long)(seconds * 1e9 / TICK_NS);
    size_t per_tick = (size_t)kib_per_sec * 1024 / 100;
    printf("running\n");
    fflush(stdout);
    for (long t = 0; t < ticks; t++) {
        leak_steady(per_tick);
        churn();
        struct timespec pause = {0, TICK_NS};
        nanosleep(&pause, NULL);
    }
    printf("{\"sites\": {\"leak_steady\": {\"bytes\": %zu, \"count\": %zu}}}\n", n_kept * 4096, n_kept);
    return 0;
}
