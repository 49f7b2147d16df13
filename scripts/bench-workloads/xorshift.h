/* The workloads' random numbers: xorshift64, seeded per workload (XORSHIFT_SEED) so each is
 * repeatable run to run and no allocation or libc call is involved. */
#include <stdint.h>

static uint64_t rng = XORSHIFT_SEED;

static inline uint64_t next(void)
{
    uint64_t x = rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng = x;
}
