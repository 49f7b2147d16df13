/* SECONDS (default 6) of allocation churn, after an early leak in early_leak. Each 10 ms it
 * allocates and frees a few hundred blocks and touches a buffer that grows and shrinks, so the
 * RSS moves. Prints one JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

NOINLINE void early_leak(void) {
    for (int i = 0; i < 4; i++) { sink = malloc(5555); memset(sink, 1, 5555); }
}

NOINLINE void churn_round(unsigned long r) {
    void *blocks[256];
    for (int i = 0; i < 256; i++) blocks[i] = malloc(16 + (r * 7 + i * 13) % 2000);
    for (int i = 0; i < 256; i++) free(blocks[i]);
    size_t big = (1 + r % 20) << 20;
    char *b = malloc(big);
    memset(b, 2, big);
    free(b);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 6.0;
    early_leak();
    double end = now() + seconds;
    unsigned long r = 0;
    while (now() < end) {
        churn_round(r++);
        usleep(10000);
    }
    printf("{\"rounds\": %lu, \"sites\": {\"early_leak\": {\"bytes\": %d, \"count\": 4}}, \"not_leaking\": [\"churn_round\"]}\n",
           r, 4 * 5555);
    return 0;
}
