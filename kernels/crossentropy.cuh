// Fused softmax + cross-entropy (+ dlogits) on the GPU; the CPU twin is kernels/crossentropy.h.
//
// Layout difference, on purpose: the GPU computes logits for the padded vocabulary, (N, Vp)
// with row stride Vp (a multiple of 64, so the head GEMM and every row are aligned), where
// the CPU computes (N, V). Columns V..Vp are masked: they take no part in the softmax and
// their dlogits are written as exact zeros, so the padded rows of the head get no gradient,
// as on the CPU.
//
// One block per row: the max, then the sum of exps, then (training) dlogits =
// (softmax - onehot(target)) * dloss written in place over the logits, as on the CPU.
#pragma once
#include "cuda_common.cuh"

#define CROSSENTROPY_BLOCK 512

static __global__ void crossentropy_kernel(float *losses, floatX *logits, const int *targets, float dloss, int V, int Vp,
                                           int write_grad) {
    __shared__ float shared[32];
    floatX *x = logits + (size_t)blockIdx.x * Vp;
    const int target = targets[blockIdx.x];
    const float xt = to_float(x[target]);  // read before any thread overwrites the row
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, to_float(x[i]));
    mx = block_max(mx, shared);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(to_float(x[i]) - mx);
    sum = block_sum(sum, shared);  // its __syncthreads also orders every read above before the writes below
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(sum) + mx - xt;
    if (!write_grad) return;
    const float k = dloss / sum;
    for (int i = threadIdx.x; i < Vp; i += blockDim.x) {
        float d = 0.0f;
        if (i < V) {
            d = expf(to_float(x[i]) - mx) * k;
            if (i == target) d -= dloss;
        }
        store_rn(x + i, d);
    }
}

// losses (N) = -log softmax(logits[n])[targets[n]] over the V real columns.
static inline void crossentropy_forward(float *losses, const floatX *logits, const int *targets, int N, int V, int Vp,
                                        cudaStream_t stream) {
    crossentropy_kernel<<<N, CROSSENTROPY_BLOCK, 0, stream>>>(losses, (floatX *)logits, targets, 0.0f, V, Vp, 0);
    CHECK_LAUNCH();
}

// losses as above, and logits become dlogits = (softmax - onehot) * dloss (0 in the padding).
static inline void crossentropy_forward_backward(float *losses, floatX *logits, const int *targets, float dloss, int N,
                                                 int V, int Vp, cudaStream_t stream) {
    crossentropy_kernel<<<N, CROSSENTROPY_BLOCK, 0, stream>>>(losses, logits, targets, dloss, V, Vp, 1);
    CHECK_LAUNCH();
}
