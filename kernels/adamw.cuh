// Fused AdamW on the GPU, one launch per tensor. The arithmetic is optim/adamw.h's, called
// unchanged: adamw_moments and adamw_direction are HOST_DEVICE and branch-free, and the
// host resolves the step's switches into an AdamWStep (adamw_resolve) exactly as the CPU
// optimizer does, so every ablation switch runs the same formula on both sides.
//
// params are the fp32 master weights; in the bf16 build params_x, the bf16 copy the model
// computes with, is written from them with stochastic rounding (seeded by step and tensor,
// so runs and resumes repeat). In the fp32 build params_x is NULL (the model reads params).
//
// The cautious mask needs the fraction of agreeing entries over the whole tensor before any
// entry is updated: pass 1 advances the moments and counts agreements (an integer sum, so
// atomics are exact and the count is deterministic); pass 2 reads the count on the device
// and applies the masked, rescaled update, as the CPU's two loops do.
#pragma once
// C++ (nvcc) compiles only the per-element rules of the optimizer headers; the rest is C.
#if defined(__cplusplus) && !defined(OPTIM_RULES_ONLY)
#define OPTIM_RULES_ONLY
#endif
#include "../optim/adamw.h"
#include "cuda_common.cuh"

// The effective gradient, with the L2 term when weight_decay_mode is "l2".
static __device__ __forceinline__ float adamw_grad(const AdamWStep &s, const float *g, const float *p, size_t i) {
    return g[i] + s.l2 * p[i];
}

static __device__ __forceinline__ void adamw_store(float *p, floatX *px, size_t i, float value, uint32_t seed) {
    p[i] = value;
#ifdef ENABLE_BF16
    store_sr(px + i, value, seed, i);
#endif
}

template <bool AMSGRAD>
static __global__ void adamw_kernel(float *p, floatX *px, const float *g, float *m, float *v, float *vmax, size_t n,
                                    AdamWStep s, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        AdamWMoments in;
        in.m = m[i], in.v = v[i], in.vmax = AMSGRAD ? vmax[i] : 0.0f;
        const AdamWMoments st = adamw_moments(&s, adamw_grad(s, g, p, i), in);
        m[i] = st.m;
        v[i] = st.v;
        if (AMSGRAD) vmax[i] = st.vmax;
        adamw_store(p, px, i, s.keep * p[i] - s.lr_update * adamw_direction(&s, st), seed);
    }
}

// Cautious pass 1: the moments, and *agree += the number of entries with u * g > 0.
template <bool AMSGRAD>
static __global__ void adamw_cautious_moments_kernel(const float *p, const float *g, float *m, float *v, float *vmax,
                                                     size_t n, AdamWStep s, unsigned long long *agree) {
    unsigned count = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gi = adamw_grad(s, g, p, i);
        AdamWMoments in;
        in.m = m[i], in.v = v[i], in.vmax = AMSGRAD ? vmax[i] : 0.0f;
        const AdamWMoments st = adamw_moments(&s, gi, in);
        m[i] = st.m;
        v[i] = st.v;
        if (AMSGRAD) vmax[i] = st.vmax;
        count += adamw_direction(&s, st) * gi > 0.0f;
    }
    count = __reduce_add_sync(0xffffffffu, count);  // every lane of every warp gets here
    if (threadIdx.x % 32 == 0) atomicAdd(agree, (unsigned long long)count);
}

// Cautious pass 2: p <- keep p - (u g > 0 ? lr_update * scale * u : 0), scale from the count.
template <bool AMSGRAD>
static __global__ void adamw_cautious_apply_kernel(float *p, floatX *px, const float *g, const float *m, const float *v,
                                                   const float *vmax, size_t n, AdamWStep s,
                                                   const unsigned long long *agree, uint32_t seed) {
    const float scale = 1.0f / fmaxf((float)*agree / (float)n, 1e-3f);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gi = adamw_grad(s, g, p, i);
        AdamWMoments st;
        st.m = m[i], st.v = v[i], st.vmax = AMSGRAD ? vmax[i] : 0.0f;
        const float u = adamw_direction(&s, st);
        adamw_store(p, px, i, s.keep * p[i] - (u * gi > 0.0f ? s.lr_update * scale * u : 0.0f), seed);
    }
}

#define ADAMW_THREADS 256

// One AdamW step of one tensor of n elements. state points at its slot-major state: m, v
// (and vmax with amsgrad), n floats each. agree is one device counter (cautious only).
static inline void adamw_update(float *p, floatX *px, const float *g, float *state, size_t n, const AdamWStep *s,
                                int amsgrad, int cautious, uint32_t seed, unsigned long long *agree, cudaStream_t stream) {
    float *m = state, *v = state + n, *vmax = amsgrad ? state + 2 * n : NULL;
    const unsigned grid = grid_for(n, ADAMW_THREADS);
    if (!cautious) {
        if (amsgrad) adamw_kernel<true><<<grid, ADAMW_THREADS, 0, stream>>>(p, px, g, m, v, vmax, n, *s, seed);
        else adamw_kernel<false><<<grid, ADAMW_THREADS, 0, stream>>>(p, px, g, m, v, vmax, n, *s, seed);
        CHECK_LAUNCH();
        return;
    }
    CHECK_CUDA(cudaMemsetAsync(agree, 0, sizeof *agree, stream));
    if (amsgrad) adamw_cautious_moments_kernel<true><<<grid, ADAMW_THREADS, 0, stream>>>(p, g, m, v, vmax, n, *s, agree);
    else adamw_cautious_moments_kernel<false><<<grid, ADAMW_THREADS, 0, stream>>>(p, g, m, v, vmax, n, *s, agree);
    CHECK_LAUNCH();
    if (amsgrad) adamw_cautious_apply_kernel<true><<<grid, ADAMW_THREADS, 0, stream>>>(p, px, g, m, v, vmax, n, *s, agree, seed);
    else adamw_cautious_apply_kernel<false><<<grid, ADAMW_THREADS, 0, stream>>>(p, px, g, m, v, vmax, n, *s, agree, seed);
    CHECK_LAUNCH();
}
