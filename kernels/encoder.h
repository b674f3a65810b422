// Token (+ learned position) embedding. tokens is (N) = (B, T) flattened, wte is (V, C),
// wpe is (T, C) or NULL (e.g. with RoPE); out is (N, C):
//   out[n, :] = wte[tokens[n], :] + wpe[n % T, :]
// Token ids must lie in [0, V): the data loader checks them, this does not.
#pragma once
#include <stddef.h>

static inline void encoder_forward(float *restrict out, const int *restrict tokens, const float *restrict wte,
                                   const float *restrict wpe, int N, int T, int C) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * C;
        const float *e = wte + (size_t)tokens[n] * C;
        if (wpe) {
            const float *p = wpe + (size_t)(n % T) * C;
#pragma omp simd
            for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
        } else {
#pragma omp simd
            for (int c = 0; c < C; c++) o[c] = e[c];
        }
    }
}

// A token appearing several times sends several rows into the same dwte row, so the work is
// split by channel blocks, not by rows: every dwte/dwpe element is then owned by one thread
// and summed in row order, giving the same bits for any thread count.
static inline void encoder_backward(float *restrict dwte, float *restrict dwpe, const float *restrict dout,
                                    const int *restrict tokens, int N, int T, int C) {
    enum { BLOCK = 32 };
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += BLOCK) {
        int w = C - c0 < BLOCK ? C - c0 : BLOCK;
        for (int n = 0; n < N; n++) {
            const float *d = dout + (size_t)n * C + c0;
            float *g = dwte + (size_t)tokens[n] * C + c0;
#pragma omp simd
            for (int j = 0; j < w; j++) g[j] += d[j];
            if (dwpe) {
                float *p = dwpe + (size_t)(n % T) * C + c0;
#pragma omp simd
                for (int j = 0; j < w; j++) p[j] += d[j];
            }
        }
    }
}
