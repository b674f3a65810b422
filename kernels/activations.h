// Per-element activation math shared by the CPU kernels (gcc, C) and the CUDA kernels
// (nvcc, C++), so that both sides use the same formulas.
//   gelu(x) = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi)  (GPT-2's tanh form)
//   silu(x) = x sigmoid(x)
// GELU is evaluated through the identity 0.5 (1 + tanh(u)) = sigmoid(2u): it is the same
// function, needs one expf instead of tanhf, and gcc can vectorise expf (below) but not tanhf
// on every glibc.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

// Without -ffast-math glibc does not tell gcc that expf has vector variants in libmvec
// (linked through -lm), so a loop calling expf stays scalar: ~6 ns per element, which would
// make GELU and softmax cost more than the GEMMs. This declaration lets the vectoriser call
// libmvec's expf (at most 4 ulp, IEEE special cases kept: NaN in, NaN out). C only: no C++
// host code runs these loops, and the CUDA device code has its own expf.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__cplusplus) && !defined(__CUDACC__) && \
    defined(__x86_64__) && defined(__GLIBC__) && !defined(__FAST_MATH__)
float expf(float) __attribute__((simd("notinbranch")));
#endif

#define ACT_GELU_K 0.7978845608028654f  // sqrt(2/pi)
#define ACT_GELU_C 0.044715f

// s = sigmoid(z) and, in *one_minus_s, 1 - s computed as e*s (e = exp(-z)) rather than 1 - s,
// which would cancel to 0 for large z. exp's argument is capped at 80 so that e stays finite
// (expf overflows past 88.7, and inf * 0 would turn a very negative z into NaN); the cap only
// moves s from ~0 to ~1e-35. The comparison is false for NaN, so a NaN z still gives NaN.
static inline HOST_DEVICE float act_sigmoid2(float z, float *one_minus_s) {
    float a = -z > 80.0f ? 80.0f : -z;
    float e = expf(a);
    float s = 1.0f / (1.0f + e);
    *one_minus_s = e * s;
    return s;
}

static inline HOST_DEVICE float act_gelu(float x) {
    float u = ACT_GELU_K * (x + ACT_GELU_C * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}

// d/dx [x sigmoid(2u)] = s + 2 x s (1 - s) u',  u' = k (1 + 3 * 0.044715 x^2)
static inline HOST_DEVICE float act_gelu_grad(float x) {
    float u = ACT_GELU_K * (x + ACT_GELU_C * x * x * x);
    float du = ACT_GELU_K * (1.0f + 3.0f * ACT_GELU_C * x * x);
    float oms;
    float s = act_sigmoid2(2.0f * u, &oms);
    return s + 2.0f * x * s * oms * du;
}

static inline HOST_DEVICE float act_silu(float x) { return x / (1.0f + expf(-x)); }

// d/dx [x s(x)] = s + x s (1 - s)
static inline HOST_DEVICE float act_silu_grad(float x) {
    float oms;
    float s = act_sigmoid2(x, &oms);
    return s * (1.0f + x * oms);
}

// silu(x), with silu'(x) in *grad: backward needs both and they share one exp.
static inline HOST_DEVICE float act_silu_with_grad(float x, float *grad) {
    float oms;
    float s = act_sigmoid2(x, &oms);
    *grad = s * (1.0f + x * oms);
    return x * s;
}
