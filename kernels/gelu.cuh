// GELU (GPT-2's tanh form) on the GPU; the CPU twin is kernels/gelu.h and the math,
// act_gelu / act_gelu_grad, is shared with it through kernels/activations.h.
// Element-wise over n values. (The forward can also run inside cuBLASLt's GEMM epilogue:
// see matmul.cuh.)
#pragma once
#include "activations.h"
#include "cuda_common.cuh"

static __global__ void gelu_forward_kernel(floatX *out, const floatX *inp, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        store_rn(out + i, act_gelu(to_float(inp[i])));
}

// dinp = gelu'(inp) * dout, overwritten (the CPU adds into a zeroed buffer: the same values).
static __global__ void gelu_backward_kernel(floatX *dinp, const floatX *inp, const floatX *dout, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        store_rn(dinp + i, act_gelu_grad(to_float(inp[i])) * to_float(dout[i]));
}

static inline void gelu_forward(floatX *out, const floatX *inp, size_t n, cudaStream_t stream) {
    gelu_forward_kernel<<<grid_for(n, 256), 256, 0, stream>>>(out, inp, n);
    CHECK_LAUNCH();
}

static inline void gelu_backward(floatX *dinp, const floatX *inp, const floatX *dout, size_t n, cudaStream_t stream) {
    gelu_backward_kernel<<<grid_for(n, 256), 256, 0, stream>>>(dinp, inp, dout, n);
    CHECK_LAUNCH();
}
