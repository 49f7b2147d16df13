// A signal handler running on a small alternate stack (sigaltstack) that allocates with little
// of that stack left. Real programs should not allocate in handlers; some do.
// Usage: altstack ALT_STACK_BYTES HANDLER_PAD_BYTES. Prints the blocks leaked as JSON.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *keep[4096];
static volatile int kept;
static size_t pad_bytes;

__attribute__((noinline)) static void handler_leak(size_t pad) {
    char buf[pad];
    memset(buf, 1, pad);
    keep[kept++] = malloc(100 + buf[pad / 2]);
}

static void handler(int sig) {
    (void)sig;
    handler_leak(pad_bytes);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    stack_t ss = {.ss_size = strtoul(argv[1], NULL, 10), .ss_flags = 0};
    pad_bytes = strtoul(argv[2], NULL, 10);
    ss.ss_sp = malloc(ss.ss_size);
    if (sigaltstack(&ss, NULL) != 0) return 3;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    for (int i = 0; i < 2000; i++) raise(SIGUSR1);
    printf("{\"leaked_blocks\":%d}\n", kept);
    return 0;
}
