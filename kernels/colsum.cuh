// Deterministic sums over the rows of an (N, C) array, for the parameter gradients that
// sum over tokens: bias gradients, norm weight/bias gradients.
//
// Float atomics would add in a different order on every run. Instead, two passes with a
// fixed shape: blocks of 32 columns x COLSUM_ROWS rows each write partial sums to scratch,
// then one thread per column adds the partials in row-chunk order to the gradient. The
// chunking depends only on N, so the bits are the same on every run and every GPU.
//
// F is a functor: f(n, c, v) fills v[0..K) with the K values of row n, column c to sum.
#pragma once
#include "cuda_common.cuh"

#define COLSUM_ROWS 64  // rows per chunk
#define COLSUM_TY 8     // threads along the rows of a chunk

// Floats of scratch that colsum needs for N rows, C columns and K sums.
static inline size_t colsum_scratch_floats(int N, int C, int K) { return (size_t)ceil_div(N, COLSUM_ROWS) * K * C; }

template <int K, class F>
static __global__ void colsum_partials_kernel(float *partial, int N, int C, F f) {
    __shared__ float sh[K][COLSUM_TY][32];
    const int c = blockIdx.x * 32 + threadIdx.x, chunk = blockIdx.y;
    const int row_end = min(N, (chunk + 1) * COLSUM_ROWS);
    float acc[K];
    for (int k = 0; k < K; k++) acc[k] = 0.0f;
    if (c < C) {
        for (int n = chunk * COLSUM_ROWS + threadIdx.y; n < row_end; n += COLSUM_TY) {
            float v[K];
            f(n, c, v);
            for (int k = 0; k < K; k++) acc[k] += v[k];
        }
    }
    for (int k = 0; k < K; k++) sh[k][threadIdx.y][threadIdx.x] = acc[k];
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int k = 0; k < K; k++) {
            float s = 0.0f;
            for (int y = 0; y < COLSUM_TY; y++) s += sh[k][y][threadIdx.x];
            partial[((size_t)chunk * K + k) * C + c] = s;
        }
    }
}

template <int K>
struct ColsumOut {
    float *out[K];  // out[k][c] += the column sum; NULL skips k
};

template <int K>
static __global__ void colsum_finish_kernel(ColsumOut<K> outs, const float *partial, int chunks, int C) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= K * C) return;
    const int k = i / C, c = i % C;
    if (!outs.out[k]) return;
    float s = 0.0f;
    for (int j = 0; j < chunks; j++) s += partial[((size_t)j * K + k) * C + c];
    outs.out[k][c] += s;
}

// outs.out[k][c] += sum over n < N of f(n, c)[k]; scratch holds colsum_scratch_floats(N, C, K).
template <int K, class F>
static inline void colsum(ColsumOut<K> outs, int N, int C, F f, float *scratch, cudaStream_t stream) {
    const unsigned chunks = ceil_div(N, COLSUM_ROWS);
    colsum_partials_kernel<K, F><<<dim3(ceil_div(C, 32), chunks), dim3(32, COLSUM_TY), 0, stream>>>(scratch, N, C, f);
    CHECK_LAUNCH();
    colsum_finish_kernel<K><<<ceil_div((size_t)K * C, 256), 256, 0, stream>>>(outs, scratch, (int)chunks, C);
    CHECK_LAUNCH();
}

// The plain column sum of an (N, C) array: bias gradients.
struct ColsumRows {
    const floatX *x;
    int C;
    __device__ void operator()(int n, int c, float *v) const { v[0] = to_float(x[(size_t)n * C + c]); }
};
