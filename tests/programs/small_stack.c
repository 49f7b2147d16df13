// Threads with small stacks that allocate deep in their recursion, with as little as half a KiB
// of stack left: the preload must not be the one to overflow it. Each thread first allocates
// once near the top of its stack: the preload's first sample on a thread reads the thread's
// stack bounds, which needs about 2.5 KiB of stack (a documented limit).
// Usage: small_stack STACK_BYTES. Prints the number of blocks leaked as JSON.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *keep[4096];
static int kept;

__attribute__((noinline)) static void deep(int depth) {
    char pad[1024];
    memset(pad, depth, sizeof pad);
    if (depth > 0) {
        deep(depth - 1);
        return;
    }
    for (int i = 0; i < 100; i++) keep[__sync_fetch_and_add(&kept, 1)] = malloc(1000 + pad[0]);
}

static void *worker(void *depth) {
    free(malloc(64));
    deep((int)(long)depth);
    return NULL;
}

int main(int argc, char **argv) {
    size_t stack = argc > 1 ? strtoul(argv[1], NULL, 10) : 65536;
    for (int depth = 0; depth < 14; depth++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, stack);
        pthread_t t;
        if (pthread_create(&t, &attr, worker, (void *)(long)depth) != 0) return 3;
        pthread_join(t, NULL);
    }
    printf("{\"leaked_blocks\":%d}\n", kept);
    return 0;
}
