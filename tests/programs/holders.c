/* Four ways to keep memory, 16 MiB each, for `ctl --scan`:
 * - lost_request: blocks whose only pointer is dropped (a missing free);
 * - keep_in_global: blocks stored in a global array, g_kept;
 * - table_entry: blocks stored in a sparse heap array grown by realloc (table_grow: one slot
 *   in 256 used, as a hash table might, so the array reaches 8 MiB and is surely sampled),
 *   whose pointer is the global g_table;
 * - list_node: a linked list from the global g_list.
 * Every block starts with a line of text naming what it is. Then it runs on for argv[1]
 * seconds with a 10 ms tick that allocates a little (argv[2] threads allocate meanwhile, and
 * one maps and unmaps memory in a loop), and prints the longest tick gap it saw. With argv[3]
 * "trickle", each tick also drops one more request and adds one more list node. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define PER_SITE (16 << 20) / BLOCK

void *g_kept[PER_SITE];
void **g_table;
static size_t g_table_len, g_table_cap;
struct node {
    struct node *next;
    char text[BLOCK - sizeof(struct node *)];
};
struct node *g_list;
static volatile int stopping;
static void *volatile sink;

__attribute__((noinline)) void lost_request(int i) {
    char *p = malloc(BLOCK);
    snprintf(p, BLOCK, "lost request #%d from 10.0.0.7", i);
    sink = p + 1; /* an interior pointer, overwritten by the next: nothing keeps it */
}

__attribute__((noinline)) void keep_in_global(int i) {
    g_kept[i] = malloc(BLOCK);
    snprintf(g_kept[i], BLOCK, "kept session #%d", i);
}

#define TABLE_STRIDE 256

__attribute__((noinline)) void table_grow(void) {
    size_t old = g_table_cap;
    g_table_cap = g_table_cap ? g_table_cap * 2 : 1024;
    g_table = realloc(g_table, g_table_cap * sizeof *g_table);
    memset(g_table + old, 0, (g_table_cap - old) * sizeof *g_table);
}

__attribute__((noinline)) void table_entry(int i) {
    if ((g_table_len + 1) * TABLE_STRIDE > g_table_cap) table_grow();
    char *p = malloc(BLOCK);
    snprintf(p, BLOCK, "table entry #%d", i);
    g_table[g_table_len++ * TABLE_STRIDE] = p;
}

__attribute__((noinline)) void list_node(int i) {
    struct node *n = malloc(sizeof *n);
    snprintf(n->text, sizeof n->text, "list node #%d", i);
    n->next = g_list;
    g_list = n;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *churn(void *arg) {
    (void)arg;
    while (!stopping) {
        void *p[16];
        for (int i = 0; i < 16; i++) p[i] = malloc(64 + i * 100);
        for (int i = 0; i < 16; i++) free(p[i]);
        usleep(100);
    }
    return NULL;
}

static void *mapper(void *arg) {
    (void)arg;
    while (!stopping) {
        void *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m != MAP_FAILED) {
            memset(m, 1, 1 << 20);
            munmap(m, 1 << 20);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 5;
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    int trickle = argc > 3 && strcmp(argv[3], "trickle") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < PER_SITE; i++) {
        lost_request(i);
        keep_in_global(i);
        table_entry(i);
        list_node(i);
    }
    pthread_t t[64];
    int n = 0;
    for (int i = 0; i < threads && n < 63; i++) pthread_create(&t[n++], NULL, churn, NULL);
    if (threads > 0) pthread_create(&t[n++], NULL, mapper, NULL);
    printf("leaked %d per site\n", PER_SITE);
    double start = now(), last = start, worst = 0;
    while (now() - start < secs) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        free(malloc(100));
        if (trickle) {
            static int k = PER_SITE;
            lost_request(k);
            list_node(k++);
        }
        double t = now();
        if (t - last > worst) worst = t - last;
        last = t;
    }
    stopping = 1;
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    printf("{\"per_site\":%d,\"worst_tick_ms\":%.1f}\n", PER_SITE, worst * 1000);
    return 0;
}
