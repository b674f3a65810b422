// AdEMAMix (Pagliardini, Ablin & Grangier 2024, "The AdEMAMix Optimizer: Better, Faster,
// Older", Algorithm 1 and the official code github.com/apple/ml-ademamix):
//   m1 = beta1 m1 + (1 - beta1) g                 fast EMA, bias-corrected
//   m2 = beta3(t) m2 + (1 - beta3(t)) g           slow EMA, not bias-corrected
//   v  = beta2 v + (1 - beta2) g^2
//   p <- p - lr ( (m1 / (1 - beta1^t) + alpha(t) m2) / (sqrt(v / (1 - beta2^t)) + eps) + wd p )
// with the warmups (t is the 1-based step):
//   alpha(t) = alpha min(t / T_alpha, 1)                                 linear from 0
//   beta3(t) = halflife_warmup(beta1, beta3, t, T_beta3)                 linear in the half-life
//              (optim/schedules.h), from beta1 to beta3
// T_alpha = alpha_warmup and T_beta3 = beta3_warmup, train.steps when 0 (the paper's
// choice); 1 switches a warmup off.
// State: m1, m2, v, one float each per parameter.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

typedef struct {
    float beta1, beta2, beta3, alpha, eps;
    float bc1, bc2;  // 1 - beta1^t, 1 - beta2^t
} AdemamixStep;

// Advances m1, m2, v with gradient g and returns the update direction (without decay).
static inline HOST_DEVICE float ademamix_rule(const AdemamixStep *s, float g, float *m1, float *m2, float *v) {
    *m1 = s->beta1 * *m1 + (1.0f - s->beta1) * g;
    *m2 = s->beta3 * *m2 + (1.0f - s->beta3) * g;
    *v = s->beta2 * *v + (1.0f - s->beta2) * (g * g);
    return (*m1 / s->bc1 + s->alpha * *m2) / (sqrtf(*v / s->bc2) + s->eps);
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>

#include "optimizer.h"
#include "schedules.h"

typedef struct {
    float beta1, beta2, beta3, alpha, eps, weight_decay;
    int alpha_warmup, beta3_warmup;
} AdemamixHyper;

#define AMKEY(name, type, def, range, choices, doc) {#name, type, offsetof(AdemamixHyper, name), def, range, choices, doc}
static const ConfigKey ademamix_keys[] = {
    AMKEY(beta1, KEY_FLOAT, "0.9", "[0,1)", NULL, "fast EMA decay (bias-corrected)"),
    AMKEY(beta2, KEY_FLOAT, "0.999", "[0,1)", NULL, "second-moment decay"),
    AMKEY(beta3, KEY_FLOAT, "0.9999", "[0,1)", NULL, "slow EMA decay, reached at the end of its warmup"),
    AMKEY(alpha, KEY_FLOAT, "5", "[0,inf)", NULL, "weight of the slow EMA, reached at the end of its warmup"),
    AMKEY(eps, KEY_FLOAT, "1e-8", "(0,inf)", NULL, "denominator epsilon: sqrt(v_hat) + eps"),
    AMKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decoupled decay: p -= lr wd p"),
    AMKEY(alpha_warmup, KEY_INT, "0", "[0,inf)", NULL, "steps of the linear alpha warmup from 0; 0: train.steps, 1: off"),
    AMKEY(beta3_warmup, KEY_INT, "0", "[0,inf)", NULL, "steps of the half-life beta3 warmup from beta1; 0: train.steps, 1: off"),
    KEY_END,
};
#undef AMKEY

static int ademamix_slots(const void *hyper) { return 3; }

// alpha(t) and beta3(t).
static void ademamix_schedule(const AdemamixHyper *h, const StepInfo *info, double *alpha, double *beta3) {
    const long ta = h->alpha_warmup > 0 ? h->alpha_warmup : info->total_steps;
    const long tb = h->beta3_warmup > 0 ? h->beta3_warmup : info->total_steps;
    *alpha = linear_warmup(0.0, h->alpha, info->step, ta);
    *beta3 = halflife_warmup(h->beta1, h->beta3, info->step, tb);
}

static void ademamix_step_elements(const void *hyper, const StepInfo *info, float *param, const float *grad,
                                   float *const *state, size_t n) {
    const AdemamixHyper *h = (const AdemamixHyper *)hyper;
    double alpha, beta3;
    ademamix_schedule(h, info, &alpha, &beta3);
    const double t = (double)info->step;
    const AdemamixStep s = {h->beta1, h->beta2, (float)beta3, (float)alpha, h->eps,
                            (float)(1.0 - pow(h->beta1, t)), (float)(1.0 - pow(h->beta2, t))};
    const float lr = info->lr, keep = 1.0f - info->lr * h->weight_decay;
    float *m1 = state[0], *m2 = state[1], *v = state[2];
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) param[i] = keep * param[i] - lr * ademamix_rule(&s, grad[i], &m1[i], &m2[i], &v[i]);
}

static int ademamix_log_scalars(const void *hyper, const StepInfo *s, const char **names, double *values, int max) {
    if (max < 2) return 0;
    ademamix_schedule((const AdemamixHyper *)hyper, s, &values[0], &values[1]);
    names[0] = "alpha";
    names[1] = "beta3";
    return 2;
}

static const OptimizerDef optimizer_ademamix = {
    .name = "ademamix",
    .summary = "AdEMAMix, Adam plus a slow EMA with alpha and beta3 warmups (Pagliardini et al. 2024)",
    .keys = ademamix_keys,
    .hyper_size = sizeof(AdemamixHyper),
    .slots = ademamix_slots,
    .step_elements = ademamix_step_elements,
    .log_scalars = ademamix_log_scalars,
};
#endif  // OPTIM_RULES_ONLY
