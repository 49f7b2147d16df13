/* `chuid_exec PROGRAM ARGS...`: what start-stop-daemon --chuid nobody, su or gosu do. Run as
 * root, it allocates (and keeps a little, in wrapper_leak, so a trace of its own is worth
 * keeping), then setgroups(0), setgid(65534), setuid(65534), and execv()s PROGRAM under the
 * same pid. Exit 127 if any step fails. */
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

NOINLINE void wrapper_leak(void) {
    for (int i = 0; i < 4; i++) { sink = malloc(800); memset(sink, 8, 800); }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: chuid_exec PROGRAM ARGS...\n"); return 127; }
    for (int i = 0; i < 1000; i++) { char *p = malloc(50 + i); p[0] = 1; free(p); }
    wrapper_leak();
    if (setgroups(0, NULL) != 0) { perror("setgroups"); return 127; }
    if (setgid(65534) != 0) { perror("setgid"); return 127; }
    if (setuid(65534) != 0) { perror("setuid"); return 127; }
    execv(argv[1], argv + 1);
    perror("execv");
    return 127;
}
