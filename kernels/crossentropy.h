// Softmax cross-entropy over the vocabulary. logits and dlogits are (N, V) with row stride V
// (only the real vocabulary columns); targets is (N) with values in [0, V); losses is (N):
//   losses[n] = -log softmax(logits[n])[targets[n]] = logsumexp(logits[n]) - logits[n][targets[n]]
// The row max is subtracted before exp so that no logit can overflow it.
#pragma once
#include <math.h>
#include <stddef.h>

#include "../runtime/common.h"
#include "activations.h"

static inline float crossentropy_row_max_(const float *x, int V) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

static inline void crossentropy_forward(float *restrict losses, const float *restrict logits,
                                        const int *restrict targets, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        const float mx = crossentropy_row_max_(x, V);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; i++) sum += expf(x[i] - mx);
        losses[n] = logf(sum) + mx - x[targets[n]];
    }
}

// Training path: losses and dlogits = (softmax - onehot(target)) * dloss together, so each row
// is read once for the max and once for the exps, which are parked in dlogits and then scaled.
// dlogits may be the same buffer as logits (every element is read before it is overwritten),
// which saves the (N, V) gradient buffer. Returns the sum of losses, added in row order.
static inline double crossentropy_forward_backward(float *restrict losses, float *dlogits, const float *logits,
                                                   const int *restrict targets, float dloss, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *dx = dlogits + (size_t)n * V;
        const int target = targets[n];
        const float xt = x[target];
        const float mx = crossentropy_row_max_(x, V);
        float sum = 0.0f;
        // omp simd asserts no dependence between iterations: true when dx == x exactly.
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < V; i++) {
            float e = expf(x[i] - mx);
            dx[i] = e;
            sum += e;
        }
        losses[n] = logf(sum) + mx - xt;
        const float k = dloss / sum;
#pragma omp simd
        for (int i = 0; i < V; i++) dx[i] *= k;
        dx[target] -= dloss;
    }
    double total = 0.0;
    for (int n = 0; n < N; n++) total += losses[n];
    return total;
}

// probs = softmax(logits / temperature), for sampling; temperature > 0. probs may be logits.
static inline void softmax_row(float *probs, const float *logits, int V, float temperature) {
    if (!(temperature > 0.0f)) fatal("softmax: temperature must be > 0 (got %g)", (double)temperature);
    const float inv_t = 1.0f / temperature;
    const float mx = crossentropy_row_max_(logits, V);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < V; i++) {
        float e = expf((logits[i] - mx) * inv_t);
        probs[i] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int i = 0; i < V; i++) probs[i] *= inv;
}
