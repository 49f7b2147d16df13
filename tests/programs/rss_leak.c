/* `rss_leak BLOCKS SIZE`: leaks exactly BLOCKS blocks of SIZE bytes in leak_blocks, each
 * touched with memset so it is resident, between two quiet stretches, so that the RSS series
 * has samples before and after the leak (issue 10: the report must not count leaktrace's own
 * memory as the program's RSS growth).
 * Timeline: poke, 300 ms, poke, leak, 400 ms, poke, 300 ms, poke, exit. A "poke" allocates and
 * frees 8 blocks of 1 MiB without touching them (mmap'd by glibc, so the RSS does not change):
 * an allocation a sampler cannot miss, for a tracer that takes RSS samples on its sampled path.
 * Prints {"sites": {"leak_blocks": {"bytes": B, "count": N}}}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

NOINLINE void poke(void) {
    for (int i = 0; i < 8; i++) {
        void *p = malloc(1 << 20);
        sink = p;
        free(p);
    }
}

NOINLINE void leak_blocks(long blocks, long size) {
    for (long i = 0; i < blocks; i++) { sink = malloc(size); memset(sink, 0x5a, size); }
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: rss_leak BLOCKS SIZE\n"); return 1; }
    long blocks = atol(argv[1]), size = atol(argv[2]);
    poke();
    usleep(300000);
    poke();
    leak_blocks(blocks, size);
    usleep(400000);
    poke();
    usleep(300000);
    poke();
    printf("{\"sites\": {\"leak_blocks\": {\"bytes\": %ld, \"count\": %ld}}}\n", blocks * size, blocks);
    return 0;
}
