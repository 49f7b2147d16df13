/* Runtime control: three phases of 1000 leaked 100-byte blocks, each from its own function
 * (phase_one, phase_two, phase_three). After phase N (N < 3) it prints "phase N done"
 * (flushed) and waits for the file FLAG_N (argv[N]) to exist, for at most 60 s (exit 1).
 * Usage: ctl_prog FLAG_1 FLAG_2. Prints one JSON line at the end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

#define LEAKER(name) NOINLINE void name(void) { \
    for (int i = 0; i < 1000; i++) { sink = malloc(100); memset(sink, 1, 100); } }
LEAKER(phase_one)
LEAKER(phase_two)
LEAKER(phase_three)

static void wait_for(int phase, const char *flag) {
    printf("phase %d done\n", phase);
    fflush(stdout);
    for (int i = 0; i < 6000; i++) {
        if (access(flag, F_OK) == 0) return;
        usleep(10000);
    }
    fprintf(stderr, "ctl_prog: no %s after 60 s\n", flag);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: ctl_prog FLAG_1 FLAG_2\n"); return 1; }
    phase_one();
    wait_for(1, argv[1]);
    phase_two();
    wait_for(2, argv[2]);
    phase_three();
    printf("{\"blocks_per_phase\": 1000, \"block\": 100}\n");
    return 0;
}
