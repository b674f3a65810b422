// What every CUDA kernel file shares: error checks, the build's precision (floatX), the
// handles and stream the kernels run on (CudaCtx), conversions, stochastic rounding and
// warp/block reductions.
//
// Precision is chosen at build time (docs/cuda.md): the default fp32 build computes
// everything in fp32 with TF32 off and is what the parity tests hold to the CPU; with
// ENABLE_BF16 (make PRECISION=BF16) weights and activations are bf16 while master weights,
// gradients and optimizer state stay fp32.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "../runtime/common.h"

// ---------------------------------------------------------------------------------------
// Error checks: every CUDA and cuBLAS call goes through one of these; a failure is a fatal
// error naming the call and where it was made.

static inline void cuda_check_(cudaError_t e, const char *call, const char *file, int line) {
    if (e != cudaSuccess) fatal("CUDA error %s (%s) at %s:%d in %s", cudaGetErrorName(e), cudaGetErrorString(e), file, line, call);
}
static inline void cublas_check_(cublasStatus_t s, const char *call, const char *file, int line) {
    if (s != CUBLAS_STATUS_SUCCESS) fatal("cuBLAS error %d (%s) at %s:%d in %s", (int)s, cublasGetStatusString(s), file, line, call);
}
#define CHECK_CUDA(call) cuda_check_((call), #call, __FILE__, __LINE__)
#define CHECK_CUBLAS(call) cublas_check_((call), #call, __FILE__, __LINE__)
// After every kernel launch: a bad launch configuration is reported here, at its launch.
#define CHECK_LAUNCH() cuda_check_(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------
// Precision

#ifdef ENABLE_BF16
typedef __nv_bfloat16 floatX;
#define PRECISION_NAME "bf16"
#define CUDA_R_X CUDA_R_16BF
#else
typedef float floatX;
#define PRECISION_NAME "fp32"
#define CUDA_R_X CUDA_R_32F
#endif

static __device__ __forceinline__ float to_float(float x) { return x; }
static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
// Round to nearest into the storage type.
static __device__ __forceinline__ void store_rn(float *p, float v) { *p = v; }
static __device__ __forceinline__ void store_rn(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

// A stateless hash of (seed, index): the same bits for any launch configuration.
static __device__ __forceinline__ uint32_t hash_u32(uint32_t x) {  // "lowbias32" (C. Wellons)
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}
static __device__ __forceinline__ uint32_t hash_index(uint32_t seed, size_t i) {
    return hash_u32((uint32_t)i ^ hash_u32(seed ^ hash_u32((uint32_t)(i >> 32))));
}

// Stochastic rounding of fp32 to bf16 (as llm.c does for its bf16 weights): adding 16 random
// bits below bf16's last mantissa bit and truncating rounds up with probability equal to the
// dropped fraction, so the rounding is unbiased on average and small updates are not lost.
// Carries into the exponent are correct because the bit pattern of a float is monotonic in
// its magnitude; inf stays inf and NaN stays NaN.
static __device__ __forceinline__ void store_sr(__nv_bfloat16 *p, float v, uint32_t seed, size_t i) {
    const uint32_t bits = __float_as_uint(v);
    const uint32_t exp_all_ones = (bits & 0x7f800000u) == 0x7f800000u;  // inf or NaN: keep as is
    const uint32_t rounded = exp_all_ones ? bits : bits + (hash_index(seed, i) & 0xffffu);
    *p = __ushort_as_bfloat16((unsigned short)(rounded >> 16));
}
static __device__ __forceinline__ void store_sr(float *p, float v, uint32_t seed, size_t i) { *p = v; }

// ---------------------------------------------------------------------------------------
// Reductions. Every one runs in a fixed order, so results are the same bits on every run.

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or max) over a whole block whose size is a multiple of 32 (at most 1024); every
// thread gets the result. `shared` holds 32 values. The first __syncthreads makes it safe to
// call again right away with the same `shared`.
template <typename T, T (*WARP)(T)>
static __device__ __forceinline__ T block_reduce(T v, T *shared, T identity) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = WARP(v);
    __syncthreads();  // a previous call may still be reading `shared`
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x / 32) ? shared[lane] : identity;
    return WARP(v);
}
static __device__ __forceinline__ float block_sum(float v, float *shared) { return block_reduce<float, warp_sum>(v, shared, 0.0f); }
static __device__ __forceinline__ double block_sum(double v, double *shared) { return block_reduce<double, warp_sum>(v, shared, 0.0); }
static __device__ __forceinline__ float block_max(float v, float *shared) { return block_reduce<float, warp_max>(v, shared, -INFINITY); }

static inline unsigned ceil_div(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, never more than needed.
static inline unsigned grid_for(size_t n, int block) {
    const size_t want = (n + (size_t)block - 1) / (size_t)block;
    return (unsigned)(want < 65536 ? (want ? want : 1) : 65536);
}

// ---------------------------------------------------------------------------------------
// The stream and library handles every kernel of one model runs on.

typedef struct {
    cudaStream_t stream;
    cublasHandle_t blas;      // strided-batched GEMMs of attention
    cublasLtHandle_t lt;      // every other GEMM, with epilogues
    void *lt_workspace;
    size_t lt_workspace_bytes;
    int gelu_fusion;          // GELU in cuBLASLt's epilogue (bf16 default; see matmul.cuh)
} CudaCtx;

static inline void cuda_ctx_init(CudaCtx *ctx) {
    // A blocking stream: it waits for work on the legacy default stream (plain cudaMemcpy,
    // cudaMemset), so those stay ordered with the kernels without extra synchronisation.
    CHECK_CUDA(cudaStreamCreate(&ctx->stream));
    CHECK_CUBLAS(cublasCreate(&ctx->blas));
    CHECK_CUBLAS(cublasSetStream(ctx->blas, ctx->stream));
    // fp32 stays fp32: TF32 tensor cores would round the inputs to 10 mantissa bits.
    CHECK_CUBLAS(cublasSetMathMode(ctx->blas, CUBLAS_DEFAULT_MATH));
    CHECK_CUBLAS(cublasLtCreate(&ctx->lt));
    ctx->lt_workspace_bytes = (size_t)32 << 20;  // what cuBLASLt asks for on Hopper
    CHECK_CUDA(cudaMalloc(&ctx->lt_workspace, ctx->lt_workspace_bytes));
#ifdef ENABLE_BF16
    ctx->gelu_fusion = 1;
#else
    ctx->gelu_fusion = 0;
#endif
}

static inline void cuda_ctx_free(CudaCtx *ctx) {
    CHECK_CUDA(cudaStreamSynchronize(ctx->stream));
    CHECK_CUDA(cudaFree(ctx->lt_workspace));
    CHECK_CUBLAS(cublasLtDestroy(ctx->lt));
    CHECK_CUBLAS(cublasDestroy(ctx->blas));
    CHECK_CUDA(cudaStreamDestroy(ctx->stream));
}
