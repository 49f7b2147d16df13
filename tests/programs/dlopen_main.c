/* dlopen LIB, wait WAIT_MS, call its plugin_leak(6), then `keep` it loaded or `close` it
 * (dlclose after another WAIT_MS). Prints one JSON line. Usage: dlopen_main LIB keep|close WAIT_MS */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: dlopen_main LIB keep|close WAIT_MS\n"); return 1; }
    useconds_t wait_us = (useconds_t)atoi(argv[3]) * 1000;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    if (wait_us) usleep(wait_us);
    int (*leak)(int) = (int (*)(int))dlsym(h, "plugin_leak");
    if (!leak) { fprintf(stderr, "dlsym: %s\n", dlerror()); return 1; }
    int bytes = leak(6);
    int closed = 0;
    if (strcmp(argv[2], "close") == 0) {
        if (wait_us) usleep(wait_us);
        if (dlclose(h) != 0) { fprintf(stderr, "dlclose: %s\n", dlerror()); return 1; }
        closed = 1;
    }
    printf("{\"closed\": %s, \"sites\": {\"plugin_leak\": {\"bytes\": %d, \"count\": 6}}}\n", closed ? "true" : "false", bytes);
    return 0;
}
