/* A service started by a wrapper that changes user and execs it under the same pid
 * (start-stop-daemon --chuid, setpriv, su, runuser, gosu; see chuid_exec.c): leaks 50 blocks
 * of 1000 bytes in service_leak, prints "service: uid=U gid=G" and one JSON line
 * {"pid": PID, "uid": U, "sites": {"service_leak": {"bytes": 50000, "count": 50}}}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
void *volatile sink;

NOINLINE void service_leak(void) {
    for (int i = 0; i < 50; i++) { sink = malloc(1000); memset(sink, 4, 1000); }
}

int main(void) {
    for (int i = 0; i < 1000; i++) { char *p = malloc(100 + i); p[0] = 1; free(p); }
    service_leak();
    printf("service: uid=%d gid=%d\n", (int)geteuid(), (int)getegid());
    printf("{\"pid\": %d, \"uid\": %d, \"sites\": {\"service_leak\": {\"bytes\": 50000, \"count\": 50}}}\n",
           (int)getpid(), (int)geteuid());
    return 0;
}
