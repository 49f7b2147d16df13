/* Allocation in signal handlers (which real programs do, though they should not): SIGALRM
 * from setitimer every 100 us and SIGUSR1 sent to the main thread by a helper thread, both
 * handled by handler_churn, which mallocs and frees; meanwhile the main thread mallocs and
 * frees in main_churn for SECONDS (default 2). The handlers use malloc (never calloc, which
 * always takes glibc's arena lock), with sizes no other code uses, warmed up before the
 * signals start, and they do not nest: glibc serves them from its per-thread cache without a
 * lock, so glibc itself does not deadlock on an interrupted malloc and a hang can only be the
 * preload's. Prints one JSON line. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#define NOINLINE __attribute__((noinline))
static volatile sig_atomic_t handled_alrm, handled_usr1;
static volatile int done;
static pthread_t main_thread;

NOINLINE void handler_churn(int sig) {
    char *p = malloc(980 + sig);
    if (p) { p[0] = (char)sig; free(p); }
    char *q = malloc(700);
    if (q) { q[0] = 1; free(q); }
    if (sig == SIGALRM) handled_alrm++;
    else handled_usr1++;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *pester(void *arg) {
    (void)arg;
    struct timespec d = {0, 50000};
    while (!done) {
        pthread_kill(main_thread, SIGUSR1);
        nanosleep(&d, NULL);
    }
    return NULL;
}

NOINLINE unsigned long main_churn(double seconds) {
    double end = now() + seconds;
    unsigned long n = 0;
    while ((n & 63) || now() < end) {
        char *a = malloc(32 + n % 64);
        char *b = malloc(100);
        a[0] = b[0] = 1;
        free(a);
        b = realloc(b, 120);
        free(b);
        n++;
    }
    return n;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    main_thread = pthread_self();
    free(malloc(980 + SIGALRM));
    free(malloc(980 + SIGUSR1));
    free(malloc(700));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler_churn;
    sa.sa_flags = SA_RESTART;
    /* Handlers do not nest: a nested one would find the cache entry its outer one took. */
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGALRM);
    sigaddset(&sa.sa_mask, SIGUSR1);
    sigaction(SIGALRM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, pester, NULL) != 0) { perror("pthread_create"); return 1; }
    struct itimerval it = {{0, 100}, {0, 100}};
    setitimer(ITIMER_REAL, &it, NULL);
    unsigned long n = main_churn(seconds);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    done = 1;
    pthread_join(t, NULL);
    printf("{\"iterations\": %lu, \"sigalrm\": %lu, \"sigusr1\": %lu, \"not_leaking\": [\"handler_churn\", \"main_churn\"]}\n",
           n, (unsigned long)handled_alrm, (unsigned long)handled_usr1);
    return 0;
}
