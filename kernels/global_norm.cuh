// Sums of squares over fp32 device arrays (the global gradient norm for clipping, and the
// per-group RMS diagnostics), in double like the CPU's sum_squares. Deterministic: a fixed
// grid of SUMSQ_BLOCKS blocks each sums a fixed set of elements (grid-stride) and reduces
// in a fixed tree; one more block adds the partials in order. No atomics.
#pragma once
#include "cuda_common.cuh"

#define SUMSQ_BLOCKS 512
#define SUMSQ_THREADS 512

// partial[blockIdx.x] = sum of (x[i] - minus[i])^2 over this block's elements (minus may be NULL).
static __global__ void sum_squares_partials_kernel(double *partial, const float *x, const float *minus, size_t n) {
    __shared__ double shared[32];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double d = (double)x[i] - (minus ? (double)minus[i] : 0.0);
        s += d * d;
    }
    s = block_sum(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// *out (device) = sum of partial[0..n) (one block).
static __global__ void sum_partials_kernel(double *out, const double *partial, int n) {
    __shared__ double shared[32];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
    s = block_sum(s, shared);
    if (threadIdx.x == 0) *out = s;
}

// *out (device) = sum over i < n of (x[i] - minus[i])^2; scratch holds SUMSQ_BLOCKS doubles.
// Asynchronous: read *out after the stream.
static inline void sum_squares(double *out, const float *x, const float *minus, size_t n, double *scratch,
                               cudaStream_t stream) {
    sum_squares_partials_kernel<<<SUMSQ_BLOCKS, SUMSQ_THREADS, 0, stream>>>(scratch, x, minus, n);
    CHECK_LAUNCH();
    sum_partials_kernel<<<1, SUMSQ_THREADS, 0, stream>>>(out, scratch, SUMSQ_BLOCKS);
    CHECK_LAUNCH();
}

static __global__ void scale_kernel(float *x, float s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] *= s;
}

static inline void scale_array(float *x, float s, size_t n, cudaStream_t stream) {
    scale_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, s, n);
    CHECK_LAUNCH();
}
