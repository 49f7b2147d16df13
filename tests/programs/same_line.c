/* One source line, several call instructions (issue 11): both arms of a conditional on one line,
 * and a loop the compiler unrolls at -O2. Each must be one site with all of its bytes.
 * Prints {"sites": {"leak_both_arms": {...}, "leak_unrolled": {...}}}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

NOINLINE void leak_both_arms(int i) {
    sink = (i & 1) ? malloc(100) : calloc(1, 300);
}

NOINLINE void leak_unrolled(void) {
#pragma GCC unroll 4
    for (int i = 0; i < 8; i++) sink = malloc(64);
}

/* One line, two call instructions; which one runs depends on `second`. */
NOINLINE void *alloc_either(int second) {
    return second ? calloc(1, 1000) : malloc(1000);
}

static void nap(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* Ten blocks from the first arm held for 1.2 s and freed, then five from the second arm leaked
 * and held 1.2 s more: all through one call of alloc_either, so one call stack but its first
 * return address. */
static int phases(void) {
    void *held[10];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < (round ? 5 : 10); i++) {
            void *p = alloc_either(round);
            if (round) sink = p; else held[i] = p;
        }
        nap(1200);
        if (round == 0)
            for (int i = 0; i < 10; i++) free(held[i]);
    }
    printf("{\"sites\": {\"alloc_either\": {\"bytes\": 5000, \"count\": 5}}}\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "phases") == 0) return phases();
    for (int i = 0; i < 10; i++) leak_both_arms(i);
    leak_unrolled();
    printf("{\"sites\": {\"leak_both_arms\": {\"bytes\": %d, \"count\": 10}, \"leak_unrolled\": {\"bytes\": %d, \"count\": 8}}}\n",
           5 * 100 + 5 * 300, 8 * 64);
    return 0;
}
