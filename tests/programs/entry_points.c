/* Leaks through every allocation entry point leaktrace hooks, one noinline function per entry
 * point, each a distinctive number of blocks of distinctive sizes; churns a lot of memory that
 * is all freed; and tries allocations that fail or free (realloc(p, 0)), which must not leak.
 *
 * Prints one JSON line: per leaking function the bytes and blocks it leaked and the source line
 * of its allocation call; the functions that must not appear as leaking; the totals.
 *
 * Arguments are ignored except `--then-kill`: raise SIGKILL after printing, so the process
 * never runs its exit handlers. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *pvalloc(size_t size); /* deprecated; not every header declares it */

#define NOINLINE __attribute__((noinline))

struct site {
    const char *name;
    unsigned long bytes, count;
    int line;
};
static struct site sites[32];
static int nsites;

static struct site *site(const char *name) {
    for (int i = 0; i < nsites; i++)
        if (strcmp(sites[i].name, name) == 0) return &sites[i];
    sites[nsites].name = name;
    return &sites[nsites++];
}

/* Where leaked pointers go, so nothing can be optimised away. */
void *volatile sink;
static void leaked(struct site *s, void *p, size_t n) {
    if (!p) {
        fprintf(stderr, "%s: allocation of %zu bytes failed\n", s->name, n);
        exit(2);
    }
    sink = p;
    s->bytes += n;
    s->count++;
}

/* Sizes the allocator cannot satisfy; volatile so the compiler cannot see them. */
volatile size_t huge = SIZE_MAX;
volatile size_t half_huge = SIZE_MAX / 2;

NOINLINE void leak_malloc(void) {
    struct site *s = site("leak_malloc");
    for (int i = 0; i < 7; i++) {
        size_t n = 1001 + 3 * i;
        void *p = malloc(n); s->line = __LINE__;
        leaked(s, p, n);
    }
}

NOINLINE void leak_calloc(void) {
    struct site *s = site("leak_calloc");
    for (int i = 0; i < 5; i++) {
        size_t n = 13, size = 97 + i;
        void *p = calloc(n, size); s->line = __LINE__;
        leaked(s, p, n * size);
    }
}

/* Each block starts as realloc(NULL, n) and grows through the same call, moving or not; only
 * its final size stays allocated. */
NOINLINE void leak_realloc(void) {
    struct site *s = site("leak_realloc");
    for (int i = 0; i < 4; i++) {
        void *p = NULL;
        size_t n = 0;
        for (int step = 0; step < 6; step++) {
            n = 100 + 600 * step + 8 * i;
            p = realloc(p, n); s->line = __LINE__;
            if (!p) exit(2);
        }
        leaked(s, p, n);
    }
}

NOINLINE void leak_reallocarray(void) {
    struct site *s = site("leak_reallocarray");
    for (int i = 0; i < 6; i++) {
        void *p = NULL;
        size_t k = 0;
        for (k = 1; k <= 10 + (size_t)i; k++) {
            p = reallocarray(p, k, 48); s->line = __LINE__;
            if (!p) exit(2);
        }
        leaked(s, p, (k - 1) * 48);
    }
}

NOINLINE void leak_posix_memalign(void) {
    struct site *s = site("leak_posix_memalign");
    for (int i = 0; i < 3; i++) {
        void *p = NULL;
        size_t n = 2049 + 100 * i;
        int rc = posix_memalign(&p, 64, n); s->line = __LINE__;
        if (rc != 0) exit(2);
        leaked(s, p, n);
    }
}

NOINLINE void leak_aligned_alloc(void) {
    struct site *s = site("leak_aligned_alloc");
    for (int i = 0; i < 9; i++) {
        size_t n = 1536 + 256 * i;
        void *p = aligned_alloc(256, n); s->line = __LINE__;
        leaked(s, p, n);
    }
}

NOINLINE void leak_memalign(void) {
    struct site *s = site("leak_memalign");
    for (int i = 0; i < 2; i++) {
        size_t n = 5000 + i;
        void *p = memalign(128, n); s->line = __LINE__;
        leaked(s, p, n);
    }
}

NOINLINE void leak_valloc(void) {
    struct site *s = site("leak_valloc");
    for (int i = 0; i < 11; i++) {
        size_t n = 777 + i;
        void *p = valloc(n); s->line = __LINE__;
        leaked(s, p, n);
    }
}

/* pvalloc rounds the size up to whole pages; ask for whole pages so requested == usable. */
NOINLINE void leak_pvalloc(void) {
    struct site *s = site("leak_pvalloc");
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < 2; i++) {
        size_t n = page * (2 + i);
        void *p = pvalloc(n); s->line = __LINE__;
        leaked(s, p, n);
    }
}

/* One source line, two call instructions (issue 11): both arms of a conditional, and a
 * statement written twice by a macro. Each line is one site with all of its blocks. */
#define TWICE(stmt) stmt; stmt

NOINLINE void leak_both_arms(void) {
    struct site *s = site("leak_both_arms");
    for (int i = 0; i < 6; i++) {
        size_t n = 333 + i;
        void *p = (i & 1) ? realloc(NULL, n) : malloc(n); s->line = __LINE__;
        leaked(s, p, n);
    }
}

NOINLINE void leak_twice_per_line(void) {
    struct site *s = site("leak_twice_per_line");
    for (int i = 0; i < 3; i++) {
        TWICE(leaked(s, realloc(NULL, 333), 333)); s->line = __LINE__;
    }
}

/* A realloc that fails must leave the block allocated, and tracked, where it was. */
NOINLINE void leak_realloc_failed(void) {
    struct site *s = site("leak_realloc_failed");
    size_t n = 333;
    void *p = malloc(n); s->line = __LINE__;
    void *q = realloc(p, huge);
    if (q) exit(3);
    leaked(s, p, n);
}

/* Allocations that fail record nothing. Returns how many failed, as they all must. */
NOINLINE int leak_failed(void) {
    int failed = 0;
    void *p;
    failed += malloc(huge) == NULL;
    failed += calloc(half_huge, 4) == NULL;
    failed += realloc(NULL, huge) == NULL;
    failed += reallocarray(NULL, half_huge, 4) == NULL;
    failed += posix_memalign(&p, 64, huge) != 0;
    failed += aligned_alloc(64, huge) == NULL;
    failed += memalign(64, huge) == NULL;
    failed += valloc(huge) == NULL;
    failed += pvalloc(huge) == NULL;
    return failed;
}

/* glibc's realloc(p, 0) frees p and returns NULL: these blocks are not leaks. Returns whether
 * every call returned NULL (if one did not, the block it returned is freed). */
NOINLINE int free_by_realloc_zero(void) {
    int all_null = 1;
    for (int i = 0; i < 10; i++) {
        void *p = malloc(4444 + i);
        void *q = realloc(p, 0);
        if (q) {
            all_null = 0;
            free(q);
        }
    }
    return all_null;
}

/* Lots of allocation traffic through every entry point, all of it freed. */
NOINLINE void churn(int rounds) {
    void *held[64] = {0};
    for (int i = 0; i < rounds; i++) {
        int k = i & 63;
        free(held[k]);
        switch (i % 6) {
        case 0: held[k] = malloc(16 + (i * 37) % 3000); break;
        case 1: held[k] = calloc(4, 8 + i % 500); break;
        case 2: held[k] = realloc(malloc(64), 64 + i % 2000); break;
        case 3: if (posix_memalign(&held[k], 32, 100 + i % 700)) held[k] = NULL; break;
        case 4: held[k] = aligned_alloc(64, 64 * (1 + i % 20)); break;
        default: held[k] = reallocarray(NULL, 1 + i % 50, 24); break;
        }
    }
    for (int k = 0; k < 64; k++) free(held[k]);
}

int main(int argc, char **argv) {
    int then_kill = 0;
    for (int i = 1; i < argc; i++) then_kill |= strcmp(argv[i], "--then-kill") == 0;

    churn(30000);
    leak_malloc();
    leak_calloc();
    leak_realloc();
    leak_reallocarray();
    leak_posix_memalign();
    leak_aligned_alloc();
    leak_memalign();
    leak_valloc();
    leak_pvalloc();
    leak_realloc_failed();
    leak_both_arms();
    leak_twice_per_line();
    int failed = leak_failed();
    int realloc_zero_null = free_by_realloc_zero();
    churn(30000);

    unsigned long total_bytes = 0, total_count = 0;
    printf("{\"sites\":{");
    for (int i = 0; i < nsites; i++) {
        printf("%s\"%s\":{\"bytes\":%lu,\"count\":%lu,\"line\":%d}", i ? "," : "", sites[i].name,
               sites[i].bytes, sites[i].count, sites[i].line);
        total_bytes += sites[i].bytes;
        total_count += sites[i].count;
    }
    printf("},\"not_leaking\":[\"leak_failed\",\"free_by_realloc_zero\",\"churn\"],"
           "\"failed_allocations\":%d,\"realloc_zero_returned_null\":%s,"
           "\"total_bytes\":%lu,\"total_count\":%lu,\"pid\":%d}\n",
           failed, realloc_zero_null ? "true" : "false", total_bytes, total_count, (int)getpid());
    fflush(stdout);
    if (then_kill) raise(SIGKILL);
    return 0;
}
