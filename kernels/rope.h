// Rotary position embeddings, applied in place to the query and key heads of qkv (layout as in
// attention.h: per token H query heads, KVH key heads, KVH value heads of hd floats; values are
// not touched). "rotate_half" pairing as in HF Llama: within a head, dims i and i + hd/2
// (i < hd/2) form a pair rotated by the angle t * theta^(-2i/hd), t = n % T the position in
// the sequence:
//   x[i]        <- x[i] cos - x[i + hd/2] sin
//   x[i + hd/2] <- x[i] sin + x[i + hd/2] cos
// table is (T, hd/2, 2) = {cos, sin}, filled once by rope_table.
#pragma once
#include <math.h>
#include <stddef.h>

#include "../runtime/common.h"

static inline void rope_table(float *table, int T, int hd, float theta) {
    if (hd <= 0 || hd % 2 != 0) fatal("rope: head size %d must be even", hd);
    const int half = hd / 2;
    // In double: t * freq reaches thousands of radians, where float would lose the angle.
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            double angle = (double)t * pow((double)theta, -2.0 * i / hd);
            table[((size_t)t * half + i) * 2] = (float)cos(angle);
            table[((size_t)t * half + i) * 2 + 1] = (float)sin(angle);
        }
    }
}

// Rotates the H + KVH q/k heads of every token by +angle (sign = 1) or -angle (sign = -1).
static inline void rope_rotate_(float *qkv, const float *restrict table, int B, int T, int H, int KVH, int hd,
                                float sign) {
    const int half = hd / 2;
    const int stride = (H + 2 * KVH) * hd;
    const int N = B * T;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *cs = table + (size_t)(n % T) * hd;
        for (int h = 0; h < H + KVH; h++) {  // q heads then k heads: contiguous
            float *restrict x1 = qkv + (size_t)n * stride + (size_t)h * hd;
            float *restrict x2 = x1 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                const float c = cs[2 * i], s = sign * cs[2 * i + 1];
                const float a = x1[i], b = x2[i];
                x1[i] = a * c - b * s;
                x2[i] = a * s + b * c;
            }
        }
    }
}

static inline void rope_forward(float *qkv, const float *table, int B, int T, int H, int KVH, int hd) {
    rope_rotate_(qkv, table, B, T, H, KVH, hd, 1.0f);
}

// The rotation is orthogonal, so the gradient w.r.t. its input is dout rotated back by -angle.
static inline void rope_backward(float *dqkv, const float *table, int B, int T, int H, int KVH, int hd) {
    rope_rotate_(dqkv, table, B, T, H, KVH, hd, -1.0f);
}
