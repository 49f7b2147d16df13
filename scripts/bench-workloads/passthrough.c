/* passthrough.c - the do-nothing LD_PRELOAD interposer used as the floor in
 * scripts/bench ("passthrough" config).  It defines the glibc allocation
 * entry points and forwards each straight to glibc's __libc_* aliases, with
 * the argument checks glibc itself does (glibc 2.36 semantics).  Whatever an
 * LD_PRELOAD malloc tool costs above this is the tool's own work.
 *
 * build: cc -O2 -g -fPIC -shared -fno-builtin -o libpassthrough.so passthrough.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *ptr);
extern void *__libc_calloc(size_t nmemb, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);

#define EXPORT __attribute__((visibility("default")))

static inline int is_pow2(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

EXPORT void *malloc(size_t size) { return __libc_malloc(size); }

EXPORT void free(void *ptr) { __libc_free(ptr); }

EXPORT void *calloc(size_t nmemb, size_t size) { return __libc_calloc(nmemb, size); }

EXPORT void *realloc(void *ptr, size_t size) { return __libc_realloc(ptr, size); }

EXPORT void *reallocarray(void *ptr, size_t nmemb, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(nmemb, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(ptr, bytes);
}

EXPORT int posix_memalign(void **memptr, size_t alignment, size_t size)
{
    /* glibc: EINVAL unless alignment is a power-of-two multiple of sizeof(void *) */
    if (alignment % sizeof(void *) != 0 || !is_pow2(alignment / sizeof(void *)))
        return EINVAL;
    int saved = errno;
    void *p = __libc_memalign(alignment, size);
    errno = saved;
    if (p == NULL)
        return ENOMEM;
    *memptr = p;
    return 0;
}

EXPORT void *aligned_alloc(size_t alignment, size_t size)
{
    /* glibc 2.36: NULL/EINVAL unless alignment is a power of two */
    if (!is_pow2(alignment)) {
        errno = EINVAL;
        return NULL;
    }
    return __libc_memalign(alignment, size);
}

EXPORT void *memalign(size_t alignment, size_t size) { return __libc_memalign(alignment, size); }

EXPORT void *valloc(size_t size) { return __libc_valloc(size); }

EXPORT void *pvalloc(size_t size) { return __libc_pvalloc(size); }
