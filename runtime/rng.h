// A small counter-based RNG (splitmix64). Its whole state is one integer, so it is
// trivially saved in checkpoints and identical on every platform and compiler.
#pragma once
#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t state;
} Rng;

static inline void rng_seed(Rng *r, uint64_t seed) { r->state = seed * 0x9E3779B97F4A7C15ull + 1; }

static inline uint64_t rng_u64(Rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [0, 1) with 24 random bits, exactly representable as float.
static inline float rng_uniform(Rng *r) { return (float)(rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

// Uniform in [0, 1) with 53 random bits.
static inline double rng_uniform_double(Rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

// Standard normal by Box-Muller; uses two draws and caches nothing, so the state stays one word.
static inline float rng_normal(Rng *r) {
    double u1 = 1.0 - rng_uniform_double(r);  // (0, 1]
    double u2 = rng_uniform_double(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// Uniform integer in [0, n).
static inline uint64_t rng_below(Rng *r, uint64_t n) { return n ? rng_u64(r) % n : 0; }
