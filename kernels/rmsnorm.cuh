// RMSNorm on the GPU; the CPU twin (and the formulas) are in kernels/rmsnorm.h.
// inp, out are (N, C); weight (C); rstd (N), fp32, saved for the backward. One warp per row,
// with the CPU's expressions term for term. The fused variant adds the residual first
// (res = a + b, out = RMSNorm(res)), as layernorm.cuh does.
#pragma once
#include "colsum.cuh"

// a == NULL: the input is res itself (no residual add).
static __global__ void rmsnorm_forward_kernel(floatX *res, floatX *out, float *rstd, const floatX *a, const floatX *b,
                                              const floatX *weight, int N, int C, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    floatX *x = res + (size_t)row * C;
    if (a) {  // each lane writes, then reads back, only its own columns
        const floatX *ar = a + (size_t)row * C, *br = b + (size_t)row * C;
        for (int c = lane; c < C; c += 32) store_rn(x + c, to_float(ar[c]) + to_float(br[c]));
    }
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float xc = to_float(x[c]);
        ss += xc * xc;
    }
    const float r = 1.0f / sqrtf(warp_sum(ss) / (float)C + eps);
    floatX *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) store_rn(o + c, to_float(x[c]) * r * to_float(weight[c]));
    if (lane == 0) rstd[row] = r;
}

static inline void rmsnorm_forward(floatX *out, float *rstd, const floatX *inp, const floatX *weight, int N, int C,
                                   float eps, cudaStream_t stream) {
    rmsnorm_forward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>((floatX *)inp, out, rstd, NULL, NULL, weight, N, C, eps);
    CHECK_LAUNCH();
}

// res = a + b, out = RMSNorm(res).
static inline void fused_residual_rmsnorm_forward(floatX *res, floatX *out, float *rstd, const floatX *a, const floatX *b,
                                                  const floatX *weight, int N, int C, float eps, cudaStream_t stream) {
    rmsnorm_forward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(res, out, rstd, a, b, weight, N, C, eps);
    CHECK_LAUNCH();
}

// dinp += rstd * (g - x * (rstd^2 * sum(g * x) / C)), g = dout * weight; one warp per row.
static __global__ void rmsnorm_backward_dinp_kernel(floatX *dinp, const floatX *dout, const floatX *inp,
                                                    const floatX *weight, const float *rstd, int N, int C) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const floatX *x = inp + (size_t)row * C, *d = dout + (size_t)row * C;
    floatX *dx = dinp + (size_t)row * C;
    const float r = rstd[row];
    float sgx = 0.0f;
    for (int c = lane; c < C; c += 32) sgx += to_float(d[c]) * to_float(weight[c]) * to_float(x[c]);
    const float k = warp_sum(sgx) * r * r / (float)C;
    for (int c = lane; c < C; c += 32)
        store_rn(dx + c, to_float(dx[c]) + (to_float(d[c]) * to_float(weight[c]) - to_float(x[c]) * k) * r);
}

// What dweight sums over rows: dout * x * rstd.
struct RMSNormParamGrads {
    const floatX *dout, *inp;
    const float *rstd;
    int C;
    __device__ void operator()(int n, int c, float *v) const {
        const size_t i = (size_t)n * C + c;
        v[0] = to_float(dout[i]) * to_float(inp[i]) * rstd[n];
    }
};

// dinp and dweight are accumulated into (+=). scratch: colsum_scratch_floats(N, C, 1) floats.
static inline void rmsnorm_backward(floatX *dinp, float *dweight, const floatX *dout, const floatX *inp,
                                    const floatX *weight, const float *rstd, int N, int C, float *scratch,
                                    cudaStream_t stream) {
    rmsnorm_backward_dinp_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(dinp, dout, inp, weight, rstd, N, C);
    CHECK_LAUNCH();
    colsum<1>(ColsumOut<1>{{dweight}}, N, C, RMSNormParamGrads{dout, inp, rstd, C}, scratch, stream);
}
