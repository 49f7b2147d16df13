/* service.c - service-like workload for scripts/bench.
 *
 * usage: service REQUESTS
 *
 * A single-threaded request loop.  Each request:
 *   - allocates a request buffer (256 B .. 16 KiB) and 4..15 header strings
 *     plus a calloc'd header array (parse_request),
 *   - looks its key up in a cache; a miss inserts an entry with a value of
 *     64 B .. 2 KiB, 5% of hits replace the value (cache_get).  There are
 *     CACHE_KEYS keys, so the cache grows and then plateaus (~12 MiB),
 *   - builds a response in a string builder that starts at 256 B and
 *     doubles with realloc until it fits 1..32 KiB (build_response),
 *   - frees everything that belongs to the request.
 * Every 1000th request leaks 4 KiB into a global list that is never freed
 * (the slow leak a leak profiler should find).
 * The call chain is a few frames deep (all noinline) so stack capture costs
 * what it costs in a real program.  Deterministic xorshift RNG.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))
#define CACHE_BUCKETS 8192
#define CACHE_KEYS 12000
#define LEAK_EVERY 1000
#define LEAK_BYTES 4096

#define XORSHIFT_SEED 0x2545F4914F6CDD1Dull
#include "xorshift.h"

static size_t rand_between_log(unsigned lo_bits, unsigned hi_bits)
{
    uint64_t r = next();
    unsigned b = lo_bits + (unsigned)(r % (hi_bits - lo_bits));
    size_t base = (size_t)1 << b;
    return base + (size_t)((r >> 16) & (base - 1));
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "service: out of memory\n");
        exit(2);
    }
    return p;
}

struct request {
    uint32_t key;
    char *buf;
    size_t len;
    char **hdrs;
    int nhdrs;
};

struct entry {
    uint32_t key;
    char *val;
    size_t vlen;
    struct entry *next;
};

struct leak {
    struct leak *next;
    char data[LEAK_BYTES - sizeof(struct leak *)];
};

static struct entry *cache[CACHE_BUCKETS];
static size_t cache_entries;
static struct leak *leaked;
static size_t leaked_count;
static uint64_t checksum;

static NOINLINE char *dup_header(uint64_t r)
{
    size_t n = 16 + (size_t)(r % 113);
    char *s = xmalloc(n);
    memset(s, 'a' + (int)(r % 26), n - 1);
    s[n - 1] = 0;
    return s;
}

static NOINLINE void parse_request(struct request *rq, uint64_t i)
{
    rq->key = (uint32_t)(next() % CACHE_KEYS);
    rq->len = rand_between_log(8, 14);
    rq->buf = xmalloc(rq->len);
    memset(rq->buf, (int)(i & 0x7f), rq->len < 256 ? rq->len : 256);
    rq->buf[rq->len - 1] = 0;
    rq->nhdrs = 4 + (int)(next() % 12);
    rq->hdrs = calloc((size_t)rq->nhdrs, sizeof *rq->hdrs);
    if (!rq->hdrs)
        exit(2);
    for (int h = 0; h < rq->nhdrs; h++)
        rq->hdrs[h] = dup_header(next());
}

static NOINLINE struct entry *cache_insert(uint32_t key)
{
    struct entry *e = xmalloc(sizeof *e);
    e->key = key;
    e->vlen = rand_between_log(6, 11);
    e->val = xmalloc(e->vlen);
    memset(e->val, (int)key, e->vlen);
    struct entry **b = &cache[key % CACHE_BUCKETS];
    e->next = *b;
    *b = e;
    cache_entries++;
    return e;
}

static NOINLINE struct entry *cache_get(uint32_t key)
{
    for (struct entry *e = cache[key % CACHE_BUCKETS]; e; e = e->next) {
        if (e->key == key) {
            if (next() % 100 < 5) { /* refresh: replace the value */
                free(e->val);
                e->vlen = rand_between_log(6, 11);
                e->val = xmalloc(e->vlen);
                memset(e->val, (int)key + 1, e->vlen);
            }
            return e;
        }
    }
    return cache_insert(key);
}

static NOINLINE char *build_response(struct request *rq, struct entry *e, size_t *outlen)
{
    size_t want = rand_between_log(10, 15);
    size_t cap = 256, len = 0;
    char *out = xmalloc(cap);
    while (len < want) {
        size_t chunk = e->vlen < want - len ? e->vlen : want - len;
        if (len + chunk > cap) {
            while (len + chunk > cap)
                cap *= 2;
            char *grown = realloc(out, cap);
            if (!grown)
                exit(2);
            out = grown;
        }
        memcpy(out + len, e->val, chunk);
        len += chunk;
    }
    out[0] = rq->buf[0];
    *outlen = len;
    return out;
}

static NOINLINE void maybe_leak(uint64_t i)
{
    if (i % LEAK_EVERY != LEAK_EVERY - 1)
        return;
    struct leak *l = xmalloc(sizeof *l);
    memset(l->data, (int)i, sizeof l->data);
    l->next = leaked;
    leaked = l;
    leaked_count++;
}

static NOINLINE void handle_request(uint64_t i)
{
    struct request rq;
    parse_request(&rq, i);
    struct entry *e = cache_get(rq.key);
    size_t outlen;
    char *resp = build_response(&rq, e, &outlen);
    checksum += (unsigned char)resp[outlen - 1] + outlen + (unsigned char)rq.hdrs[0][0];
    free(resp);
    for (int h = 0; h < rq.nhdrs; h++)
        free(rq.hdrs[h]);
    free(rq.hdrs);
    free(rq.buf);
    maybe_leak(i);
}

static NOINLINE void serve(uint64_t requests)
{
    for (uint64_t i = 0; i < requests; i++)
        handle_request(i);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s REQUESTS\n", argv[0]);
        return 2;
    }
    uint64_t requests = strtoull(argv[1], NULL, 10);
    serve(requests);
    printf("service requests=%llu cache_entries=%zu leaked=%zu (%zu KiB) checksum=%llu\n",
           (unsigned long long)requests, cache_entries, leaked_count,
           leaked_count * LEAK_BYTES / 1024, (unsigned long long)checksum);
    return 0; /* the cache and the leak list are deliberately not freed */
}
