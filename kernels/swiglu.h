// SwiGLU gate of a Llama-style MLP. inp is (N, 2*Hd): each row is [gate (Hd) | up (Hd)], so one
// GEMM produces both halves; out is (N, Hd) = silu(gate) * up.
#pragma once
#include <stddef.h>

#include "activations.h"

static inline void swiglu_forward(float *restrict out, const float *restrict inp, int N, int Hd) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *g = inp + (size_t)n * 2 * Hd;
        const float *u = g + Hd;
        float *o = out + (size_t)n * Hd;
#pragma omp simd
        for (int j = 0; j < Hd; j++) o[j] = act_silu(g[j]) * u[j];
    }
}

// dinp is (N, 2*Hd) like inp, overwritten: d gate = dout * up * silu'(gate), d up = dout * silu(gate).
static inline void swiglu_backward(float *restrict dinp, const float *restrict dout, const float *restrict inp, int N, int Hd) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *g = inp + (size_t)n * 2 * Hd;
        const float *u = g + Hd;
        const float *d = dout + (size_t)n * Hd;
        float *dg = dinp + (size_t)n * 2 * Hd;
        float *du = dg + Hd;
#pragma omp simd
        for (int j = 0; j < Hd; j++) {
            float dsilu;
            float silu = act_silu_with_grad(g[j], &dsilu);
            dg[j] = d[j] * u[j] * dsilu;
            du[j] = d[j] * silu;
        }
    }
}
