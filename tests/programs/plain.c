/* An ordinary program for the settings tests: a little output, some allocations (a few
 * leaked), and a distinctive exit code (3), so a run under the preload can be compared byte for
 * byte with a run without it. Writes nothing on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

void *volatile sink;

__attribute__((noinline)) void plain_leak(void) {
    for (int i = 0; i < 10; i++) { sink = malloc(1000 + i); memset(sink, 3, 1000 + i); }
}

int main(int argc, char **argv) {
    /* `--at-secure`: say whether the loader ran this in secure-execution mode. */
    if (argc > 1 && strcmp(argv[1], "--at-secure") == 0) printf("at_secure %lu\n", getauxval(AT_SECURE));
    unsigned long sum = 0;
    for (int i = 0; i < 20000; i++) {
        char *p = malloc(16 + i % 4000);
        p[0] = (char)i;
        sum += (unsigned char)p[0];
        free(p);
    }
    plain_leak();
    printf("plain: hello\nplain: sum %lu\n", sum);
    return 3;
}
