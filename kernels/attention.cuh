// Causal self-attention with grouped KV heads on the GPU: cuBLAS strided-batched GEMMs and
// a softmax kernel. The CPU twin (layout, formulas) is kernels/attention.h:
//   qkv (B, T, (H + 2 KVH) hd): per token H query heads, then KVH key heads, then KVH
//   value heads; query head h reads kv head h / (H / KVH). out (B, T, H hd).
//   att (B, H, T, T): softmax(scale * q.k) over keys t2 <= t, 0 above the diagonal.
//
// The trick for grouped heads: with q permuted to (B, H, T, hd), the G = H / KVH query
// heads that share kv head j are one contiguous (G*T, hd) matrix, and att (B, H, T, T) is
// one (G*T, T) matrix per (b, j). So every product is a batch of B * KVH plain GEMMs with
// M = G*T: no copies of k and v per query head, and dk, dv sum over the group inside the
// GEMM (deterministically). The full T x T scores are computed and the softmax masks the
// future; a fused flash-style kernel is the next step.
//
// Scratch (permuted copies): q, dq (B, H, T, hd); k, v, dk, dv (B, KVH, T, hd); y, dy
// (B, H, T, hd); datt (B, H, T, T) in the backward.
#pragma once
#include <math.h>

#include "cuda_common.cuh"

typedef struct {
    floatX *q, *k, *v, *y;      // forward
    floatX *dq, *dk, *dv, *dy;  // backward
    floatX *datt;               // (B, H, T, T)
} AttentionScratch;

// qkv (B, T, (H+2KVH) hd) -> q (B, H, T, hd), k and v (B, KVH, T, hd); inverse = 1 goes back.
static __global__ void attention_permute_kernel(floatX *qkv, floatX *q, floatX *k, floatX *v, int B, int T, int H,
                                                int KVH, int hd, int inverse) {
    const int heads = H + 2 * KVH;
    const size_t total = (size_t)B * T * heads * hd;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(i % hd);
        const size_t r = i / hd;
        const int j = (int)(r % heads);
        const size_t bt = r / heads;
        const int t = (int)(bt % T), b = (int)(bt / T);
        floatX *dst = j < H         ? q + (((size_t)b * H + j) * T + t) * hd + d
                      : j < H + KVH ? k + (((size_t)b * KVH + (j - H)) * T + t) * hd + d
                                    : v + (((size_t)b * KVH + (j - H - KVH)) * T + t) * hd + d;
        if (inverse) qkv[i] = *dst;
        else *dst = qkv[i];
    }
}

// y (B, H, T, hd) <-> out (B, T, H hd).
static __global__ void attention_heads_kernel(floatX *out, floatX *y, int B, int T, int H, int hd, int inverse) {
    const size_t total = (size_t)B * T * H * hd;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(i % hd);
        const size_t r = i / hd;
        const int h = (int)(r % H);
        const size_t bt = r / H;
        const int t = (int)(bt % T), b = (int)(bt / T);
        floatX *yp = y + (((size_t)b * H + h) * T + t) * hd + d;
        if (inverse) *yp = out[i];
        else out[i] = *yp;
    }
}

// In place over rows of T scores, one warp per row (row r is query t = r % T):
// p[t2] = exp((s[t2] - max) * scale) / sum for t2 <= t, 0 above. The CPU's expressions.
static __global__ void attention_softmax_kernel(floatX *att, int rows, int T, float scale) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    floatX *a = att + (size_t)row * T;
    const int t = row % T;
    float mx = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += 32) mx = fmaxf(mx, to_float(a[t2]));
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += 32) sum += expf((to_float(a[t2]) - mx) * scale);
    const float inv = 1.0f / warp_sum(sum);
    for (int t2 = lane; t2 < T; t2 += 32) store_rn(a + t2, t2 <= t ? expf((to_float(a[t2]) - mx) * scale) * inv : 0.0f);
}

// In place: datt becomes ds = p (dp - sum_j p[j] dp[j]) * scale for t2 <= t, 0 above.
static __global__ void attention_softmax_backward_kernel(floatX *datt, const floatX *att, int rows, int T, float scale) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    floatX *dp = datt + (size_t)row * T;
    const floatX *p = att + (size_t)row * T;
    const int t = row % T;
    float s = 0.0f;
    for (int t2 = lane; t2 <= t; t2 += 32) s += to_float(p[t2]) * to_float(dp[t2]);
    s = warp_sum(s);
    for (int t2 = lane; t2 < T; t2 += 32)
        store_rn(dp + t2, t2 <= t ? to_float(p[t2]) * (to_float(dp[t2]) - s) * scale : 0.0f);
}

// C (m x n) = op(A) op(B), column-major, for `batch` problems at the given strides; fp32
// compute (no TF32), beta = 0.
static inline void attention_gemm(const CudaCtx *ctx, int transa, int transb, int m, int n, int k, const floatX *A,
                                  int lda, long long sa, const floatX *B, int ldb, long long sb, floatX *C, int ldc,
                                  long long sc, int batch) {
    const float alpha = 1.0f, beta = 0.0f;
    CHECK_CUBLAS(cublasGemmStridedBatchedEx(ctx->blas, transa ? CUBLAS_OP_T : CUBLAS_OP_N, transb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            m, n, k, &alpha, A, CUDA_R_X, lda, sa, B, CUDA_R_X, ldb, sb, &beta, C, CUDA_R_X,
                                            ldc, sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// out (B, T, H hd) and att (B, H, T, T) from qkv; both overwritten. qkv is not changed.
static inline void attention_forward(const CudaCtx *ctx, floatX *out, floatX *att, const floatX *qkv,
                                     const AttentionScratch *s, int B, int T, int H, int KVH, int hd) {
    const int G = H / KVH, batch = B * KVH;
    const long long GT = (long long)G * T;
    attention_permute_kernel<<<grid_for((size_t)B * T * (H + 2 * KVH) * hd, 256), 256, 0, ctx->stream>>>(
        (floatX *)qkv, s->q, s->k, s->v, B, T, H, KVH, hd, 0);
    CHECK_LAUNCH();
    // scores: S^T (T x GT) = (k as hd x T)^T @ (q as hd x GT), per (b, kv head)
    attention_gemm(ctx, 1, 0, T, (int)GT, hd, s->k, hd, (long long)T * hd, s->q, hd, GT * hd, att, T, GT * T, batch);
    const int rows = B * H * T;
    attention_softmax_kernel<<<ceil_div(rows, 8), 256, 0, ctx->stream>>>(att, rows, T, 1.0f / sqrtf((float)hd));
    CHECK_LAUNCH();
    // y^T (hd x GT) = (v as hd x T) @ (att as T x GT)
    attention_gemm(ctx, 0, 0, hd, (int)GT, T, s->v, hd, (long long)T * hd, att, T, GT * T, s->y, hd, GT * hd, batch);
    attention_heads_kernel<<<grid_for((size_t)B * T * H * hd, 256), 256, 0, ctx->stream>>>(out, s->y, B, T, H, hd, 0);
    CHECK_LAUNCH();
}

// dqkv (B, T, (H+2KVH) hd) is overwritten from dout (B, T, H hd), qkv and att of the forward.
static inline void attention_backward(const CudaCtx *ctx, floatX *dqkv, const floatX *dout, const floatX *qkv,
                                      const floatX *att, const AttentionScratch *s, int B, int T, int H, int KVH, int hd) {
    const int G = H / KVH, batch = B * KVH;
    const long long GT = (long long)G * T, Thd = (long long)T * hd;
    attention_permute_kernel<<<grid_for((size_t)B * T * (H + 2 * KVH) * hd, 256), 256, 0, ctx->stream>>>(
        (floatX *)qkv, s->q, s->k, s->v, B, T, H, KVH, hd, 0);
    CHECK_LAUNCH();
    attention_heads_kernel<<<grid_for((size_t)B * T * H * hd, 256), 256, 0, ctx->stream>>>((floatX *)dout, s->dy, B, T,
                                                                                           H, hd, 1);
    CHECK_LAUNCH();
    // dp^T (T x GT) = (v as hd x T)^T @ (dy as hd x GT)
    attention_gemm(ctx, 1, 0, T, (int)GT, hd, s->v, hd, Thd, s->dy, hd, GT * hd, s->datt, T, GT * T, batch);
    // dv^T (hd x T) = (dy as hd x GT) @ (att as T x GT)^T: sums over the G query heads
    attention_gemm(ctx, 0, 1, hd, T, (int)GT, s->dy, hd, GT * hd, att, T, GT * T, s->dv, hd, Thd, batch);
    const int rows = B * H * T;
    attention_softmax_backward_kernel<<<ceil_div(rows, 8), 256, 0, ctx->stream>>>(s->datt, att, rows, T,
                                                                                 1.0f / sqrtf((float)hd));
    CHECK_LAUNCH();
    // dq^T (hd x GT) = (k as hd x T) @ (ds as T x GT)
    attention_gemm(ctx, 0, 0, hd, (int)GT, T, s->k, hd, Thd, s->datt, T, GT * T, s->dq, hd, GT * hd, batch);
    // dk^T (hd x T) = (q as hd x GT) @ (ds as T x GT)^T
    attention_gemm(ctx, 0, 1, hd, T, (int)GT, s->q, hd, GT * hd, s->datt, T, GT * T, s->dk, hd, Thd, batch);
    attention_permute_kernel<<<grid_for((size_t)B * T * (H + 2 * KVH) * hd, 256), 256, 0, ctx->stream>>>(
        dqkv, s->dq, s->dk, s->dv, B, T, H, KVH, hd, 1);
    CHECK_LAUNCH();
}
