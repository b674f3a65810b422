// Fully connected layers through cuBLASLt; the CPU twin is kernels/matmul.h. Same layout:
// inp (N, IC), weight (OC, IC) row-major (one row per output channel), bias (OC) or NULL,
// out (N, OC):  out = inp @ weight^T + bias.
//
// cuBLAS is column-major, and a row-major (R, C) array is the column-major (C, R) one, so
// every product below is written for the transposes: out^T = weight^T' @ inp^T, etc.
// Compute is fp32 (CUBLAS_COMPUTE_32F: no TF32) in both builds; in the bf16 build the
// inputs and activation outputs are bf16 and the weight gradients fp32.
//
// Epilogues: the bias is added by cuBLASLt's BIAS epilogue, and with ctx->gelu_fusion the
// GELU of the MLP too (GELU_AUX_BIAS, which also stores the pre-activation for the
// backward). Fusion is on by default only in the bf16 build: cuBLASLt's GELU is its own
// approximation of the tanh form, not act_gelu, so the fp32 build that the parity tests
// compare with the CPU keeps GELU in gelu.cuh. When cuBLASLt has no algorithm for an
// epilogue (or the bias is not 16-byte aligned, which its epilogue needs), the same result
// is made without it; when it has none for a plain GEMM, cublasGemmEx does it.
//
// The bias gradient is not an epilogue: cuBLASLt's BGRAD overwrites, but gradients
// accumulate over micro-batches, so it is a deterministic column sum (colsum.cuh).
#pragma once
#include <string.h>

#include "colsum.cuh"
#include "gelu.cuh"

// The largest power of two (up to 256) that divides the address. cuBLASLt's heuristic
// assumes 256-byte aligned matrices unless told otherwise, and our weights are slices of
// one flat parameter array at arbitrary float offsets.
static inline uint32_t lt_alignment(const void *p) {
    uint32_t a = 256;
    while (a > 1 && (uintptr_t)p % a) a >>= 1;
    return a;
}

// Heuristic results are looked up once per distinct problem: the query costs tens of us,
// and a training step repeats the same few shapes.
typedef struct {
    int m, n, k, transa, transb, ab_type, cd_type, epilogue;
    uint32_t align[4];
} LtKey;
typedef struct {
    LtKey key;
    int found;
    cublasLtMatmulAlgo_t algo;
} LtCacheEntry;
#define LT_CACHE_SIZE 128
static LtCacheEntry lt_cache[LT_CACHE_SIZE];
static int lt_cache_used;

// D (m x n, column-major, ld m) = alpha op(A) op(B) + beta D, with the epilogue. A is
// stored (transa ? k x m : m x k), B (transb ? n x k : k x n), each with its rows as ld.
// Returns 0 when cuBLASLt has no algorithm for this problem (nothing is launched).
static inline int matmul_lt(const CudaCtx *ctx, void *d, cudaDataType cd_type, const void *a, const void *b,
                            cudaDataType ab_type, int m, int n, int k, int transa, int transb, float beta,
                            cublasLtEpilogue_t epilogue, const void *bias, void *aux) {
    cublasLtMatmulDesc_t op;
    CHECK_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    if (bias) CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (aux) {
        const int64_t ld_aux = m;
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux, sizeof ld_aux));
    }
    cublasLtMatrixLayout_t la, lb, ld;
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&la, ab_type, transa ? k : m, transa ? m : k, transa ? k : m));
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lb, ab_type, transb ? n : k, transb ? k : n, transb ? n : k));
    CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&ld, cd_type, m, n, m));

    LtKey key;
    memset(&key, 0, sizeof key);  // the key is compared with memcmp: no stray padding bytes
    key.m = m, key.n = n, key.k = k, key.transa = transa, key.transb = transb;
    key.ab_type = (int)ab_type, key.cd_type = (int)cd_type, key.epilogue = (int)epilogue;
    key.align[0] = lt_alignment(a), key.align[1] = lt_alignment(b), key.align[2] = key.align[3] = lt_alignment(d);
    LtCacheEntry *e = NULL;
    for (int i = 0; i < lt_cache_used && !e; i++)
        if (memcmp(&lt_cache[i].key, &key, sizeof key) == 0) e = &lt_cache[i];
    LtCacheEntry fresh;
    if (!e) {
        cublasLtMatmulPreference_t pref;
        CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
        const uint64_t ws = ctx->lt_workspace_bytes;
        CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
        const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
        for (int i = 0; i < 4; i++)
            CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &key.align[i], sizeof key.align[i]));
        cublasLtMatmulHeuristicResult_t res;
        int count = 0;
        const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(ctx->lt, op, la, lb, ld, ld, pref, 1, &res, &count);
        CHECK_CUBLAS(cublasLtMatmulPreferenceDestroy(pref));
        memset(&fresh, 0, sizeof fresh);
        fresh.key = key;
        fresh.found = st == CUBLAS_STATUS_SUCCESS && count > 0;
        if (fresh.found) fresh.algo = res.algo;
        e = &fresh;
        if (lt_cache_used < LT_CACHE_SIZE) {
            lt_cache[lt_cache_used] = fresh;
            e = &lt_cache[lt_cache_used++];
        }
    }
    if (e->found) {
        const float alpha = 1.0f;
        CHECK_CUBLAS(cublasLtMatmul(ctx->lt, op, &alpha, a, la, b, lb, &beta, d, ld, d, ld, &e->algo, ctx->lt_workspace,
                                    ctx->lt_workspace_bytes, ctx->stream));
    }
    CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(la));
    CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(lb));
    CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(ld));
    CHECK_CUBLAS(cublasLtMatmulDescDestroy(op));
    return e->found;
}

// A plain GEMM: cuBLASLt, or when it has no algorithm for these sizes and alignments (odd
// leading dimensions, say), cuBLAS's cublasGemmEx, which takes any. Same semantics.
static inline void matmul_plain(const CudaCtx *ctx, void *d, cudaDataType cd_type, const void *a, const void *b,
                                cudaDataType ab_type, int m, int n, int k, int transa, int transb, float beta) {
    if (matmul_lt(ctx, d, cd_type, a, b, ab_type, m, n, k, transa, transb, beta, CUBLASLT_EPILOGUE_DEFAULT, NULL, NULL))
        return;
    const float alpha = 1.0f;
    CHECK_CUBLAS(cublasGemmEx(ctx->blas, transa ? CUBLAS_OP_T : CUBLAS_OP_N, transb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k,
                              &alpha, a, ab_type, transa ? k : m, b, ab_type, transb ? n : k, &beta, d, cd_type, m,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// out[n, :] = bias, for the GEMM to add to (beta = 1) when the bias epilogue cannot be used.
static __global__ void broadcast_rows_kernel(floatX *out, const floatX *bias, int N, int OC) {
    const size_t total = (size_t)N * OC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] = bias[i % OC];
}

// out = inp @ weight^T + bias. With pre_gelu != NULL, out = gelu(that) and pre_gelu keeps
// the value before the GELU (the backward needs it). out is overwritten.
static inline void matmul_forward(const CudaCtx *ctx, floatX *out, floatX *pre_gelu, const floatX *inp,
                                  const floatX *weight, const floatX *bias, int N, int IC, int OC) {
    const int bias_epilogue_ok = bias && (uintptr_t)bias % 16 == 0;
    // out^T (OC x N) = (weight as IC x OC)^T @ (inp as IC x N)
    if (pre_gelu && ctx->gelu_fusion && (!bias || bias_epilogue_ok) && (uintptr_t)pre_gelu % 16 == 0 && OC % 8 == 0) {
        const cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
        if (matmul_lt(ctx, out, CUDA_R_X, weight, inp, CUDA_R_X, OC, N, IC, 1, 0, 0.0f, epi, bias, pre_gelu)) return;
    }
    floatX *dst = pre_gelu ? pre_gelu : out;
    if (bias_epilogue_ok &&
        matmul_lt(ctx, dst, CUDA_R_X, weight, inp, CUDA_R_X, OC, N, IC, 1, 0, 0.0f, CUBLASLT_EPILOGUE_BIAS, bias, NULL)) {
        // done
    } else if (bias) {  // as the CPU does: start from the bias and let the GEMM add to it
        broadcast_rows_kernel<<<grid_for((size_t)N * OC, 256), 256, 0, ctx->stream>>>(dst, bias, N, OC);
        CHECK_LAUNCH();
        matmul_plain(ctx, dst, CUDA_R_X, weight, inp, CUDA_R_X, OC, N, IC, 1, 0, 1.0f);
    } else {
        matmul_plain(ctx, dst, CUDA_R_X, weight, inp, CUDA_R_X, OC, N, IC, 1, 0, 0.0f);
    }
    if (pre_gelu) gelu_forward(out, pre_gelu, (size_t)N * OC, ctx->stream);
}

// dinp = dout @ weight (overwritten; may be NULL), dweight += dout^T @ inp, dbias += the
// column sums of dout (may be NULL). dweight and dbias are fp32 in both builds. scratch
// holds colsum_scratch_floats(N, OC, 1) floats.
static inline void matmul_backward(const CudaCtx *ctx, floatX *dinp, float *dweight, float *dbias, const floatX *dout,
                                   const floatX *inp, const floatX *weight, int N, int IC, int OC, float *scratch) {
    // dinp^T (IC x N) = (weight as IC x OC) @ (dout as OC x N)
    if (dinp) matmul_plain(ctx, dinp, CUDA_R_X, weight, dout, CUDA_R_X, IC, N, OC, 0, 0, 0.0f);
    // dweight^T (IC x OC) += (inp as IC x N) @ (dout as OC x N)^T
    matmul_plain(ctx, dweight, CUDA_R_32F, inp, dout, CUDA_R_X, IC, OC, N, 0, 1, 1.0f);
    if (dbias) colsum<1>(ColsumOut<1>{{dbias}}, N, OC, ColsumRows{dout, OC}, scratch, ctx->stream);
}
