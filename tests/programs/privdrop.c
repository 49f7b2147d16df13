/* Privilege drops, the ways real daemons do them (issue 10). Run as root, except `plain`.
 *
 * `self`:   warm up (allocations, a few leaked), then prctl(PR_SET_KEEPCAPS, 1);
 *           setresuid(65534 x3); capset() to regain CAP_SETUID and CAP_SETGID in the effective
 *           set (raw SYS_capset, _LINUX_CAPABILITY_VERSION_3); setresgid(65534 x3). This is how
 *           setpriv and postgres-style daemons drop: keepcaps and capset are per thread, while
 *           glibc applies setresuid/setresgid to every thread and aborts if one fails.
 * `thread`: warm up, pthread_create a thread of its own (it waits), then drop the usual way:
 *           setgroups(0), setresgid, setresuid (65534); the thread then leaks in thread_leak.
 * `plain`:  no drop; expects to run as uid 65534 already (under `setpriv --reuid nobody`).
 * Then drop_leak leaks 50 blocks of 1000 bytes; prints "privdrop MODE: uid=R,E,S gid=R,E,S"
 * and one JSON line. No pids in the output, so it can be compared with a run without the
 * preload. Any failed call: a line on stderr and exit 1. */
#define _GNU_SOURCE
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define NOBODY 65534
void *volatile sink;

static void die(const char *what) {
    perror(what);
    exit(1);
}

NOINLINE void warm_up(void) {
    for (int i = 0; i < 5000; i++) {
        char *p = malloc(32 + (i * 37) % 8000);
        p[0] = (char)i;
        free(p);
    }
    for (int i = 0; i < 5; i++) { sink = malloc(700); memset(sink, 1, 700); }
}

NOINLINE void drop_leak(void) {
    for (int i = 0; i < 50; i++) { sink = malloc(1000); memset(sink, 2, 1000); }
}

NOINLINE void thread_leak(void) {
    for (int i = 0; i < 20; i++) { sink = malloc(1500); memset(sink, 3, 1500); }
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int dropped;

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    while (!dropped) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    thread_leak();
    return NULL;
}

static void regain_setid_caps(void) {
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = (1u << CAP_SETUID) | (1u << CAP_SETGID);
    if (syscall(SYS_capset, &hdr, data) != 0) die("capset");
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "self";
    warm_up();
    if (strcmp(mode, "self") == 0) {
        if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) die("prctl(PR_SET_KEEPCAPS)");
        if (setresuid(NOBODY, NOBODY, NOBODY) != 0) die("setresuid");
        regain_setid_caps();
        if (setresgid(NOBODY, NOBODY, NOBODY) != 0) die("setresgid");
        drop_leak();
    } else if (strcmp(mode, "thread") == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) die("pthread_create");
        if (setgroups(0, NULL) != 0) die("setgroups");
        if (setresgid(NOBODY, NOBODY, NOBODY) != 0) die("setresgid");
        if (setresuid(NOBODY, NOBODY, NOBODY) != 0) die("setresuid");
        pthread_mutex_lock(&mu);
        dropped = 1;
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
        drop_leak();
        if (pthread_join(t, NULL) != 0) die("pthread_join");
    } else if (strcmp(mode, "plain") == 0) {
        if (getuid() != NOBODY) { fprintf(stderr, "privdrop plain: not running as nobody\n"); return 1; }
        drop_leak();
    } else {
        fprintf(stderr, "privdrop: unknown mode %s\n", mode);
        return 1;
    }
    uid_t ru, eu, su;
    gid_t rg, eg, sg;
    if (getresuid(&ru, &eu, &su) != 0 || getresgid(&rg, &eg, &sg) != 0) die("getresuid");
    printf("privdrop %s: uid=%d,%d,%d gid=%d,%d,%d\n", mode, (int)ru, (int)eu, (int)su, (int)rg, (int)eg, (int)sg);
    printf("{\"mode\": \"%s\", \"uid\": %d, \"gid\": %d, \"sites\": {\"drop_leak\": {\"bytes\": 50000, \"count\": 50}}}\n",
           mode, (int)eu, (int)eg);
    return 0;
}
