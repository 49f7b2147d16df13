/* Leaks 1000-byte blocks in leak_forever until killed: 100 blocks, then a line
 * "leaked N" on stdout (flushed), then 2 ms of sleep, forever. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *volatile sink;

__attribute__((noinline)) void leak_forever(void) {
    unsigned long n = 0;
    for (;;) {
        for (int i = 0; i < 100; i++) {
            sink = malloc(1000);
            memset(sink, 9, 1000);
            n++;
        }
        printf("leaked %lu\n", n);
        fflush(stdout);
        usleep(2000);
    }
}

int main(void) {
    leak_forever();
    return 0;
}
