/* runner.c - the measuring launcher used by scripts/bench.
 *
 * usage: runner STATFILE PROGRAM [ARGS...]
 *
 * Forks, execs PROGRAM, waits for it with wait4() and writes
 *   "<wall seconds> <ru_maxrss KiB> <raw wait status> <CPU seconds, user + system>\n"
 * to STATFILE; exits with the child's exit code (128+N for signal N).
 *
 * Why a C launcher and not Python's subprocess: a child's ru_maxrss starts
 * at the RSS of the process it was forked from (Linux keeps the old mm's
 * high-water mark across fork and exec), so forking from the ~20 MiB Python
 * driver would put a ~20 MiB floor under every peak-RSS number.  This
 * process is tiny.
 *
 * Environment: every variable named BENCH_SET_<NAME> is exported to the
 * child as <NAME> (and removed), so LD_PRELOAD / MALLOC_CONF / LEAKTRACE_*
 * reach only the measured program, never this launcher.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void apply_bench_set(void)
{
    static const char prefix[] = "BENCH_SET_";
    const size_t plen = sizeof prefix - 1;
    for (;;) {
        char *found = NULL;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, prefix, plen) == 0) {
                found = *e;
                break;
            }
        }
        if (!found)
            return;
        char *copy = strdup(found);
        char *eq = copy ? strchr(copy, '=') : NULL;
        if (!eq)
            _exit(126);
        *eq = 0;
        unsetenv(copy);
        setenv(copy + plen, eq + 1, 1);
        free(copy);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s STATFILE PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("runner: fork");
        return 2;
    }
    if (pid == 0) {
        apply_bench_set();
        execvp(argv[2], argv + 2);
        fprintf(stderr, "runner: cannot exec %s: ", argv[2]);
        perror(NULL);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("runner: wait4");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror("runner: STATFILE");
        return 2;
    }
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    fprintf(f, "%.6f %ld %d %.6f\n", secs, ru.ru_maxrss, status, cpu);
    fclose(f);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 2;
}
