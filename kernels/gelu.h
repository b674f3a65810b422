// GELU (GPT-2's tanh approximation) applied element-wise to n floats; the layout does not
// matter. The math is in activations.h, shared with the CUDA kernels.
#pragma once
#include "activations.h"

static inline void gelu_forward(float *restrict out, const float *restrict inp, int n) {
#pragma omp parallel for simd schedule(static)
    for (int i = 0; i < n; i++) out[i] = act_gelu(inp[i]);
}

// dinp = gelu'(inp) * dout, overwritten (the model never needs it summed). The derivative is
// recomputed from the saved input rather than stored: it is cheap once vectorised and saves
// a buffer the size of the MLP activations.
static inline void gelu_backward(float *restrict dinp, const float *restrict inp, const float *restrict dout, int n) {
#pragma omp parallel for simd schedule(static)
    for (int i = 0; i < n; i++) dinp[i] = act_gelu_grad(inp[i]) * dout[i];
}
