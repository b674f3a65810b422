// Causal multi-head self-attention with grouped KV heads (GQA; KVH == H is plain MHA).
// qkv is (B, T, (H + 2*KVH) * hd): per token, H query heads of hd floats, then KVH key heads,
// then KVH value heads. Query head h reads kv head h / (H / KVH). out is (B, T, H * hd).
// att is (B, H, T, T): the softmax probabilities, kept for the backward; entries above the
// diagonal (future keys) are 0. Scores are scaled by 1/sqrt(hd).
//
// Layout of the work (why it is not three plain loops): per pair of tokens there are only hd
// multiply-adds, so a dot product per pair spends more on the horizontal sum than on the
// products. Instead keys (or values) are transposed, one tile of ATTENTION_TILE tokens at a
// time, so that the inner loops run along the key index; and queries go four rows at a time,
// which gives the CPU independent chains and loads each k/v row once for four queries. Rows
// of a 4-query block compute scores up to the block's last row, rounded up to 32 keys; the
// softmax zeroes everything past each row's diagonal, and the products then run over those
// exact zeros. So causality is exact for finite inputs, but a NaN or inf in the value of a
// token can reach the (already NaN-bound) outputs of the up to 3 tokens before it in its block.
// Per-thread stack scratch: ~85 KiB in the forward, ~220 KiB in the backward (hd <= 256).
#pragma once
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "../runtime/common.h"
#include "activations.h"

#define ATTENTION_TILE 64     // keys per transposed tile (a multiple of 32)
#define ATTENTION_MAX_HD 256  // bounds the per-thread stack scratch (a tile is 64 KiB)
#define ATTENTION_MAX_T 4096  // bounds the per-thread rows of T floats on the stack

static inline void attention_check_(int T, int H, int KVH, int hd) {
    if (KVH <= 0 || H % KVH != 0) fatal("attention: %d query heads cannot share %d kv heads", H, KVH);
    if (hd <= 0 || hd > ATTENTION_MAX_HD) fatal("attention: head size %d is not in 1..%d", hd, ATTENTION_MAX_HD);
    if (T > ATTENTION_MAX_T) fatal("attention: sequence length %d exceeds ATTENTION_MAX_T = %d", T, ATTENTION_MAX_T);
}

// Number of key columns [0, n) that the scores of row t's 4-query block cover: through the
// block's last row, rounded up to whole 32-key chunks, capped by the row's key tile.
static inline int attention_cols_(int t, int T) {
    const int t0 = t & ~3, end = t0 + 4 < T ? t0 + 4 : T;  // rows [t0, end)
    const int k0 = t0 / ATTENTION_TILE * ATTENTION_TILE;
    const int kw = T - k0 < ATTENTION_TILE ? T - k0 : ATTENTION_TILE;
    const int n = (end - k0 + 31) & ~31;
    return k0 + (n < kw ? n : kw);
}

// dst[d * ATTENTION_TILE + j] = src[j * stride + d] for j < n, d < hd.
static inline void attention_transpose_(float *restrict dst, const float *restrict src, int n, int hd, int stride) {
    for (int j = 0; j < n; j++)
        for (int d = 0; d < hd; d++) dst[d * ATTENTION_TILE + j] = src[(size_t)j * stride + d];
}

// The products below work on 32 floats at a time in fixed-size local arrays, which gcc keeps
// in vector registers (8 independent accumulators for 4 rows); leftovers that do not fill 32
// take a plain loop through memory. Rows past a block's end alias row 0 as inputs and write
// to scratch (or have zero weights), so every call does 4 rows.

// s_r[j] = sum_{d < hd} a_r[d] * xT[d][j] for j < n: rows times a transposed tile.
static inline void attention_rows_by_tile_(float *s0, float *s1, float *s2, float *s3, const float *a0,
                                           const float *a1, const float *a2, const float *a3,
                                           const float *restrict xT, int n, int hd) {
    int j0 = 0;
    for (; j0 + 32 <= n; j0 += 32) {
        float c0[32] = {0}, c1[32] = {0}, c2[32] = {0}, c3[32] = {0};
        for (int d = 0; d < hd; d++) {
            const float *x = xT + d * ATTENTION_TILE + j0;
            const float e0 = a0[d], e1 = a1[d], e2 = a2[d], e3 = a3[d];
#pragma omp simd
            for (int k = 0; k < 32; k++) {
                c0[k] += e0 * x[k];
                c1[k] += e1 * x[k];
                c2[k] += e2 * x[k];
                c3[k] += e3 * x[k];
            }
        }
        for (int k = 0; k < 32; k++) {
            s0[j0 + k] = c0[k];
            s1[j0 + k] = c1[k];
            s2[j0 + k] = c2[k];
            s3[j0 + k] = c3[k];
        }
    }
    if (j0 == n) return;
    for (int j = j0; j < n; j++) s0[j] = s1[j] = s2[j] = s3[j] = 0.0f;
    for (int d = 0; d < hd; d++) {
        const float *x = xT + d * ATTENTION_TILE;
        const float e0 = a0[d], e1 = a1[d], e2 = a2[d], e3 = a3[d];
#pragma omp simd
        for (int j = j0; j < n; j++) {
            s0[j] += e0 * x[j];
            s1[j] += e1 * x[j];
            s2[j] += e2 * x[j];
            s3[j] += e3 * x[j];
        }
    }
}

// o_r[d] += sum_{j < n} p_r[j] * x[j * stride + d] for d < hd: rows of weights times rows of x.
static inline void attention_rows_by_rows_(float *o0, float *o1, float *o2, float *o3, const float *p0,
                                           const float *p1, const float *p2, const float *p3,
                                           const float *restrict x, int n, int hd, int stride) {
    int d0 = 0;
    for (; d0 + 32 <= hd; d0 += 32) {
        float c0[32], c1[32], c2[32], c3[32];
        for (int k = 0; k < 32; k++) {
            c0[k] = o0[d0 + k];
            c1[k] = o1[d0 + k];
            c2[k] = o2[d0 + k];
            c3[k] = o3[d0 + k];
        }
        for (int j = 0; j < n; j++) {
            const float *xr = x + (size_t)j * stride + d0;
            const float e0 = p0[j], e1 = p1[j], e2 = p2[j], e3 = p3[j];
#pragma omp simd
            for (int k = 0; k < 32; k++) {
                c0[k] += e0 * xr[k];
                c1[k] += e1 * xr[k];
                c2[k] += e2 * xr[k];
                c3[k] += e3 * xr[k];
            }
        }
        for (int k = 0; k < 32; k++) {
            o0[d0 + k] = c0[k];
            o1[d0 + k] = c1[k];
            o2[d0 + k] = c2[k];
            o3[d0 + k] = c3[k];
        }
    }
    if (d0 == hd) return;
    for (int j = 0; j < n; j++) {
        const float *xr = x + (size_t)j * stride;
        const float e0 = p0[j], e1 = p1[j], e2 = p2[j], e3 = p3[j];
#pragma omp simd
        for (int d = d0; d < hd; d++) {
            o0[d] += e0 * xr[d];
            o1[d] += e1 * xr[d];
            o2[d] += e2 * xr[d];
            o3[d] += e3 * xr[d];
        }
    }
}

// x[j * stride + d] += sum_r w_r[j] * y_r[d] for j < n, d < hd: the transposed product, used
// for dk and dv (4 query rows spread over n key rows). Each 32-wide slice of the 4 y rows is
// loaded once into registers for all n key rows.
static inline void attention_cols_by_rows_(float *x, int stride, const float *w0, const float *w1, const float *w2,
                                           const float *w3, const float *y0, const float *y1, const float *y2,
                                           const float *y3, int n, int hd) {
    int d0 = 0;
    for (; d0 + 32 <= hd; d0 += 32) {
        float c0[32], c1[32], c2[32], c3[32];
        for (int k = 0; k < 32; k++) {
            c0[k] = y0[d0 + k];
            c1[k] = y1[d0 + k];
            c2[k] = y2[d0 + k];
            c3[k] = y3[d0 + k];
        }
        for (int j = 0; j < n; j++) {
            float *xr = x + (size_t)j * stride + d0;
            const float e0 = w0[j], e1 = w1[j], e2 = w2[j], e3 = w3[j];
#pragma omp simd
            for (int k = 0; k < 32; k++) xr[k] += e0 * c0[k] + e1 * c1[k] + e2 * c2[k] + e3 * c3[k];
        }
    }
    if (d0 == hd) return;
    for (int j = 0; j < n; j++) {
        float *xr = x + (size_t)j * stride;
        const float e0 = w0[j], e1 = w1[j], e2 = w2[j], e3 = w3[j];
#pragma omp simd
        for (int d = d0; d < hd; d++) xr[d] += e0 * y0[d] + e1 * y1[d] + e2 * y2[d] + e3 * y3[d];
    }
}

static inline void attention_forward(float *restrict out, float *restrict att, const float *restrict qkv, int B,
                                     int T, int H, int KVH, int hd) {
    attention_check_(T, H, KVH, hd);
    const int stride = (H + 2 * KVH) * hd;  // floats per token in qkv
    const int ostride = H * hd;             // floats per token in out
    const int group = H / KVH;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            float kT[ATTENTION_MAX_HD * ATTENTION_TILE];
            float erow[ATTENTION_MAX_T] __attribute__((aligned(64)));
            float junk[4][ATTENTION_MAX_HD];  // outputs of the rows past the last block's end
            const int kvh = h / group;
            const float *qbase = qkv + (size_t)b * T * stride + (size_t)h * hd;
            const float *kbase = qkv + (size_t)b * T * stride + (size_t)(H + kvh) * hd;
            const float *vbase = qkv + (size_t)b * T * stride + (size_t)(H + KVH + kvh) * hd;
            float *A = att + ((size_t)b * H + h) * T * T;
            float *obase = out + (size_t)b * T * ostride + (size_t)h * hd;

            // Raw scores q.k, each 4-query block through its diagonal.
            for (int k0 = 0; k0 < T; k0 += ATTENTION_TILE) {
                const int kw = T - k0 < ATTENTION_TILE ? T - k0 : ATTENTION_TILE;
                attention_transpose_(kT, kbase + (size_t)k0 * stride, kw, hd, stride);
                for (int t0 = k0; t0 < T; t0 += 4) {
                    const int R = T - t0 < 4 ? T - t0 : 4;
                    const int cols = attention_cols_(t0, T) - k0;
                    const int n = cols < kw ? cols : kw;
                    const float *q[4];
                    float *s[4];
                    for (int r = 0; r < 4; r++) {
                        q[r] = qbase + (size_t)(t0 + (r < R ? r : 0)) * stride;
                        s[r] = r < R ? A + (size_t)(t0 + r) * T + k0 : junk[r];
                    }
                    attention_rows_by_tile_(s[0], s[1], s[2], s[3], q[0], q[1], q[2], q[3], kT, n, hd);
                }
            }
            // Softmax of scale * scores over t2 <= t; everything past the diagonal becomes 0.
            for (int t = 0; t < T; t++) {
                float *a = A + (size_t)t * T;
                const int n = attention_cols_(t, T);
                // The exp loop runs over all n computed columns (past the diagonal they hold
                // scores of future keys, whatever their values) and those are zeroed after:
                // a condition on t2 inside it would make gcc split or peel it, and the odd
                // iterations would call the scalar expf (~20x slower). erow is aligned for the
                // same reason. -inf would do as a mask but sends libmvec to its scalar path.
                float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
                for (int t2 = 0; t2 <= t; t2++) mx = a[t2] > mx ? a[t2] : mx;
#pragma omp simd
                for (int t2 = 0; t2 < n; t2++) erow[t2] = expf((a[t2] - mx) * scale);
                if (n > t + 1) memset(erow + t + 1, 0, (size_t)(n - t - 1) * sizeof(float));
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int t2 = 0; t2 < n; t2++) sum += erow[t2];
                const float inv = 1.0f / sum;
#pragma omp simd
                for (int t2 = 0; t2 < n; t2++) a[t2] = erow[t2] * inv;
                memset(a + n, 0, (size_t)(T - n) * sizeof(float));
            }
            // out = att @ v, four query rows at a time (att is 0 past each row's diagonal).
            for (int t0 = 0; t0 < T; t0 += 4) {
                const int R = T - t0 < 4 ? T - t0 : 4;
                const float *p[4];
                float *o[4];
                for (int r = 0; r < 4; r++) {
                    p[r] = A + (size_t)(t0 + (r < R ? r : 0)) * T;
                    o[r] = r < R ? obase + (size_t)(t0 + r) * ostride : junk[r];
                    memset(o[r], 0, (size_t)hd * sizeof(float));
                }
                attention_rows_by_rows_(o[0], o[1], o[2], o[3], p[0], p[1], p[2], p[3], vbase, t0 + R, hd, stride);
            }
        }
    }
}

// With p = att[t, :], g = dout[t] and o = out[t] = sum_t2 p[t2] v[t2]:
//   dp[t2]  = g . v[t2]
//   ds[t2]  = p[t2] (dp[t2] - sum_j p[j] dp[j]) = p[t2] (dp[t2] - g . o)   (softmax backward)
//   dq[t]  += scale sum_t2 ds[t2] k[t2]
//   dk[t2] += scale ds[t2] q[t],  dv[t2] += p[t2] g
// Writing the softmax term as g . o lets ds be formed one key tile at a time; o is recomputed.
// dk/dv of a kv head collect contributions from every query head of its group, so each
// (b, kv head) pair is one task that runs its query heads in order: no race, and the sums
// run in the same order for any thread count.
static inline void attention_backward(float *restrict dqkv, const float *restrict dout, const float *restrict qkv,
                                      const float *restrict att, int B, int T, int H, int KVH, int hd) {
    attention_check_(T, H, KVH, hd);
    const int stride = (H + 2 * KVH) * hd;
    const int ostride = H * hd;
    const int group = H / KVH;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int kvh = 0; kvh < KVH; kvh++) {
            float vT[ATTENTION_MAX_HD * ATTENTION_TILE];
            float dkt[ATTENTION_TILE * ATTENTION_MAX_HD], dvt[ATTENTION_TILE * ATTENTION_MAX_HD];
            float gdoto[ATTENTION_MAX_T];  // g . o of every query row
            float o[4][ATTENTION_MAX_HD];
            float dp[4][ATTENTION_TILE], ds[4][ATTENTION_TILE];
            float zero[ATTENTION_TILE] = {0};  // att row of the rows past the last block's end
            float junk[4][ATTENTION_MAX_HD];
            const size_t tok0 = (size_t)b * T * stride;
            const float *kbase = qkv + tok0 + (size_t)(H + kvh) * hd;
            const float *vbase = qkv + tok0 + (size_t)(H + KVH + kvh) * hd;
            float *dkbase = dqkv + tok0 + (size_t)(H + kvh) * hd;
            float *dvbase = dqkv + tok0 + (size_t)(H + KVH + kvh) * hd;
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                const float *A = att + ((size_t)b * H + h) * T * T;
                const float *qbase = qkv + tok0 + (size_t)h * hd;
                float *dqbase = dqkv + tok0 + (size_t)h * hd;
                const float *gbase = dout + (size_t)b * T * ostride + (size_t)h * hd;

                for (int t0 = 0; t0 < T; t0 += 4) {
                    const int R = T - t0 < 4 ? T - t0 : 4;
                    const float *p[4];
                    for (int r = 0; r < 4; r++) {
                        p[r] = A + (size_t)(t0 + (r < R ? r : 0)) * T;
                        memset(o[r], 0, (size_t)hd * sizeof(float));
                    }
                    attention_rows_by_rows_(o[0], o[1], o[2], o[3], p[0], p[1], p[2], p[3], vbase, t0 + R, hd, stride);
                    for (int r = 0; r < R; r++) {
                        const float *g = gbase + (size_t)(t0 + r) * ostride;
                        float s = 0.0f;
#pragma omp simd reduction(+ : s)
                        for (int d = 0; d < hd; d++) s += g[d] * o[r][d];
                        gdoto[t0 + r] = s;
                    }
                }

                for (int k0 = 0; k0 < T; k0 += ATTENTION_TILE) {
                    const int kw = T - k0 < ATTENTION_TILE ? T - k0 : ATTENTION_TILE;
                    attention_transpose_(vT, vbase + (size_t)k0 * stride, kw, hd, stride);
                    memset(dkt, 0, (size_t)kw * hd * sizeof(float));
                    memset(dvt, 0, (size_t)kw * hd * sizeof(float));
                    for (int t0 = k0; t0 < T; t0 += 4) {
                        const int R = T - t0 < 4 ? T - t0 : 4;
                        const int cols = attention_cols_(t0, T) - k0;
                        const int n = cols < kw ? cols : kw;
                        const float *g[4], *q[4], *p[4];
                        float *dq[4], c[4];
                        for (int r = 0; r < 4; r++) {
                            const int t = t0 + (r < R ? r : 0);
                            g[r] = gbase + (size_t)t * ostride;
                            q[r] = qbase + (size_t)t * stride;
                            p[r] = r < R ? A + (size_t)t * T + k0 : zero;  // so missing rows add nothing
                            dq[r] = r < R ? dqbase + (size_t)t * stride : junk[r];
                            c[r] = gdoto[t];
                        }
                        attention_rows_by_tile_(dp[0], dp[1], dp[2], dp[3], g[0], g[1], g[2], g[3], vT, n, hd);
                        for (int r = 0; r < 4; r++) {
                            const float *pr = p[r];
                            const float cr = c[r];
#pragma omp simd
                            for (int j = 0; j < n; j++) ds[r][j] = pr[j] * (dp[r][j] - cr) * scale;
                        }
                        attention_rows_by_rows_(dq[0], dq[1], dq[2], dq[3], ds[0], ds[1], ds[2], ds[3],
                                                kbase + (size_t)k0 * stride, n, hd, stride);
                        attention_cols_by_rows_(dkt, hd, ds[0], ds[1], ds[2], ds[3], q[0], q[1], q[2], q[3], n, hd);
                        attention_cols_by_rows_(dvt, hd, p[0], p[1], p[2], p[3], g[0], g[1], g[2], g[3], n, hd);
                    }
                    for (int j = 0; j < kw; j++) {
                        float *dk = dkbase + (size_t)(k0 + j) * stride, *dv = dvbase + (size_t)(k0 + j) * stride;
                        const float *sk = dkt + (size_t)j * hd, *sv = dvt + (size_t)j * hd;
#pragma omp simd
                        for (int d = 0; d < hd; d++) {
                            dk[d] += sk[d];
                            dv[d] += sv[d];
                        }
                    }
                }
            }
        }
    }
}
