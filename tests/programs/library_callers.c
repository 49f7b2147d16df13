/* Leaks through libc, after a warm-up that makes frame pointers look usable (issue 11): a
 * program built with frame pointers calling into a libc built without them.
 *
 * First 3000 direct allocations from a chain of 12 nested program functions (freed), so that a
 * calibration on the first stacks sees deep, agreeing frame-pointer and DWARF stacks. Then, each
 * from its own function called by main:
 *   leak_strdup:   5 strdup of a 40-byte string (41 bytes each)
 *   leak_asprintf: 3 asprintf of "%0200d" (201 bytes each)
 *   leak_getline:  4 getline on a fresh NULL buffer from an in-memory stream (120 bytes each:
 *                  glibc's first getline buffer), stream closed
 *   leak_in_compare: qsort of 64 ints whose comparator leaks 16 bytes on each call; the program
 *                  counts the calls
 *   leak_fopen:    2 fopen of /dev/null never closed (one block each, glibc's FILE; its size is
 *                  glibc's business, so only the count is given)
 * Prints {"sites": {"leak_strdup": {"bytes": B, "count": N}, ...}} with what it leaked. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;
static int compare_calls;

NOINLINE static void warm(int depth) {
    if (depth > 0) {
        warm(depth - 1);
        return;
    }
    void *p = malloc(64);
    sink = p;
    free(p);
}

NOINLINE void leak_strdup(void) {
    static const char s[] = "0123456789012345678901234567890123456789";
    for (int i = 0; i < 5; i++) sink = strdup(s);
}

NOINLINE void leak_asprintf(void) {
    for (int i = 0; i < 3; i++) {
        char *p = NULL;
        if (asprintf(&p, "%0200d", i) < 0) exit(2);
        sink = p;
    }
}

NOINLINE void leak_getline(void) {
    static char text[] = "a line of text\n";
    for (int i = 0; i < 4; i++) {
        FILE *f = fmemopen(text, sizeof text - 1, "r");
        if (!f) exit(3);
        char *line = NULL;
        size_t cap = 0;
        if (getline(&line, &cap, f) < 0) exit(4);
        fclose(f);
        sink = line;
    }
}

NOINLINE static int leaky_compare(const void *a, const void *b) {
    sink = malloc(16);
    compare_calls++;
    return *(const int *)a - *(const int *)b;
}

NOINLINE void leak_in_compare(void) {
    int v[64];
    for (int i = 0; i < 64; i++) v[i] = (i * 37) % 64;
    qsort(v, 64, sizeof v[0], leaky_compare);
}

NOINLINE void leak_fopen(void) {
    for (int i = 0; i < 2; i++) sink = fopen("/dev/null", "r");
}

int main(void) {
    for (int i = 0; i < 3000; i++) warm(12);
    leak_strdup();
    leak_asprintf();
    leak_getline();
    leak_in_compare();
    leak_fopen();
    printf("{\"sites\": {\"leak_strdup\": {\"bytes\": %d, \"count\": 5}, \"leak_asprintf\": {\"bytes\": %d, \"count\": 3}, "
           "\"leak_getline\": {\"bytes\": %d, \"count\": 4}, \"leaky_compare\": {\"bytes\": %d, \"count\": %d}, "
           "\"leak_fopen\": {\"count\": 2}}}\n",
           5 * 41, 3 * 201, 4 * 120, 16 * compare_calls, compare_calls);
    return 0;
}
