// Token (+ learned position) embedding on the GPU; the CPU twin is kernels/encoder.h.
//   out[n, :] = wte[tokens[n], :] + wpe[n % T, :]      (wpe may be NULL, e.g. with RoPE)
//
// The backward is deterministic without float atomics: a token that appears several times
// sends several rows of dout into one dwte row, so the host first buckets the positions by
// token (encoder_buckets, a counting sort), and each (token, channel) of dwte is then owned
// by one thread that adds its rows in increasing position order, starting from the current
// gradient: the same additions in the same order as the CPU's loop, so fp32 gives the CPU's
// bits exactly.
#pragma once
#include "cuda_common.cuh"

static __global__ void encoder_forward_kernel(floatX *out, const int *tokens, const floatX *wte, const floatX *wpe,
                                              int N, int T, int C) {
    const size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int n = (int)(i / C), c = (int)(i % C);
        const float e = to_float(wte[(size_t)tokens[n] * C + c]);
        store_rn(out + i, wpe ? e + to_float(wpe[(size_t)(n % T) * C + c]) : e);
    }
}

static inline void encoder_forward(floatX *out, const int *tokens, const floatX *wte, const floatX *wpe, int N, int T,
                                   int C, cudaStream_t stream) {
    encoder_forward_kernel<<<grid_for((size_t)N * C, 256), 256, 0, stream>>>(out, tokens, wte, wpe, N, T, C);
    CHECK_LAUNCH();
}

// Positions grouped by token, built on the host from the micro-batch's tokens:
// bucket b holds token tokens[b] at positions pos[offsets[b] .. offsets[b+1]), increasing.
typedef struct {
    int n_buckets;
    int *tokens;   // (n_buckets)
    int *offsets;  // (n_buckets + 1)
    int *pos;      // (N)
} EncoderBuckets;

// Fills `b` (arrays of at least V + 1, V + 1 and N ints) for tokens in [0, V); `count` is V
// ints of scratch. A stable counting sort: O(N + V).
static inline void encoder_buckets(EncoderBuckets *b, int *count, const int *tokens, int N, int V) {
    for (int v = 0; v < V; v++) count[v] = 0;
    for (int n = 0; n < N; n++) count[tokens[n]]++;
    int nb = 0, off = 0;
    for (int v = 0; v < V; v++) {
        if (!count[v]) continue;
        b->tokens[nb] = v;
        b->offsets[nb] = off;
        off += count[v];
        count[v] = b->offsets[nb];  // now the next free slot of token v
        nb++;
    }
    b->offsets[nb] = off;
    b->n_buckets = nb;
    for (int n = 0; n < N; n++) b->pos[count[tokens[n]]++] = n;
}

// One thread per (bucket, channel); blockIdx.x is the bucket.
static __global__ void encoder_backward_wte_kernel(float *dwte, const floatX *dout, const int *btokens,
                                                   const int *boffsets, const int *bpos, int C) {
    const int b = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *g = dwte + (size_t)btokens[b] * C + c;
    float acc = *g;
    for (int k = boffsets[b]; k < boffsets[b + 1]; k++) acc += to_float(dout[(size_t)bpos[k] * C + c]);
    *g = acc;
}

// dwpe[t, c] += sum over b of dout[b*T + t, c], b increasing; one thread per (t, c).
static __global__ void encoder_backward_wpe_kernel(float *dwpe, const floatX *dout, int B, int T, int C) {
    const size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)T * C) return;
    float acc = dwpe[i];
    for (int b = 0; b < B; b++) acc += to_float(dout[(size_t)b * T * C + i]);
    dwpe[i] = acc;
}

// d_* are device copies of the buckets' arrays.
static inline void encoder_backward(float *dwte, float *dwpe, const floatX *dout, const EncoderBuckets *d_buckets,
                                    int B, int T, int C, cudaStream_t stream) {
    if (d_buckets->n_buckets > 0) {
        const dim3 grid((unsigned)d_buckets->n_buckets, ceil_div(C, 128));
        encoder_backward_wte_kernel<<<grid, 128, 0, stream>>>(dwte, dout, d_buckets->tokens, d_buckets->offsets,
                                                             d_buckets->pos, C);
        CHECK_LAUNCH();
    }
    if (dwpe) {
        encoder_backward_wpe_kernel<<<ceil_div((size_t)T * C, 256), 256, 0, stream>>>(dwpe, dout, B, T, C);
        CHECK_LAUNCH();
    }
}
