// Fully connected layer through BLAS: inp is (N, IC), weight is (OC, IC) (PyTorch/llm.c
// layout: one row per output channel), bias is (OC) or NULL, out is (N, OC):
//   out = inp @ weight^T + bias
#pragma once
#include <cblas.h>
#include <stddef.h>
#include <string.h>

static inline void matmul_forward(float *restrict out, const float *restrict inp, const float *restrict weight,
                                  const float *restrict bias, int N, int IC, int OC) {
    float beta = 0.0f;
    if (bias) {
        // Start from the bias and let the GEMM add to it (beta = 1): one pass over out
        // instead of a GEMM pass plus a bias pass.
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC, beta, out, OC);
}

// out = residual + inp @ weight^T + bias: a projection whose output is added to the residual
// stream, in one pass over out (the GEMM adds to residual + bias) instead of three.
static inline void matmul_forward_residual(float *restrict out, const float *restrict residual, const float *restrict inp,
                                           const float *restrict weight, const float *restrict bias, int N, int IC, int OC) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *r = residual + (size_t)n * OC;
        float *o = out + (size_t)n * OC;
        if (bias) {
#pragma omp simd
            for (int j = 0; j < OC; j++) o[j] = r[j] + bias[j];
        } else {
            memcpy(o, r, (size_t)OC * sizeof(float));
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC, 1.0f, out, OC);
}

//   dinp = dout @ weight (overwritten),  dweight += dout^T @ inp,  dbias += sum over rows of dout.
// The weight gradients accumulate (micro-batches add up); the input gradient is written,
// which spares zeroing it first. dinp and dbias may be NULL (not needed).
static inline void matmul_backward(float *restrict dinp, float *restrict dweight, float *restrict dbias,
                                   const float *restrict dout, const float *restrict inp,
                                   const float *restrict weight, int N, int IC, int OC) {
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC, weight, IC, 0.0f, dinp, IC);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
    if (dbias) {
        // Split by column blocks, each summed in row order: no race, same bits for any thread count.
        enum { BLOCK = 16 };
#pragma omp parallel for schedule(static)
        for (int o0 = 0; o0 < OC; o0 += BLOCK) {
            int w = OC - o0 < BLOCK ? OC - o0 : BLOCK;
            float acc[BLOCK] = {0};
            for (int n = 0; n < N; n++) {
                const float *d = dout + (size_t)n * OC + o0;
#pragma omp simd
                for (int j = 0; j < w; j++) acc[j] += d[j];
            }
            for (int j = 0; j < w; j++) dbias[o0 + j] += acc[j];
        }
    }
}
