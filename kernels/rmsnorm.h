// RMSNorm over the last dimension: inp, out are (N, C); weight is (C).
//   out = inp * rstd * weight,  rstd = 1 / sqrt(mean(inp^2) + eps)
// rstd, (N), is saved by the forward for the backward.
#pragma once
#include <math.h>
#include <stddef.h>

static inline void rmsnorm_forward(float *restrict out, float *restrict rstd, const float *restrict inp,
                                   const float *restrict weight, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = x[c] * r * weight[c];
        rstd[n] = r;
    }
}

// With xhat = x * rstd and g = dout * weight:
//   dinp = rstd * (g - xhat * mean(g * xhat)),  dweight = sum_n dout * xhat.
// dweight sums over rows, so it is split by channel blocks (each element owned by one thread,
// summed in row order: no race, same bits for any thread count).
static inline void rmsnorm_backward(float *restrict dinp, float *restrict dweight, const float *restrict dout,
                                    const float *restrict inp, const float *restrict weight,
                                    const float *restrict rstd, int N, int C) {
    enum { BLOCK = 16 };
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *d = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            const float r = rstd[n];
            float sgx = 0.0f;
#pragma omp simd reduction(+ : sgx)
            for (int c = 0; c < C; c++) sgx += d[c] * weight[c] * x[c];
            // xhat * mean(g * xhat) = x * (r^2 * sum(g * x) / C)
            const float k = sgx * r * r / (float)C;
#pragma omp simd
            for (int c = 0; c < C; c++) dx[c] += (d[c] * weight[c] - x[c] * k) * r;
        }
#pragma omp for schedule(static)
        for (int c0 = 0; c0 < C; c0 += BLOCK) {
            int w = C - c0 < BLOCK ? C - c0 : BLOCK;
            float acc[BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C + c0;
                const float *d = dout + (size_t)n * C + c0;
                const float r = rstd[n];
#pragma omp simd
                for (int j = 0; j < w; j++) acc[j] += d[j] * x[j] * r;
            }
            for (int j = 0; j < w; j++) dweight[c0 + j] += acc[j];
        }
    }
}
