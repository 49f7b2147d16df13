/* One thread, no thread ever created (so leaktrace has no helper thread and prefaults from
 * its hooks): before each malloc+free pair, is the page of the event ring LOOKAHEAD bytes past
 * the ring's head already in this process's page tables (/proc/self/pagemap, "present")?
 * Without prefaulting it is not: the hook that first writes it takes the page fault.
 *
 * The trace is found in /proc/self/maps (a mapping whose file name ends in ".lt"); the ring's
 * place and the head are read from its header (FORMAT.md: region table at 64, ring = region 4,
 * RING_CAPACITY at 168, RING_HEAD at 288).  Only the ring's first pass is checked, and the
 * first WARMUP pairs are not: prefaulting starts with the trace's first sample.
 *
 * Usage: prefault PAIRS LOOKAHEAD.  Prints one JSON line. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WARMUP 200

void *volatile sink;

static char *find_trace(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    char *base = NULL;
    while (f && fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        if (n > 4 && strcmp(line + n - 4, ".lt\n") == 0) {
            base = (char *)(uintptr_t)strtoull(line, NULL, 16);
            break;
        }
    }
    if (f)
        fclose(f);
    return base;
}

static int present(int pagemap, const char *addr) {
    uint64_t entry = 0;
    off_t at = (off_t)((uintptr_t)addr / 4096) * 8;
    if (pread(pagemap, &entry, sizeof entry, at) != sizeof entry) {
        perror("pagemap");
        exit(2);
    }
    return (int)(entry >> 63);
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 20000;
    uint64_t lookahead = argc > 2 ? strtoull(argv[2], NULL, 0) : 65536;
    sink = malloc(100); /* the trace reserves its file at its first sample */
    free(sink);
    char *trace = find_trace();
    if (!trace) {
        fprintf(stderr, "no trace mapping in /proc/self/maps\n");
        return 2;
    }
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    if (pagemap < 0) {
        perror("/proc/self/pagemap");
        return 2;
    }
    const volatile uint64_t *hdr = (const volatile uint64_t *)trace;
    uint64_t ring_off = hdr[(64 + 4 * 16) / 8], ring_len = hdr[(64 + 4 * 16 + 8) / 8];
    uint64_t capacity = hdr[168 / 8];
    long checked = 0, absent = 0, first_absent = -1;
    for (long i = 0; i < pairs; i++) {
        uint64_t head = hdr[288 / 8];
        uint64_t ahead = head * 48 + lookahead;
        if (head >= capacity || ahead >= ring_len)
            break;
        if (i >= WARMUP) {
            checked++;
            if (!present(pagemap, trace + ring_off + ahead)) {
                absent++;
                if (first_absent < 0)
                    first_absent = i;
            }
        }
        sink = malloc(16 + (i & 63));
        free(sink);
    }
    printf("{\"checked\": %ld, \"absent\": %ld, \"first_absent_pair\": %ld, \"ring_bytes\": %llu}\n", checked,
           absent, first_absent, (unsigned long long)ring_len);
    return 0;
}
