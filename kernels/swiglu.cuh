// SwiGLU gate on the GPU; the CPU twin is kernels/swiglu.h and the math (act_silu,
// act_silu_with_grad) is shared with it through kernels/activations.h.
// inp is (N, 2*Hd), each row [gate (Hd) | up (Hd)]; out is (N, Hd) = silu(gate) * up.
#pragma once
#include "activations.h"
#include "cuda_common.cuh"

static __global__ void swiglu_forward_kernel(floatX *out, const floatX *inp, int N, int Hd) {
    const size_t total = (size_t)N * Hd;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t n = i / Hd, j = i % Hd;
        const floatX *g = inp + n * 2 * Hd;
        store_rn(out + i, act_silu(to_float(g[j])) * to_float(g[Hd + j]));
    }
}

// dinp (N, 2*Hd) is overwritten: d gate = dout * up * silu'(gate), d up = dout * silu(gate).
static __global__ void swiglu_backward_kernel(floatX *dinp, const floatX *dout, const floatX *inp, int N, int Hd) {
    const size_t total = (size_t)N * Hd;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t n = i / Hd, j = i % Hd;
        const floatX *g = inp + n * 2 * Hd;
        floatX *dg = dinp + n * 2 * Hd;
        const float d = to_float(dout[i]), u = to_float(g[Hd + j]);
        float dsilu;
        const float silu = act_silu_with_grad(to_float(g[j]), &dsilu);
        store_rn(dg + j, d * u * dsilu);
        store_rn(dg + Hd + j, d * silu);
    }
}

static inline void swiglu_forward(floatX *out, const floatX *inp, int N, int Hd, cudaStream_t stream) {
    swiglu_forward_kernel<<<grid_for((size_t)N * Hd, 256), 256, 0, stream>>>(out, inp, N, Hd);
    CHECK_LAUNCH();
}

static inline void swiglu_backward(floatX *dinp, const floatX *dout, const floatX *inp, int N, int Hd, cudaStream_t stream) {
    swiglu_backward_kernel<<<grid_for((size_t)N * Hd, 256), 256, 0, stream>>>(dinp, dout, inp, N, Hd);
    CHECK_LAUNCH();
}
