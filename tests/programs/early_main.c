/* Frees half of early_lib.c's constructor-time blocks, moves a quarter with realloc (the new
 * blocks are allocations made while tracing, in main, and are kept), keeps the rest, then
 * leaks 3 blocks of its own. Prints {"early_ready": 0|1, "sites": {...}}. Blocks allocated
 * before tracing started are the program's own business: freeing or reallocating them must be
 * safe, and they are not reported. */
#include <stdio.h>
#include <stdlib.h>

extern void *early_blocks[64];
extern int early_ready;

#define NOINLINE __attribute__((noinline))
static void *volatile keep[3];

NOINLINE void leak_after_start(void) {
    for (int i = 0; i < 3; i++) keep[i] = malloc(700);
}

int main(void) {
    for (int i = 0; i < 64; i++) {
        if (i % 2 == 0) free(early_blocks[i]);
        else if (i % 4 == 1) early_blocks[i] = realloc(early_blocks[i], 5000);
    }
    leak_after_start();
    printf("{\"early_ready\": %d, \"sites\": {\"leak_after_start\": {\"bytes\": 2100, \"count\": 3}, "
           "\"main\": {\"bytes\": %d, \"count\": 16}}}\n", early_ready, 16 * 5000);
    return 0;
}
