// Causal multi-head self-attention with grouped KV heads (GQA; KVH == H is plain MHA).
// qkv is (B, T, (H + 2*KVH) * hd): per token, H query heads of hd floats, then KVH key heads,
// then KVH value heads. Query head h reads kv head h / (H / KVH). out is (B, T, H * hd).
// att is (B, H, T, T): the softmax probabilities, kept for the backward; entries above the
// diagonal (future keys) are 0. Scores are scaled by 1/sqrt(hd).
#pragma once
#include <math.h>
#include <stddef.h>

#include "../runtime/common.h"
#include "activations.h"

// The backward keeps one row of dL/datt on the stack.
#define ATTENTION_MAX_T 4096

static inline float attention_dot_(const float *restrict a, const float *restrict b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void attention_forward(float *restrict out, float *restrict att, const float *restrict qkv, int B,
                                     int T, int H, int KVH, int hd) {
    if (KVH <= 0 || H % KVH != 0) fatal("attention: %d query heads cannot share %d kv heads", H, KVH);
    const int stride = (H + 2 * KVH) * hd;  // floats per token in qkv
    const int group = H / KVH;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            const int kvh = h / group;
            const float *base = qkv + (size_t)b * T * stride;
            const float *kbase = base + (size_t)(H + kvh) * hd;
            const float *vbase = base + (size_t)(H + KVH + kvh) * hd;
            for (int t = 0; t < T; t++) {
                const float *q = base + (size_t)t * stride + (size_t)h * hd;
                float *a = att + (((size_t)b * H + h) * T + t) * T;
                float mx = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    float s = attention_dot_(q, kbase + (size_t)t2 * stride, hd) * scale;
                    a[t2] = s;
                    mx = s > mx ? s : mx;
                }
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int t2 = 0; t2 <= t; t2++) {
                    float e = expf(a[t2] - mx);
                    a[t2] = e;
                    sum += e;
                }
                const float inv = 1.0f / sum;
#pragma omp simd
                for (int t2 = 0; t2 <= t; t2++) a[t2] *= inv;
                for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;

                float *o = out + ((size_t)b * T + t) * H * hd + (size_t)h * hd;
                for (int d = 0; d < hd; d++) o[d] = 0.0f;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *v = vbase + (size_t)t2 * stride;
                    const float p = a[t2];
#pragma omp simd
                    for (int d = 0; d < hd; d++) o[d] += p * v[d];
                }
            }
        }
    }
}

// Per query row t of head h, with p = att[t, :] and dout row g:
//   dp[t2]  = g . v[t2]
//   ds[t2]  = p[t2] * (dp[t2] - sum_j p[j] dp[j])          (softmax backward)
//   dq[t]  += scale * sum_t2 ds[t2] k[t2]
//   dk[t2] += scale * ds[t2] q[t],  dv[t2] += p[t2] g
// dk/dv of a kv head collect contributions from every query head of its group, so each
// (b, kv head) pair is one task that runs its query heads in order: no race, and the sums
// run in the same order for any thread count.
static inline void attention_backward(float *restrict dqkv, const float *restrict dout, const float *restrict qkv,
                                      const float *restrict att, int B, int T, int H, int KVH, int hd) {
    if (KVH <= 0 || H % KVH != 0) fatal("attention: %d query heads cannot share %d kv heads", H, KVH);
    if (T > ATTENTION_MAX_T) fatal("attention: sequence length %d exceeds ATTENTION_MAX_T = %d", T, ATTENTION_MAX_T);
    const int stride = (H + 2 * KVH) * hd;
    const int group = H / KVH;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int kvh = 0; kvh < KVH; kvh++) {
            float ds[ATTENTION_MAX_T];
            const size_t tok0 = (size_t)b * T * stride;
            const float *kbase = qkv + tok0 + (size_t)(H + kvh) * hd;
            const float *vbase = qkv + tok0 + (size_t)(H + KVH + kvh) * hd;
            float *dkbase = dqkv + tok0 + (size_t)(H + kvh) * hd;
            float *dvbase = dqkv + tok0 + (size_t)(H + KVH + kvh) * hd;
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                for (int t = 0; t < T; t++) {
                    const float *p = att + (((size_t)b * H + h) * T + t) * T;
                    const float *g = dout + ((size_t)b * T + t) * H * hd + (size_t)h * hd;
                    const float *q = qkv + tok0 + (size_t)t * stride + (size_t)h * hd;
                    float *dq = dqkv + tok0 + (size_t)t * stride + (size_t)h * hd;
                    float pdp = 0.0f;
                    for (int t2 = 0; t2 <= t; t2++) {
                        ds[t2] = attention_dot_(g, vbase + (size_t)t2 * stride, hd);
                        pdp += p[t2] * ds[t2];
                    }
#pragma omp simd
                    for (int t2 = 0; t2 <= t; t2++) ds[t2] = p[t2] * (ds[t2] - pdp) * scale;
                    for (int t2 = 0; t2 <= t; t2++) {
                        const float *k = kbase + (size_t)t2 * stride;
                        float *dk = dkbase + (size_t)t2 * stride;
                        float *dv = dvbase + (size_t)t2 * stride;
                        const float s = ds[t2], pt = p[t2];
#pragma omp simd
                        for (int d = 0; d < hd; d++) {
                            dq[d] += s * k[d];
                            dk[d] += s * q[d];
                            dv[d] += pt * g[d];
                        }
                    }
                }
            }
        }
    }
}
