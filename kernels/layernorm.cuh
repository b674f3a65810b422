// LayerNorm on the GPU; the CPU twin (and the formulas) are in kernels/layernorm.h.
// inp, out are (N, C); weight, bias (C); mean, rstd (N), fp32, saved for the backward.
// One warp per row; the expressions are the CPU's, term for term, so fp32 differs from the
// CPU only by the order of the row sums.
//
// fused_residual_layernorm_forward also does the residual add before it (res = a + b, then
// out = LayerNorm(res)): one pass over the rows instead of two, as llm.c does.
#pragma once
#include "colsum.cuh"

// a == NULL: the input is res itself (no residual add).
static __global__ void layernorm_forward_kernel(floatX *res, floatX *out, float *mean, float *rstd, const floatX *a,
                                                const floatX *b, const floatX *weight, const floatX *bias, int N,
                                                int C, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    floatX *x = res + (size_t)row * C;
    if (a) {  // each lane writes, then reads back, only its own columns: no sync needed
        const floatX *ar = a + (size_t)row * C, *br = b + (size_t)row * C;
        for (int c = lane; c < C; c += 32) store_rn(x + c, to_float(ar[c]) + to_float(br[c]));
    }
    float m = 0.0f;
    for (int c = lane; c < C; c += 32) m += to_float(x[c]);
    m = warp_sum(m) / (float)C;
    float v = 0.0f;  // two passes, as on the CPU (E[x^2] - m^2 cancels badly)
    for (int c = lane; c < C; c += 32) {
        const float d = to_float(x[c]) - m;
        v += d * d;
    }
    v = warp_sum(v) / (float)C;
    const float r = 1.0f / sqrtf(v + eps);
    floatX *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) store_rn(o + c, (to_float(x[c]) - m) * r * to_float(weight[c]) + to_float(bias[c]));
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = r;
    }
}

static inline void layernorm_forward(floatX *out, float *mean, float *rstd, const floatX *inp, const floatX *weight,
                                     const floatX *bias, int N, int C, float eps, cudaStream_t stream) {
    layernorm_forward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>((floatX *)inp, out, mean, rstd, NULL, NULL, weight,
                                                                 bias, N, C, eps);
    CHECK_LAUNCH();
}

// res = a + b, out = LayerNorm(res).
static inline void fused_residual_layernorm_forward(floatX *res, floatX *out, float *mean, float *rstd, const floatX *a,
                                                    const floatX *b, const floatX *weight, const floatX *bias, int N,
                                                    int C, float eps, cudaStream_t stream) {
    layernorm_forward_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(res, out, mean, rstd, a, b, weight, bias, N, C, eps);
    CHECK_LAUNCH();
}

// dinp += rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * weight; one warp per row.
static __global__ void layernorm_backward_dinp_kernel(floatX *dinp, const floatX *dout, const floatX *inp,
                                                      const floatX *weight, const float *mean, const float *rstd,
                                                      int N, int C) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const floatX *x = inp + (size_t)row * C, *d = dout + (size_t)row * C;
    floatX *dx = dinp + (size_t)row * C;
    const float m = mean[row], r = rstd[row];
    float sg = 0.0f, sgx = 0.0f;
    for (int c = lane; c < C; c += 32) {
        const float g = to_float(d[c]) * to_float(weight[c]);
        sg += g;
        sgx += g * (to_float(x[c]) - m) * r;
    }
    sg = warp_sum(sg) / (float)C;
    sgx = warp_sum(sgx) / (float)C;
    for (int c = lane; c < C; c += 32) {
        const float xhat = (to_float(x[c]) - m) * r;
        store_rn(dx + c, to_float(dx[c]) + (to_float(d[c]) * to_float(weight[c]) - sg - xhat * sgx) * r);
    }
}

// The values dweight and dbias sum over rows: dout * xhat and dout.
struct LayerNormParamGrads {
    const floatX *dout, *inp;
    const float *mean, *rstd;
    int C;
    __device__ void operator()(int n, int c, float *v) const {
        const size_t i = (size_t)n * C + c;
        const float d = to_float(dout[i]);
        v[0] = d * (to_float(inp[i]) - mean[n]) * rstd[n];
        v[1] = d;
    }
};

// dinp, dweight and dbias are accumulated into (+=), as on the CPU. scratch holds
// colsum_scratch_floats(N, C, 2) floats.
static inline void layernorm_backward(floatX *dinp, float *dweight, float *dbias, const floatX *dout, const floatX *inp,
                                      const floatX *weight, const float *mean, const float *rstd, int N, int C,
                                      float *scratch, cudaStream_t stream) {
    layernorm_backward_dinp_kernel<<<ceil_div(N, 8), 256, 0, stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    CHECK_LAUNCH();
    colsum<2>(ColsumOut<2>{{dweight, dbias}}, N, C, LayerNormParamGrads{dout, inp, mean, rstd, C}, scratch, stream);
}
