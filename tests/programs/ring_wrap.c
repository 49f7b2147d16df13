/* An early leak, then allocation traffic many times what a 1 MiB trace's event ring holds,
 * all freed: the early leak's events are overwritten long before the exit, but the leak must
 * still be reported.
 *
 * Usage: ring_wrap [CHURN_PAIRS]. Prints one JSON line. */
#include <stdio.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))

void *volatile sink;

NOINLINE void early_leak(unsigned long *bytes, unsigned long *count) {
    for (int i = 0; i < 50; i++) {
        sink = malloc(1000);
        *bytes += 1000;
        *count += 1;
    }
}

NOINLINE void churn(long pairs) {
    for (long i = 0; i < pairs; i++) {
        void *p = malloc(32 + (i & 255));
        sink = p;
        free(p);
    }
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    unsigned long bytes = 0, count = 0;
    early_leak(&bytes, &count);
    churn(pairs);
    printf("{\"sites\":{\"early_leak\":{\"bytes\":%lu,\"count\":%lu}},\"churn_pairs\":%ld,"
           "\"not_leaking\":[\"churn\"]}\n", bytes, count, pairs);
    return 0;
}
