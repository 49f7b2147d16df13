// A pretend request-serving service with three kinds of memory behaviour, for the leaktrace
// demo: a session table that is never pruned (the leak), a bounded response cache that fills
// up and then only replaces entries (not a leak), and per-request scratch buffers (churn).
//
// Usage: leaky_service [seconds]   (default 8)

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct session {
    struct session *next;
    char token[4064];
};

static struct session *sessions;            // grows forever: nobody removes old sessions
#define CACHE_SLOTS 4096
static char *response_cache[CACHE_SLOTS];   // bounded: a full slot is replaced, not added

static unsigned long long rng = 88172645463325252ull;
static unsigned long long next_random(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static void remember_session(unsigned long long id) {
    struct session *s = malloc(sizeof *s);
    snprintf(s->token, sizeof s->token, "session-%llu", id);
    s->next = sessions;
    sessions = s;
}

__attribute__((noinline)) static void cache_response(unsigned long long key) {
    size_t slot = key % CACHE_SLOTS;
    free(response_cache[slot]);
    response_cache[slot] = malloc(4096);
    memset(response_cache[slot], (int)key, 64);
}

__attribute__((noinline)) static size_t handle_request(unsigned long long id) {
    size_t n = 64 + next_random() % 16384;
    char *scratch = malloc(n);
    memset(scratch, 'x', n < 256 ? n : 256);
    size_t result = (size_t)scratch[n / 2 % 256];
    free(scratch);
    if (id % 8 == 0) cache_response(next_random() % (id < 40000 ? id + 1 : 40000));
    if (id % 100 == 0) remember_session(id);
    return result;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 8.0;
    double start = now_seconds();
    unsigned long long id = 0;
    size_t sink = 0;
    while (now_seconds() - start < seconds) {
        for (int i = 0; i < 1000; i++) sink += handle_request(++id);
        struct timespec pause = {0, 2000000};  // 2 ms: ~500k requests per second at most
        nanosleep(&pause, NULL);
    }
    printf("served %llu requests, %llu sessions kept (%llu KiB) [%zu]\n", id, id / 100,
           id / 100 * sizeof(struct session) / 1024, sink);
    return 0;
}
