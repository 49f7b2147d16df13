/* Two sites leaking large volumes, small blocks and large ones, interleaved with a lot of
 * churn that is all freed, for the sampled mode (one sample per ~512 KiB on average).
 *
 * Usage: sampled SMALL_MIB LARGE_MIB. Prints one JSON line: per site the bytes and blocks. */
#include <stdio.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))
#define SMALL_BLOCK 4096
#define LARGE_BLOCK (100 * 1024)

void *volatile sink;

NOINLINE void leak_small(void) { sink = malloc(SMALL_BLOCK); }

NOINLINE void leak_large(void) { sink = malloc(LARGE_BLOCK); }

NOINLINE void churn(int seed) {
    void *held[16];
    for (int k = 0; k < 16; k++) held[k] = malloc(16 + (seed * 31 + k * 977) % 20000);
    for (int k = 0; k < 16; k++) free(held[k]);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    unsigned long small_n = strtoul(argv[1], NULL, 10) * (1 << 20) / SMALL_BLOCK;
    unsigned long large_n = strtoul(argv[2], NULL, 10) * (1 << 20) / LARGE_BLOCK;
    unsigned long steps = small_n > large_n ? small_n : large_n;
    /* Spread both leaks evenly over the run, with churn in between. */
    unsigned long small_done = 0, large_done = 0;
    for (unsigned long i = 0; i < steps; i++) {
        while (small_done < (i + 1) * small_n / steps) { leak_small(); small_done++; }
        while (large_done < (i + 1) * large_n / steps) { leak_large(); large_done++; }
        churn((int)i);
    }
    printf("{\"sites\":{\"leak_small\":{\"bytes\":%lu,\"count\":%lu,\"block\":%d},"
           "\"leak_large\":{\"bytes\":%lu,\"count\":%lu,\"block\":%d}},\"not_leaking\":[\"churn\"]}\n",
           small_done * SMALL_BLOCK, small_done, SMALL_BLOCK, large_done * LARGE_BLOCK, large_done, LARGE_BLOCK);
    return 0;
}
