// Rotary position embeddings on the GPU; the CPU twin (rotate_half pairing, the table and
// the formulas) is kernels/rope.h. The table, (T, hd/2, 2) = {cos, sin}, is the CPU's: it is
// filled on the host by rope_table (in double) and copied to the device once.
// qkv is (B, T, (H + 2 KVH) * hd); the H query and KVH key heads of every token are rotated
// in place, the value heads are not touched.
#pragma once
#include "cuda_common.cuh"

// One thread per (token, head, pair i < hd/2); sign = -1 rotates back (the backward).
static __global__ void rope_rotate_kernel(floatX *qkv, const float *table, int N, int T, int H, int KVH, int hd,
                                          float sign) {
    const int half = hd / 2, heads = H + KVH;
    const size_t total = (size_t)N * heads * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(idx % half);
        const size_t nh = idx / half;
        const int h = (int)(nh % heads);
        const size_t n = nh / heads;
        const float *cs = table + (size_t)(n % T) * hd;
        floatX *x1 = qkv + n * (size_t)(H + 2 * KVH) * hd + (size_t)h * hd, *x2 = x1 + half;
        const float c = cs[2 * i], s = sign * cs[2 * i + 1];
        const float a = to_float(x1[i]), b = to_float(x2[i]);
        store_rn(x1 + i, a * c - b * s);
        store_rn(x2 + i, a * s + b * c);
    }
}

static inline void rope_forward(floatX *qkv, const float *table, int B, int T, int H, int KVH, int hd, cudaStream_t stream) {
    rope_rotate_kernel<<<grid_for((size_t)B * T * (H + KVH) * (hd / 2), 256), 256, 0, stream>>>(qkv, table, B * T, T, H,
                                                                                               KVH, hd, 1.0f);
    CHECK_LAUNCH();
}

// The rotation is orthogonal: the gradient is dout rotated back by -angle, in place.
static inline void rope_backward(floatX *dqkv, const float *table, int B, int T, int H, int KVH, int hd, cudaStream_t stream) {
    rope_rotate_kernel<<<grid_for((size_t)B * T * (H + KVH) * (hd / 2), 256), 256, 0, stream>>>(dqkv, table, B * T, T, H,
                                                                                                KVH, hd, -1.0f);
    CHECK_LAUNCH();
}
