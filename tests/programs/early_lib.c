/* A library whose constructor allocates before the tracer has started: libraries the program
 * links are initialised before preloaded ones, so these blocks reach the malloc hooks before
 * libleaktrace's constructor has run (the forwarding table still holds its bootstrap
 * functions). Used by early_main.c. */
#include <stdlib.h>
#include <string.h>

void *early_blocks[64];
int early_ready;

__attribute__((constructor(101))) static void early_init(void) {
    for (int i = 0; i < 64; i++) {
        early_blocks[i] = i % 4 == 3 ? calloc(1, 1000 + (size_t)i) : malloc(1000 + (size_t)i);
        if (early_blocks[i]) memset(early_blocks[i], i, 16);
    }
    early_ready = 1;
}
