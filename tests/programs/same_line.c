/* One source line, several call instructions (issue 11): both arms of a conditional on one line,
 * and a loop the compiler unrolls at -O2. Each must be one site with all of its bytes.
 * Prints {"sites": {"leak_both_arms": {...}, "leak_unrolled": {...}}}. */
#include <stdio.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

NOINLINE void leak_both_arms(int i) {
    sink = (i & 1) ? malloc(100) : calloc(1, 300);
}

NOINLINE void leak_unrolled(void) {
#pragma GCC unroll 4
    for (int i = 0; i < 8; i++) sink = malloc(64);
}

int main(void) {
    for (int i = 0; i < 10; i++) leak_both_arms(i);
    leak_unrolled();
    printf("{\"sites\": {\"leak_both_arms\": {\"bytes\": %d, \"count\": 10}, \"leak_unrolled\": {\"bytes\": %d, \"count\": 8}}}\n",
           5 * 100 + 5 * 300, 8 * 64);
    return 0;
}
