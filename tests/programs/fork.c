/* Processes made while tracing: fork, fork + exec, posix_spawn, system(), vfork.
 *
 * `fork`:  parent_leak leaks, then a forked child leaks in child_leak, lives 200 ms more and
 *          exits normally; the parent waits and prints one JSON line with both leaks and the
 *          child's pid. `fork-quick`: the same, but the child exits right after its leak.
 * `exec`:  a forked child only execs /bin/cat /dev/null (which allocates, so it is traced, and
 *          leaves through exit); the parent prints the child's pid and status.
 * `spawn`: posix_spawn of /bin/echo and system("echo ...; exit 3"); prints what it saw.
 * `vfork`: vfork + _exit(7), then vfork + execv("/bin/cat", /dev/null); prints the statuses.
 * The `spawn` and `vfork` output has no pids, so it can be compared with a run without the
 * preload. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
#define NOINLINE __attribute__((noinline))
void *volatile sink;

NOINLINE void parent_leak(void) {
    for (int i = 0; i < 7; i++) { sink = malloc(2222); memset(sink, 1, 2222); }
}

NOINLINE void child_leak(void) {
    for (int i = 0; i < 5; i++) { sink = malloc(3333); memset(sink, 2, 3333); }
}

static int status_text(int st, char *buf, size_t n) {
    if (WIFEXITED(st)) return snprintf(buf, n, "exit %d", WEXITSTATUS(st));
    if (WIFSIGNALED(st)) return snprintf(buf, n, "signal %d", WTERMSIG(st));
    return snprintf(buf, n, "status %d", st);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "fork";
    char st_text[64];
    fflush(stdout);
    if (strcmp(mode, "fork") == 0 || strcmp(mode, "fork-quick") == 0) {
        parent_leak();
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            child_leak();
            if (strcmp(mode, "fork") == 0) usleep(200000);
            exit(0); /* a normal exit: exit handlers and destructors run */
        }
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        status_text(st, st_text, sizeof st_text);
        printf("{\"child_pid\": %d, \"child_status\": \"%s\", \"sites\": {"
               "\"parent_leak\": {\"bytes\": %d, \"count\": 7}, \"child_leak\": {\"bytes\": %d, \"count\": 5}}}\n",
               (int)pid, st_text, 7 * 2222, 5 * 3333);
        return 0;
    }
    if (strcmp(mode, "exec") == 0) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            char *args[] = {"cat", "/dev/null", NULL};
            execv("/bin/cat", args);
            _exit(127);
        }
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        status_text(st, st_text, sizeof st_text);
        printf("{\"child_pid\": %d, \"child_status\": \"%s\"}\n", (int)pid, st_text);
        return 0;
    }
    if (strcmp(mode, "spawn") == 0) {
        printf("before spawn\n");
        fflush(stdout);
        pid_t pid;
        char *args[] = {"echo", "spawned-echo", NULL};
        int rc = posix_spawn(&pid, "/bin/echo", NULL, NULL, args, environ);
        if (rc != 0) { printf("posix_spawn failed: %s\n", strerror(rc)); return 1; }
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        status_text(st, st_text, sizeof st_text);
        printf("posix_spawn: %s\n", st_text);
        fflush(stdout);
        st = system("echo from-system; exit 3");
        status_text(st, st_text, sizeof st_text);
        printf("system: %s\n", st_text);
        return 4;
    }
    if (strcmp(mode, "vfork") == 0) {
        pid_t pid = vfork();
        if (pid < 0) { perror("vfork"); return 1; }
        if (pid == 0) _exit(7);
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        status_text(st, st_text, sizeof st_text);
        printf("vfork+_exit: %s\n", st_text);
        pid = vfork();
        if (pid < 0) { perror("vfork"); return 1; }
        if (pid == 0) {
            char *args[] = {"cat", "/dev/null", NULL};
            execv("/bin/cat", args);
            _exit(127);
        }
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        status_text(st, st_text, sizeof st_text);
        printf("vfork+exec: %s\n", st_text);
        return 5;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 1;
}
