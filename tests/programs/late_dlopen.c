/* Loads the tracer late: dlopen(LIB) from a program that was not started under it, then
 * allocates and frees on this thread and on a new one. The loader must find the tracer's
 * static TLS block in its surplus, or fail the dlopen cleanly; the program runs on either way.
 * Prints {"loaded": bool, "error": "...", "checksum": N}. Usage: late_dlopen LIB */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *churn(void *arg) {
    unsigned long sum = (unsigned long)arg;
    for (int i = 0; i < 20000; i++) {
        unsigned char *p = malloc(16 + (size_t)(i % 512));
        p[0] = (unsigned char)i;
        sum += p[0];
        free(p);
    }
    return (void *)sum;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: late_dlopen LIB\n"); return 1; }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    const char *err = h ? "" : dlerror();
    void *mine = churn(0);
    pthread_t t;
    void *theirs = 0;
    if (pthread_create(&t, 0, churn, (void *)1) != 0 || pthread_join(t, &theirs) != 0) return 1;
    char quoted[512];
    size_t n = 0;
    for (const char *c = err; *c && n + 2 < sizeof quoted; c++)
        if (*c != '"' && *c != '\\') quoted[n++] = *c;
    quoted[n] = 0;
    printf("{\"loaded\": %s, \"error\": \"%s\", \"checksum\": %lu}\n", h ? "true" : "false", quoted,
           (unsigned long)mine + (unsigned long)theirs);
    return 0;
}
