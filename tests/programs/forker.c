/* Fork per connection (issue 10): a parent that leaks in parent_leak, then forks N children one
 * after another, waiting for each.
 *
 * `forker N leak`:  each child allocates 10 blocks of 1000 bytes in child_work and keeps 3 of
 *                   them (a leak, so a trace of it is worth keeping), then exit(0).
 * `forker N clean`: each child allocates the same 10 blocks and frees all of them, then exit(0).
 * `forker N exec`:  each child leaks as with `leak`, then execs /bin/true (fork + exec per
 *                   connection: the exec'd program replaces the child's trace under its pid).
 * The parent prints one JSON line: {"children": N, "failed": K, "sites": {"parent_leak":
 * {"bytes": 100000, "count": 40}}}; K counts children that did not exit with status 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

NOINLINE void parent_leak(void) {
    for (int i = 0; i < 40; i++) { sink = malloc(2500); memset(sink, 1, 2500); }
}

NOINLINE void child_work(int keep) {
    void *blocks[10];
    for (int i = 0; i < 10; i++) { blocks[i] = malloc(1000); memset(blocks[i], 2, 1000); }
    for (int i = keep; i < 10; i++) free(blocks[i]);
    for (int i = 0; i < keep; i++) sink = blocks[i];
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "leak") != 0 && strcmp(argv[2], "clean") != 0 && strcmp(argv[2], "exec") != 0)) {
        fprintf(stderr, "usage: forker N leak|clean|exec\n");
        return 1;
    }
    int exec_after = strcmp(argv[2], "exec") == 0;
    int n = atoi(argv[1]), keep = strcmp(argv[2], "clean") == 0 ? 0 : 3, failed = 0;
    parent_leak();
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); return 1; }
        if (pid == 0) {
            child_work(keep);
            if (exec_after) {
                char *args[] = {"true", NULL};
                execv("/bin/true", args);
                _exit(127);
            }
            exit(0);
        }
        int st = 0;
        if (waitpid(pid, &st, 0) != pid) { perror("waitpid"); return 1; }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
    }
    printf("{\"children\": %d, \"failed\": %d, \"sites\": {\"parent_leak\": {\"bytes\": 100000, \"count\": 40}}}\n", n, failed);
    return 0;
}
