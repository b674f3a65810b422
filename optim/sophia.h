// SophiaG (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for
// Language Model Pre-training", official code github.com/Liuhong99/Sophia, sophia.py):
//   W <- W (1 - lr wd)                                      (decoupled, before the update)
//   m <- beta1 m + (1 - beta1) g
//   W <- W - lr sign(m) min(|m| / (rho bs h + eps), 1)
// with bs the tokens per optimizer step (StepInfo.tokens_per_step, all ranks and
// micro-batches; the reference passes bs = total_bs * block_size to step()). Every
// hessian_interval steps (step % k == 0, the reference's iter_num % k == k - 1 with a
// 0-based iter_num), after the step, the trainer backpropagates the loss on labels sampled
// from the model's own softmax (Gauss-Newton-Bartlett) and the curvature hook sets
//   h <- beta2 h + (1 - beta2) g_hat^2.
// Until the first estimate h is zero and every update is lr sign(m) (the reference too).
// State: m, h, one float each per parameter.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

typedef struct {
    float beta1;
    float keep;    // 1 - lr wd
    float lr;
    float rho_bs;  // rho * tokens per step
    float eps;
} SophiaStep;

// One element of the step: advances m and returns the new parameter.
static inline HOST_DEVICE float sophia_update(const SophiaStep *s, float p, float g, float *m, float h) {
    *m = s->beta1 * *m + (1.0f - s->beta1) * g;
    const float ratio = fminf(fabsf(*m) / (s->rho_bs * h + s->eps), 1.0f);
    const float sign = (float)((*m > 0.0f) - (*m < 0.0f));
    return s->keep * p - s->lr * sign * ratio;
}

// The Hessian-diagonal EMA from the gradient on sampled labels.
static inline HOST_DEVICE float sophia_hessian(float beta2, float h, float g_hat) {
    return beta2 * h + (1.0f - beta2) * g_hat * g_hat;
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>

#include "optimizer.h"

typedef struct {
    float beta1, beta2, rho, eps, weight_decay;
    int hessian_interval;
} SophiaHyper;

#define PKEY(name, type, def, range, choices, doc) {#name, type, offsetof(SophiaHyper, name), def, range, choices, doc}
static const ConfigKey sophia_keys[] = {
    PKEY(beta1, KEY_FLOAT, "0.965", "[0,1)", NULL, "momentum decay"),
    PKEY(beta2, KEY_FLOAT, "0.99", "[0,1)", NULL, "decay of the Hessian-diagonal estimate h (per estimate, not per step)"),
    PKEY(rho, KEY_FLOAT, "0.04", "(0,inf)", NULL, "clipping scale: the update is clipped where |m| > rho bs h"),
    PKEY(eps, KEY_FLOAT, "1e-15", "(0,inf)", NULL, "added to rho bs h"),
    PKEY(weight_decay, KEY_FLOAT, "0.1", "[0,inf)", NULL, "decoupled: W <- W (1 - lr wd)"),
    PKEY(hessian_interval, KEY_INT, "10", "[1,inf)", NULL, "steps between Hessian estimates (k)"),
    KEY_END,
};
#undef PKEY

static inline int sophia_slots(const void *hyper) { return 2; }

static inline SophiaStep sophia_resolve(const SophiaHyper *h, const StepInfo *info) {
    SophiaStep s;
    s.beta1 = h->beta1;
    s.keep = 1.0f - info->lr * h->weight_decay;
    s.lr = info->lr;
    s.rho_bs = (float)(h->rho * info->tokens_per_step);
    s.eps = h->eps;
    return s;
}

static inline void sophia_step_elements(const void *hyper, const StepInfo *info, float *param, const float *grad,
                                        float *const *state, size_t n) {
    const SophiaStep s = sophia_resolve((const SophiaHyper *)hyper, info);
    float *m = state[0];
    const float *h = state[1];
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) param[i] = sophia_update(&s, param[i], grad[i], &m[i], h[i]);
}

static inline int sophia_curvature_due(const void *hyper, long step) {
    return step % ((const SophiaHyper *)hyper)->hessian_interval == 0;
}

static inline void sophia_curvature_elements(const void *hyper, const StepInfo *info, const float *curvature_grad,
                                             float *const *state, size_t n) {
    const float beta2 = ((const SophiaHyper *)hyper)->beta2;
    float *h = state[1];
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) h[i] = sophia_hessian(beta2, h[i], curvature_grad[i]);
}

static const OptimizerDef optimizer_sophia = {
    .name = "sophia",
    .summary = "SophiaG: clipped momentum over a Gauss-Newton-Bartlett Hessian diagonal (Liu et al. 2023)",
    .keys = sophia_keys,
    .hyper_size = sizeof(SophiaHyper),
    .slots = sophia_slots,
    .step_elements = sophia_step_elements,
    .curvature_due = sophia_curvature_due,
    .curvature_elements = sophia_curvature_elements,
};
#endif  // OPTIM_RULES_ONLY
