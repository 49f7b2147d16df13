/* A shared library that leaks, for the dlopen/dlclose test: built with cc -shared -fPIC -g. */
#include <stdlib.h>
#include <string.h>

void *volatile plugin_sink;

__attribute__((noinline)) int plugin_leak(int n) {
    for (int i = 0; i < n; i++) {
        plugin_sink = malloc(4321);
        memset(plugin_sink, 8, 4321);
    }
    return n * 4321;
}
