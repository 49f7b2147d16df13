/* RSS that peaks and falls back (issue 10: a report said "RSS grew 8.6 MiB" of a process that
 * had peaked at 2.35 GB). Holds PEAK_MIB MiB, touched, for ~300 ms, frees it, then leaks 1 MiB
 * in small blocks through keep_leak. It allocates and frees a small block every 5 ms all along,
 * so a tracer that samples RSS when the program allocates gets samples throughout.
 * Usage: rss_peak PEAK_MIB. Prints {"peak_bytes": N, "sites": {"keep_leak": {...}}}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

static void tick_for(int ms) {
    for (int i = 0; i < ms / 5; i++) {
        sink = malloc(64);
        free(sink);
        usleep(5000);
    }
}

NOINLINE static void keep_leak(void) {
    for (int i = 0; i < 1024; i++) {
        sink = malloc(1024);
        memset(sink, 3, 1024);
    }
}

int main(int argc, char **argv) {
    size_t peak = (argc > 1 ? strtoul(argv[1], NULL, 10) : 64) << 20;
    tick_for(200);
    char *big = malloc(peak);
    memset(big, 1, peak);
    tick_for(300);
    free(big);
    tick_for(300);
    keep_leak();
    tick_for(200);
    printf("{\"peak_bytes\": %zu, \"sites\": {\"keep_leak\": {\"bytes\": %d, \"count\": %d}}}\n", peak, 1024 * 1024, 1024);
    return 0;
}
