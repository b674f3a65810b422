// LayerNorm over the last dimension: inp, out are (N, C); weight, bias are (C).
//   out = (inp - mean) * rstd * weight + bias,  rstd = 1 / sqrt(var + eps)  (biased variance)
// mean and rstd, (N) each, are saved by the forward for the backward.
#pragma once
#include <math.h>
#include <stddef.h>

static inline void layernorm_forward(float *restrict out, float *restrict mean, float *restrict rstd,
                                     const float *restrict inp, const float *restrict weight,
                                     const float *restrict bias, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float m = 0.0f;
#pragma omp simd reduction(+ : m)
        for (int c = 0; c < C; c++) m += x[c];
        m /= (float)C;
        // Two passes (not E[x^2] - m^2), which cancels badly when |mean| >> std.
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += d * d;
        }
        v /= (float)C;
        float r = 1.0f / sqrtf(v + eps);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = r;
    }
}

// With xhat = (x - mean) * rstd and g = dout * weight:
//   dinp = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dweight = sum_n dout * xhat,  dbias = sum_n dout.
// dinp is row-parallel; dweight/dbias sum over rows, so they are split by channel blocks
// instead (each element owned by one thread, summed in row order: no race, same bits for
// any thread count).
static inline void layernorm_backward(float *restrict dinp, float *restrict dweight, float *restrict dbias,
                                      const float *restrict dout, const float *restrict inp,
                                      const float *restrict weight, const float *restrict mean,
                                      const float *restrict rstd, int N, int C) {
    enum { BLOCK = 16 };
#pragma omp parallel
    {
#pragma omp for schedule(static) nowait
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C;
            const float *d = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            const float m = mean[n], r = rstd[n];
            float sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
            for (int c = 0; c < C; c++) {
                float g = d[c] * weight[c];
                sg += g;
                sgx += g * (x[c] - m) * r;
            }
            sg /= (float)C;
            sgx /= (float)C;
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - m) * r;
                dx[c] += (d[c] * weight[c] - sg - xhat * sgx) * r;
            }
        }
#pragma omp for schedule(static)
        for (int c0 = 0; c0 < C; c0 += BLOCK) {
            int w = C - c0 < BLOCK ? C - c0 : BLOCK;
            float accw[BLOCK] = {0}, accb[BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * C + c0;
                const float *d = dout + (size_t)n * C + c0;
                const float m = mean[n], r = rstd[n];
#pragma omp simd
                for (int j = 0; j < w; j++) {
                    accw[j] += d[j] * (x[j] - m) * r;
                    accb[j] += d[j];
                }
            }
            for (int j = 0; j < w; j++) {
                dweight[c0 + j] += accw[j];
                dbias[c0 + j] += accb[j];
            }
        }
    }
}
