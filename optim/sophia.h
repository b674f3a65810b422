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
//
// Bias corrections (optim/microstats.h, docs/crossfit.md; Nayak et al. 2026), with `correction`:
//   crossfit   m is fed g_A (micro-batch group A's mean gradient); h is fed the mean over B of
//              the per-micro-batch Gauss-Newton-Bartlett estimates r_j = kappa g_hat_j^2
//              (kappa = 1/M with curvature_scale "step", so E r_j = E g_hat^2 of the plain hook
//              for independent micro-batches; 1 with "micro", as the paper's code); A's
//              sampled-label backward is skipped
//   variance   1/p with p = rho bs h + eps becomes max(0, 1/p - Var(p_bar)/p^3), Var(p_bar) =
//              (rho bs (1 - beta2))^2 Var(r_bar) from the spread of r_j at the last estimate,
//              kept in a third state slot W = (1 - beta2)^2 Var(r_bar)
//   full       both.
// State: m, h (and W with variance or full).
#pragma once
#include <math.h>

#include "../runtime/portable.h"
#include "microstats.h"

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
    // min(r, 1) by comparison, not fminf: the same value (a NaN r gives 1 both ways), but
    // fminf's NaN rule keeps gcc from vectorising the loop.
    const float r = fabsf(*m) / (s->rho_bs * h + s->eps);
    const float ratio = r < 1.0f ? r : 1.0f;
    const float sign = (float)((*m > 0.0f) - (*m < 0.0f));
    return s->keep * p - s->lr * sign * ratio;
}

// The Hessian-diagonal EMA from the gradient on sampled labels.
static inline HOST_DEVICE float sophia_hessian(float beta2, float h, float g_hat) {
    return beta2 * h + (1.0f - beta2) * g_hat * g_hat;
}

// The corrected element, branch-free: m is fed g_m (g_A when cross-fitting); var_p = (rho bs)^2
// W is the variance of the denominator's estimate (0: the plain ratio |m| / p); the ratio is
// capped at min(1, update_clip) (update_clip = +inf when off); skip > 0 zeroes a non-finite
// update. Returns the new parameter.
static inline HOST_DEVICE float sophia_update_corrected(const SophiaStep *s, float p, float g_m, float *m, float h,
                                                        float var_p, float update_clip, float skip) {
    *m = s->beta1 * *m + (1.0f - s->beta1) * g_m;
    const float den = s->rho_bs * h + s->eps, am = fabsf(*m);
    float ratio = var_p > 0.0f ? am * cf_corrected_inverse(den, var_p) : am / den;
    ratio = ratio < 1.0f ? ratio : 1.0f;
    ratio = ratio < update_clip ? ratio : update_clip;
    const float sign = (float)((*m > 0.0f) - (*m < 0.0f));
    float u = sign * ratio;
    u = skip > 0.0f && !cf_finite(u) ? 0.0f : u;
    return s->keep * p - s->lr * u;
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>
#include <string.h>

#include "optimizer.h"

enum { SOPHIA_CURVATURE_STEP, SOPHIA_CURVATURE_MICRO };

typedef struct {
    float beta1, beta2, rho, eps, weight_decay;
    int hessian_interval;
    CorrectionConfig corr;
    int curvature_scale;
} SophiaHyper;

#define PKEY(name, type, def, range, choices, doc) {#name, type, offsetof(SophiaHyper, name), def, range, choices, doc}
static const ConfigKey sophia_keys[] = {
    PKEY(beta1, KEY_FLOAT, "0.965", "[0,1)", NULL, "momentum decay"),
    PKEY(beta2, KEY_FLOAT, "0.99", "[0,1)", NULL, "decay of the Hessian-diagonal estimate h (per estimate, not per step)"),
    PKEY(rho, KEY_FLOAT, "0.04", "(0,inf)", NULL, "clipping scale: the update is clipped where |m| > rho bs h"),
    PKEY(eps, KEY_FLOAT, "1e-15", "(0,inf)", NULL, "added to rho bs h"),
    PKEY(weight_decay, KEY_FLOAT, "0.1", "[0,inf)", NULL, "decoupled: W <- W (1 - lr wd)"),
    PKEY(hessian_interval, KEY_INT, "10", "[1,inf)", NULL, "steps between Hessian estimates (k)"),
    CF_KEYS(SophiaHyper),
    CF_MOMENTS_KEY(SophiaHyper),
    PKEY(curvature_scale, KEY_CHOICE, "\"step\"", NULL, "step|micro",
         "cross-fitting: each micro-batch's estimate g_hat_j^2 times its share of the step's tokens (step) or not (micro)"),
    KEY_END,
};
#undef PKEY

static inline void sophia_check(void *hyper, const JsonConfig *c, const char *path) {
    cf_check(&((SophiaHyper *)hyper)->corr, c, path, 0, "sophia");
}

static inline int sophia_slots(const void *hyper) {
    return cf_corrects_variance(((const SophiaHyper *)hyper)->corr.correction) ? 3 : 2;
}

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
    const SophiaStep step = sophia_resolve((const SophiaHyper *)hyper, info);
    float *restrict m = state[0];
    const float *restrict h = state[1];
#pragma omp parallel if (n > 4096)
    {
        const SophiaStep s = step;  // a private copy: no store below can alias it
#pragma omp for simd schedule(static)
        for (size_t i = 0; i < n; i++) param[i] = sophia_update(&s, param[i], grad[i], &m[i], h[i]);
    }
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

// --- Bias corrections ---

static inline void sophia_stats_need(const void *hyper, MicroStatsNeed *need) {
    const CorrectionConfig *cc = &((const SophiaHyper *)hyper)->corr;
    memset(need, 0, sizeof *need);
    if (cc->correction == CORRECTION_NONE) return;
    const int variance = cf_corrects_variance(cc->correction);
    need->active = 1;
    need->split = cc->split;
    need->main_split = cf_crossfits(cc->correction);
    need->a_sum = need->main_split;  // the momentum from A; nothing else in the main pass
    need->curvature = 1;
    need->curv_split = need->main_split;
    need->curv_variance = variance;
    need->curv_quartic = variance && cc->moments == CF_MOMENTS_EMPIRICAL;
}

static inline void sophia_step_elements_stats(const void *hyper, const StepInfo *info, const MicroStatsView *v,
                                              float *param, const float *grad, float *const *state, size_t n) {
    const SophiaHyper *hp = (const SophiaHyper *)hyper;
    const SophiaStep s = sophia_resolve(hp, info);
    const int variance = cf_corrects_variance(hp->corr.correction);
    // Branch-free: g_m = gs * src (src = A's sum or the mean gradient), var_p = ws * W (ws = 0
    // without a variance correction, W then any valid array).
    const float *src = v->a_sum ? v->a_sum : grad, gs = v->a_sum ? v->clip / (float)v->n_a : 1.0f;
    const float *W = variance ? state[2] : state[1], ws = variance ? s.rho_bs * s.rho_bs : 0.0f;
    const float uc = hp->corr.update_clip > 0.0f ? hp->corr.update_clip : INFINITY;
    const float skip = hp->corr.skip_nonfinite ? 1.0f : 0.0f;
    float *m = state[0];
    const float *h = state[1];
#pragma omp parallel if (n > 4096)
    {
        const SophiaStep sp = s;  // a private copy: no store below can alias it
#pragma omp for simd schedule(static)
        for (size_t i = 0; i < n; i++)
            param[i] = sophia_update_corrected(&sp, param[i], gs * src[i], &m[i], h[i], ws * W[i], uc, skip);
    }
}

// h <- beta2 h + (1 - beta2) r_in, r_in = g_hat^2 of the mean sampled-label gradient, or with
// cross-fitting the mean over B of r_j = kappa g_hat_j^2. With a variance correction
// W <- (1 - beta2)^2 Var(r_bar), Var(r_bar) = kappa^2 Var(g_hat_j^2) / n_V, Var(g_hat_j^2)
// the sample variance ("empirical") or 2 x_bar^2 n / (n + 2), unbiased for a zero-mean
// Gaussian g_hat_j ("gaussian": sampled-label gradients have mean zero).
static inline void sophia_curvature_elements_stats(const void *hyper, const StepInfo *info, const MicroStatsView *v,
                                                   const float *curvature_grad, float *const *state, size_t n) {
    const SophiaHyper *hp = (const SophiaHyper *)hyper;
    const float beta2 = hp->beta2, nv = (float)v->n_v;
    const float kappa = hp->curvature_scale == SOPHIA_CURVATURE_STEP ? 1.0f / (float)v->n_total : 1.0f;
    const float inv_nv = 1.0f / nv, n_over_n1 = v->n_v > 1 ? nv / (nv - 1.0f) : 0.0f;
    const float gauss = 2.0f * nv / (nv + 2.0f), w_scale = (1.0f - beta2) * (1.0f - beta2) * kappa * kappa * inv_nv;
    const int split = v->v_is_b, variance = cf_corrects_variance(hp->corr.correction);
    const int empirical = v->quartic_sum != NULL;
    const float *q = v->sq_sum, *q4 = empirical ? v->quartic_sum : v->sq_sum;
    float *h = state[1], *W = variance ? state[2] : state[1];
#pragma omp parallel for simd schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        const float x_bar = q[i] * inv_nv, g = curvature_grad[i];
        const float r_in = split ? kappa * x_bar : g * g;
        const float hn = beta2 * h[i] + (1.0f - beta2) * r_in;
        const float var_x = empirical ? cf_var_sq_empirical(x_bar, q4[i] * inv_nv, n_over_n1) : gauss * x_bar * x_bar;
        // W aliases h without a variance correction: store h last there.
        if (variance) W[i] = w_scale * var_x;
        h[i] = hn;
    }
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
    .check = sophia_check,
    .stats_need = sophia_stats_need,
    .step_elements_stats = sophia_step_elements_stats,
    .curvature_elements_stats = sophia_curvature_elements_stats,
};
#endif  // OPTIM_RULES_ONLY
