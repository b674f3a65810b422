// AdamW and its ablation family (Loshchilov & Hutter 2019, "Decoupled Weight Decay
// Regularization"; the switches follow the AdamW-ablation thesis this project reproduces).
// Every switch is independent (and they compose: zero_init=false with bias correction on
// still divides by 1-beta^t, which is one cell of the thesis' bias-correction x zero-init grid):
//   bias_correction (or _m / _v separately)   divide m by 1-beta1^t, v by 1-beta2^t
//   zero_init=false                           m0 = g1, v0 = g1^2 instead of zeros, then the
//                                             usual EMA update (so m1 = g1, v1 = g1^2)
//   eps_inside_sqrt                           sqrt(v_hat + eps) instead of sqrt(v_hat) + eps
//   eps_schedule                              eps as a function of the step (optim/schedules.h)
//   variant "nested"                          m is an EMA of g / (sqrt(v_hat) + eps); p -= lr m_hat
//   variant "laprop"                          as nested with the lr inside the EMA; p -= m_hat
//   weight_decay_mode                         decoupled: p *= 1 - lr wd; l2: g += wd p;
//                                             independent: p *= 1 - s_t wd (s_t = lr schedule multiplier,
//                                             lr_t / peak lr: the decay follows the schedule's shape
//                                             but not the lr's size; Wortsman et al. 2023)
//   amsgrad                                   as torch: vmax = max(vmax, v), denominator from vmax / (1-beta2^t)
//   cautious                                  zero update entries whose sign disagrees with g,
//                                             rescaled by 1/max(mean(mask), 1e-3) (Liang et al. 2024)
// State: m, v (and vmax with amsgrad), one float each per parameter.
//
// Bias corrections (optim/microstats.h, docs/crossfit.md; Nayak et al. 2026), with `correction`:
//   crossfit   m is fed g_A (the mean over micro-batch group A), v the mean over B of g_j^2
//   variance   1/(p + eps) becomes max(0, 1/(p + eps) - Var(p_bar)/(p + eps)^3), p = sqrt(v_hat),
//              Var(p_bar) the variance of the mean of the per-micro-batch hypothetical
//              denominators p_j = sqrt((beta2 v + (1 - beta2) g_j^2) / bc2), by the delta method
//   full       both;  crossfit_split leave_one_out: each micro-batch's numerator against the
//              preconditioner of all the others, averaged (a second pass over the micro-batches)
// They need the standard variant without amsgrad, cautious or L2 decay. Same state.
#pragma once
#include <math.h>

#include "../runtime/portable.h"
#include "microstats.h"

enum { ADAMW_STANDARD, ADAMW_NESTED, ADAMW_LAPROP };
enum { WD_DECOUPLED, WD_L2, WD_INDEPENDENT };

// What the per-element rule needs for one step, resolved once per step on the host. The
// switches become arithmetic factors, so the rule has no branches: loops over it
// vectorise and GPU warps never diverge.
typedef struct {
    float beta1, beta2;           // 0 on the first step without zero-init: moments start from g
    float bc1, bc2;               // bias-correction divisors (1 when switched off)
    float eps_in, eps_out;        // denominator sqrt(v_hat + eps_in) + eps_out
    float x_plain, x_precond;     // m averages g * (x_plain + x_precond / denominator)
    float u_plain, u_precond;     // u = m_hat * (u_plain + u_precond / denominator)
    float lr_update;              // p <- keep * p - lr_update * u
    float keep;                   // decoupled and independent decay
    float l2;                     // L2 decay: g <- g + l2 * p
} AdamWStep;
//   standard: x = (1, 0), u = (0, 1)      nested: x = (0, 1), u = (1, 0)
//   LaProp:   x = (0, lr), u = (1, 0), lr_update = 1

typedef struct {
    float m, v, vmax;  // vmax stays 0 without amsgrad, so max(vmax, v) = v
} AdamWMoments;

static inline HOST_DEVICE float adamw_inv_denominator(const AdamWStep *s, float v_used) {
    return 1.0f / (sqrtf(v_used / s->bc2 + s->eps_in) + s->eps_out);
}

// The moments after a step with effective gradient g.
static inline HOST_DEVICE AdamWMoments adamw_moments(const AdamWStep *s, float g, AdamWMoments in) {
    AdamWMoments out;
    out.v = s->beta2 * in.v + (1.0f - s->beta2) * (g * g);
    out.vmax = in.vmax > out.v ? in.vmax : out.v;  // not fmaxf: its NaN rule blocks vectorising
    const float inv = adamw_inv_denominator(s, out.vmax);
    out.m = s->beta1 * in.m + (1.0f - s->beta1) * g * (s->x_plain + s->x_precond * inv);
    return out;
}

// The update direction u from the moments: p <- keep p - lr_update u.
static inline HOST_DEVICE float adamw_direction(const AdamWStep *s, AdamWMoments st) {
    const float v_used = st.vmax > st.v ? st.vmax : st.v;
    return st.m / s->bc1 * (s->u_plain + s->u_precond * adamw_inv_denominator(s, v_used));
}

// --- Bias corrections (docs/crossfit.md) ---

// adamw_moments with the second moment fed x instead of g^2 (the same arithmetic, so
// x = g * g gives the same bits).
static inline HOST_DEVICE AdamWMoments adamw_moments_x(const AdamWStep *s, float g, float x, AdamWMoments in) {
    AdamWMoments out;
    out.v = s->beta2 * in.v + (1.0f - s->beta2) * x;
    out.vmax = in.vmax > out.v ? in.vmax : out.v;
    const float inv = adamw_inv_denominator(s, out.vmax);
    out.m = s->beta1 * in.m + (1.0f - s->beta1) * g * (s->x_plain + s->x_precond * inv);
    return out;
}

// What the corrected rule needs besides AdamWStep, resolved once per step on the host from
// the micro-batch counts and the clip factor c (statistics are unclipped sums).
typedef struct {
    float c, c2;            // clip factor, c^2
    float inv_na, inv_nv;   // 1 / n_A, 1 / n_V (V: group B when cross-fitting, else all)
    float n_total, inv_nb;  // M, 1 / n_B: the B mean is (M g - c sum_A) / n_B
    float n_over_n1;        // n_V / (n_V - 1), for unbiased sample variances
    float k_var;            // (1 - beta2)^2 / (4 bc2^2 n_V): Var(p_bar) = k_var Var(g_j^2) / w
    float support_clip, support_eps;  // support clip tau (0: off) and its e
    float update_clip;      // +inf when off
    float skip;             // 1: zero a non-finite update
    int split, variance, empirical;   // the mode, for the host's dispatch (see the rule's arguments)
} AdamWCorrection;

// Var(p_bar) by the delta method: p_j = sqrt(w_j), w_j = (beta2 v + (1 - beta2) x_j) / bc2 +
// eps_in, linearised at the mean x_bar of x_j = g_j^2 over V: dp/dx = (1 - beta2) / (2 bc2
// sqrt(w)), so Var(p_bar) = (dp/dx)^2 Var(x_j) / n_V.
static inline HOST_DEVICE float adamw_var_p(const AdamWStep *s, const AdamWCorrection *k, float v_prev, float x_bar,
                                            float var_x) {
    const float w = (s->beta2 * v_prev + (1.0f - s->beta2) * x_bar) / s->bc2 + s->eps_in;
    return w > 0.0f ? k->k_var * var_x / w : 0.0f;
}

// Var(g_j^2) over V from the statistics: g the clipped mean gradient, a the A sum, q and q4
// the sums of g_j^2 and g_j^4 over V (unclipped).
static inline HOST_DEVICE float adamw_var_x(const AdamWCorrection *k, int split, int empirical, float g, float a, float q,
                                            float q4) {
    const float x_bar = k->c2 * q * k->inv_nv;
    if (empirical) return cf_var_sq_empirical(x_bar, k->c2 * k->c2 * q4 * k->inv_nv, k->n_over_n1);
    const float mu = split ? (k->n_total * g - k->c * a) * k->inv_nb : g;  // the mean of g_j over V
    return cf_var_sq_gaussian(mu, x_bar, k->n_over_n1);
}

// The safeguards on an update direction element u, branch-free: the support clip (shrink
// where the numerator's support s_A = g_m^2 exceeds tau times the preconditioner's s_B:
// u *= min(1, sqrt(tau (s_B + e) / (s_A + e)))), the update clip, the non-finite skip.
static inline HOST_DEVICE float adamw_safeguards(const AdamWCorrection *k, float u, float s_a, float s_b) {
    const float f = sqrtf(k->support_clip * (s_b + k->support_eps) / (s_a + k->support_eps));
    u *= k->support_clip > 0.0f && f < 1.0f ? f : 1.0f;
    u = u > k->update_clip ? k->update_clip : u < -k->update_clip ? -k->update_clip : u;
    return k->skip > 0.0f && !cf_finite(u) ? 0.0f : u;
}

// One element of the corrected step: advances m, v and returns the direction u
// (p <- keep p - lr_update u). g: clipped mean gradient; a, q, q4: statistics (see above);
// split, variance, empirical: the mode (constants in the host's loops, so each compiles
// to its own branch-free loop).
static inline HOST_DEVICE float adamw_corrected(const AdamWStep *s, const AdamWCorrection *k, int split, int variance,
                                                int empirical, float g, float a, float q, float q4, float *m, float *v) {
    const float g_m = split ? k->c * a * k->inv_na : g;  // the numerator's gradient
    const float x_b = k->c2 * q * k->inv_nv;             // mean over V of g_j^2
    const float x_in = split ? x_b : g * g;              // what v is fed
    const float v_prev = *v;
    AdamWMoments in;
    in.m = *m;
    in.v = v_prev;
    in.vmax = 0.0f;
    const AdamWMoments st = adamw_moments_x(s, g_m, x_in, in);
    *m = st.m;
    *v = st.v;
    float u;
    if (variance) {
        const float var_p = adamw_var_p(s, k, v_prev, x_b, adamw_var_x(k, split, empirical, g, a, q, q4));
        u = st.m / s->bc1 * cf_corrected_inverse(sqrtf(st.v / s->bc2 + s->eps_in) + s->eps_out, var_p);
    } else {
        u = adamw_direction(s, st);
    }
    return adamw_safeguards(k, u, g_m * g_m, x_in);
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>
#include <string.h>

#include "optimizer.h"
#include "schedules.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
    int bias_correction;
    const cJSON *bias_correction_m_json, *bias_correction_v_json;
    int zero_init, eps_inside_sqrt, variant, weight_decay_mode, amsgrad, cautious;
    const cJSON *eps_schedule_json;
    CorrectionConfig corr;
    float support_clip, support_clip_eps;
    // Resolved by adamw_check:
    int bias_correction_m, bias_correction_v;
    EpsSchedule eps_schedule;
} AdamWHyper;

#define AKEY(name, type, def, range, choices, doc) {#name, type, offsetof(AdamWHyper, name), def, range, choices, doc}
static const ConfigKey adamw_keys[] = {
    AKEY(beta1, KEY_FLOAT, "0.9", "[0,1)", NULL, "first-moment decay"),
    AKEY(beta2, KEY_FLOAT, "0.999", "[0,1)", NULL, "second-moment decay"),
    AKEY(eps, KEY_FLOAT, "1e-8", "(0,inf)", NULL, "denominator epsilon (start value when eps_schedule grows it)"),
    AKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decay coefficient, applied as weight_decay_mode says"),
    AKEY(bias_correction, KEY_BOOL, "true", NULL, NULL, "divide m by 1-beta1^t and v by 1-beta2^t"),
    {"bias_correction_m", KEY_JSON, offsetof(AdamWHyper, bias_correction_m_json), NULL, NULL, NULL, "true/false: override bias_correction for m"},
    {"bias_correction_v", KEY_JSON, offsetof(AdamWHyper, bias_correction_v_json), NULL, NULL, NULL, "true/false: override bias_correction for v"},
    AKEY(zero_init, KEY_BOOL, "true", NULL, NULL, "false: m0 = g1, v0 = g1^2 from the first gradient"),
    AKEY(eps_inside_sqrt, KEY_BOOL, "false", NULL, NULL, "sqrt(v_hat + eps) instead of sqrt(v_hat) + eps"),
    {"eps_schedule", KEY_JSON, offsetof(AdamWHyper, eps_schedule_json), NULL, NULL, NULL,
     "{type: constant|warmup_exp|log_linear, eps_max, w, E, kappa}"},
    AKEY(variant, KEY_CHOICE, "\"standard\"", NULL, "standard|nested|laprop", "nested: EMA of g/(sqrt(v_hat)+eps); laprop: same with lr inside"),
    AKEY(weight_decay_mode, KEY_CHOICE, "\"decoupled\"", NULL, "decoupled|l2|independent", "how weight_decay is applied"),
    AKEY(amsgrad, KEY_BOOL, "false", NULL, NULL, "use the running maximum of v"),
    AKEY(cautious, KEY_BOOL, "false", NULL, NULL, "mask update entries whose sign disagrees with the gradient"),
    CF_KEYS(AdamWHyper),
    CF_MOMENTS_KEY(AdamWHyper),
    AKEY(support_clip, KEY_FLOAT, "0", "[0,inf)", NULL,
         "with a correction: u *= min(1, sqrt(tau (s_B + e) / (s_A + e))), s_A = g_m^2, s_B = what v is fed; 0 = off"),
    AKEY(support_clip_eps, KEY_FLOAT, "1e-12", "(0,inf)", NULL, "e of support_clip"),
    KEY_END,
};
#undef AKEY

static int adamw_flag(const JsonConfig *c, const char *path, const char *key, const cJSON *v, int fallback) {
    if (!v || cJSON_IsNull(v)) return fallback;
    if (!cJSON_IsBool(v)) {
        char sub[128];
        snprintf(sub, sizeof sub, "%s.%s", path, key);
        config_key_error(c, sub, "must be true or false");
    }
    return cJSON_IsTrue(v);
}

static void adamw_check(void *hyper, const JsonConfig *c, const char *path) {
    AdamWHyper *h = (AdamWHyper *)hyper;
    h->bias_correction_m = adamw_flag(c, path, "bias_correction_m", h->bias_correction_m_json, h->bias_correction);
    h->bias_correction_v = adamw_flag(c, path, "bias_correction_v", h->bias_correction_v_json, h->bias_correction);
    char sub[128];
    snprintf(sub, sizeof sub, "%s.eps_schedule", path);
    eps_schedule_read(&h->eps_schedule, c, h->eps_schedule_json, sub);
    cf_check(&h->corr, c, path, 1, "adamw");
    snprintf(sub, sizeof sub, "%s.support_clip", path);
    if (h->support_clip > 0 && h->corr.correction == CORRECTION_NONE)
        config_key_error(c, sub, "is a safeguard of the bias corrections; it needs a correction other than \"none\"");
    if (h->support_clip > 0 && h->corr.split == CF_SPLIT_LOO)
        config_key_error(c, sub, "has no leave-one-out form (each fold has its own numerator); use update_clip");
    if (h->corr.correction != CORRECTION_NONE) {
        snprintf(sub, sizeof sub, "%s.correction", path);
        if (h->variant != ADAMW_STANDARD || h->amsgrad || h->cautious || h->weight_decay_mode == WD_L2)
            config_key_error(c, sub, "the bias corrections are for the standard AdamW rule: variant \"standard\", no "
                             "amsgrad, no cautious mask, weight_decay_mode decoupled or independent");
    }
}

static int adamw_slots(const void *hyper) { return ((const AdamWHyper *)hyper)->amsgrad ? 3 : 2; }

static AdamWStep adamw_resolve(const AdamWHyper *h, const StepInfo *info) {
    AdamWStep s;
    const double t = (double)info->step;
    const int first = !h->zero_init && info->step == 1;
    const float eps = (float)eps_at(&h->eps_schedule, h->eps, info->step, info->total_steps);
    const int precond_first = h->variant != ADAMW_STANDARD;
    s.beta1 = first ? 0.0f : h->beta1;
    s.beta2 = first ? 0.0f : h->beta2;
    s.bc1 = h->bias_correction_m ? (float)(1.0 - pow(h->beta1, t)) : 1.0f;
    s.bc2 = h->bias_correction_v ? (float)(1.0 - pow(h->beta2, t)) : 1.0f;
    s.eps_in = h->eps_inside_sqrt ? eps : 0.0f;
    s.eps_out = h->eps_inside_sqrt ? 0.0f : eps;
    s.x_plain = precond_first ? 0.0f : 1.0f;
    s.x_precond = !precond_first ? 0.0f : h->variant == ADAMW_LAPROP ? info->lr : 1.0f;
    s.u_plain = precond_first ? 1.0f : 0.0f;
    s.u_precond = precond_first ? 0.0f : 1.0f;
    s.lr_update = h->variant == ADAMW_LAPROP ? 1.0f : info->lr;
    s.keep = h->weight_decay_mode == WD_DECOUPLED     ? 1.0f - info->lr * h->weight_decay
             : h->weight_decay_mode == WD_INDEPENDENT ? 1.0f - info->lr_scale * h->weight_decay
                                                      : 1.0f;
    s.l2 = h->weight_decay_mode == WD_L2 ? h->weight_decay : 0.0f;
    return s;
}

// The plain (non-cautious) step, in two loops so that the common one has no conditional
// memory access and vectorises (gcc does not if-convert a load from a maybe-NULL vmax).
static void adamw_loop(const AdamWStep *step, float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, size_t n) {
#pragma omp parallel if (n > 4096)
    {
        const AdamWStep s = *step;  // a private copy: no store below can alias it
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            const AdamWMoments st = adamw_moments(&s, g[i] + s.l2 * p[i], (AdamWMoments){m[i], v[i], 0.0f});
            m[i] = st.m;
            v[i] = st.v;
            p[i] = s.keep * p[i] - s.lr_update * adamw_direction(&s, st);
        }
    }
}

static void adamw_loop_amsgrad(const AdamWStep *step, float *restrict p, const float *restrict g, float *restrict m,
                               float *restrict v, float *restrict vmax, size_t n) {
#pragma omp parallel if (n > 4096)
    {
        const AdamWStep s = *step;
#pragma omp for schedule(static)
        for (size_t i = 0; i < n; i++) {
            const AdamWMoments st = adamw_moments(&s, g[i] + s.l2 * p[i], (AdamWMoments){m[i], v[i], vmax[i]});
            m[i] = st.m;
            v[i] = st.v;
            vmax[i] = st.vmax;
            p[i] = s.keep * p[i] - s.lr_update * adamw_direction(&s, st);
        }
    }
}

static void adamw_step_elements(const void *hyper, const StepInfo *info, float *param, const float *grad,
                                float *const *state, size_t n) {
    const AdamWHyper *h = (const AdamWHyper *)hyper;
    const AdamWStep s = adamw_resolve(h, info);
    float *m = state[0], *v = state[1], *vmax = h->amsgrad ? state[2] : NULL;
    if (!h->cautious) {
        if (h->amsgrad) adamw_loop_amsgrad(&s, param, grad, m, v, vmax, n);
        else adamw_loop(&s, param, grad, m, v, n);
        return;
    }
    // Cautious: the rescaling needs the fraction of agreeing entries over the whole tensor,
    // so advance the moments and count first, then apply.
    size_t agree = 0;
#pragma omp parallel for schedule(static) reduction(+ : agree) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i] + s.l2 * param[i];
        const AdamWMoments st = adamw_moments(&s, g, (AdamWMoments){m[i], v[i], vmax ? vmax[i] : 0.0f});
        m[i] = st.m;
        v[i] = st.v;
        if (vmax) vmax[i] = st.vmax;
        agree += adamw_direction(&s, st) * g > 0.0f;
    }
    const float scale = 1.0f / fmaxf((float)agree / (float)n, 1e-3f);
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i] + s.l2 * param[i];
        const float u = adamw_direction(&s, (AdamWMoments){m[i], v[i], vmax ? vmax[i] : 0.0f});
        param[i] = s.keep * param[i] - (u * g > 0.0f ? s.lr_update * scale * u : 0.0f);
    }
}

static int adamw_log_scalars(const void *hyper, const StepInfo *s, const char **names, double *values, int max) {
    const AdamWHyper *h = (const AdamWHyper *)hyper;
    if (h->eps_schedule.type == EPS_CONSTANT || max < 1) return 0;
    names[0] = "eps";
    values[0] = eps_at(&h->eps_schedule, h->eps, s->step, s->total_steps);
    return 1;
}

static int adamw_needs_whole_tensor(const void *hyper) { return ((const AdamWHyper *)hyper)->cautious; }

// --- Bias corrections: what the group needs, the step, the leave-one-out fold ---

static void adamw_stats_need(const void *hyper, MicroStatsNeed *need) {
    const CorrectionConfig *cc = &((const AdamWHyper *)hyper)->corr;
    memset(need, 0, sizeof *need);
    if (cc->correction == CORRECTION_NONE) return;
    const int variance = cf_corrects_variance(cc->correction), empirical = cc->moments == CF_MOMENTS_EMPIRICAL;
    need->active = 1;
    need->split = cc->split;
    if (cc->split == CF_SPLIT_LOO) {
        need->loo = 1;
        need->sq = 1;
        need->quartic = variance && empirical;
        need->main_variance = variance;
        return;
    }
    need->main_split = cf_crossfits(cc->correction);
    need->a_sum = need->main_split;
    need->sq = 1;
    need->quartic = variance && empirical;
    need->main_variance = variance;
}

static AdamWCorrection adamw_correction_resolve(const AdamWHyper *h, const AdamWStep *s, const MicroStatsView *v) {
    AdamWCorrection k;
    const float nv = (float)v->n_v;
    k.c = v->clip;
    k.c2 = v->clip * v->clip;
    k.inv_na = v->n_a ? 1.0f / (float)v->n_a : 0.0f;
    k.inv_nv = 1.0f / nv;
    k.n_total = (float)v->n_total;
    k.inv_nb = v->n_total > v->n_a ? 1.0f / (float)(v->n_total - v->n_a) : 0.0f;
    k.n_over_n1 = v->n_v > 1 ? nv / (nv - 1.0f) : 0.0f;
    const double kb = (1.0 - (double)s->beta2) / (double)s->bc2;
    k.k_var = (float)(kb * kb / (4.0 * nv));
    k.support_clip = h->support_clip;
    k.support_eps = h->support_clip_eps;
    k.update_clip = h->corr.update_clip > 0 ? h->corr.update_clip : INFINITY;
    k.skip = h->corr.skip_nonfinite ? 1.0f : 0.0f;
    k.split = v->v_is_b;
    k.variance = cf_corrects_variance(h->corr.correction);
    k.empirical = h->corr.moments == CF_MOMENTS_EMPIRICAL;
    return k;
}

// Leave-one-out, fold r (after clipping, in the second pass): with g_r = c G_r,
//   s_-r = (c^2 Q2 - g_r^2) / (M - 1)                  the mean of g_j^2 over the others
//   m_hat_r = (beta1 m + (1 - beta1) g_r) / bc1
//   D_r = sqrt((beta2 v + (1 - beta2) s_-r) / bc2 + eps_in) + eps_out
//   U1 += m_hat_r / D_r,  U3 += m_hat_r / D_r^3
static void adamw_loo_fold_elements(const void *hyper, const StepInfo *info, const MicroStatsView *mv, const float *g_r,
                                    float *const *state, size_t n) {
    const AdamWStep s = adamw_resolve((const AdamWHyper *)hyper, info);
    const float c = mv->clip, c2 = c * c, inv_m1 = 1.0f / (float)(mv->n_total - 1);
    const float *m = state[0], *v = state[1], *q = mv->sq_sum;
    float *u1 = mv->u1, *u3 = mv->u3;
#pragma omp parallel for simd schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        const float gr = c * g_r[i];
        float s_minus = (c2 * q[i] - gr * gr) * inv_m1;
        s_minus = s_minus > 0.0f ? s_minus : 0.0f;
        const float m_hat = (s.beta1 * m[i] + (1.0f - s.beta1) * gr) / s.bc1;
        const float inv = 1.0f / (sqrtf((s.beta2 * v[i] + (1.0f - s.beta2) * s_minus) / s.bc2 + s.eps_in) + s.eps_out);
        u1[i] += m_hat * inv;
        u3[i] += m_hat * inv * inv * inv;
    }
}

// Leave-one-out step: u = U1/M, and with the variance correction u - V U3/M zeroed where
// it flips u's sign; V is Var(p_bar) over every micro-batch (the delta-method form of the
// jackknife variance of the fold denominators D_r). The state follows the whole batch:
// m is fed the mean gradient, v the mean of g_j^2.
static void adamw_loo_step(const AdamWStep *step, const AdamWCorrection *corr, const MicroStatsView *mv, float *param,
                           const float *grad, float *m, float *v, size_t n) {
    const float inv_m = 1.0f / (float)mv->n_total;
    const float *q = mv->sq_sum, *q4 = mv->quartic_sum, *u1 = mv->u1, *u3 = mv->u3;
#pragma omp parallel if (n > 4096)
    {
        const AdamWStep s = *step;
        const AdamWCorrection k = *corr;
#pragma omp for simd schedule(static)
        for (size_t i = 0; i < n; i++) {
            const float x_bar = k.c2 * q[i] * k.inv_nv;
            const float u_first = u1[i] * inv_m;
            float u = u_first;
            if (k.variance) {
                const float var_p =
                    adamw_var_p(&s, &k, v[i], x_bar, adamw_var_x(&k, 0, k.empirical, grad[i], 0.0f, q[i], q4 ? q4[i] : 0.0f));
                u = u_first - var_p * u3[i] * inv_m;
                u = u * u_first > 0.0f ? u : 0.0f;
            }
            const AdamWMoments st = adamw_moments_x(&s, grad[i], x_bar, (AdamWMoments){m[i], v[i], 0.0f});
            m[i] = st.m;
            v[i] = st.v;
            param[i] = s.keep * param[i] - s.lr_update * adamw_safeguards(&k, u, 0.0f, 0.0f);
        }
    }
}

// The corrected loop of one mode (split, variance, empirical as literal constants), so that
// each mode is its own branch-free loop that vectorises like the plain one. (A function
// inlined with constant flags would not do: OpenMP outlines the loop before inlining.)
#define ADAMW_STATS_LOOP(name, SPLIT, VARIANCE, EMPIRICAL)                                                           \
    static void name(const AdamWStep *step, const AdamWCorrection *corr, float *restrict param,                       \
                     const float *restrict grad, const float *restrict a, const float *restrict q,                    \
                     const float *restrict q4, float *restrict m, float *restrict v, size_t n) {                      \
        _Pragma("omp parallel if (n > 4096)") {                                                                       \
            const AdamWStep s = *step;                                                                                \
            const AdamWCorrection k = *corr;                                                                          \
            _Pragma("omp for simd schedule(static)") for (size_t i = 0; i < n; i++) {                                \
                const float u = adamw_corrected(&s, &k, SPLIT, VARIANCE, EMPIRICAL, grad[i], SPLIT ? a[i] : 0.0f,     \
                                                q[i], EMPIRICAL ? q4[i] : 0.0f, &m[i], &v[i]);                        \
                param[i] = s.keep * param[i] - s.lr_update * u;                                                       \
            }                                                                                                         \
        }                                                                                                             \
    }
ADAMW_STATS_LOOP(adamw_loop_crossfit, 1, 0, 0)
ADAMW_STATS_LOOP(adamw_loop_variance, 0, 1, 0)
ADAMW_STATS_LOOP(adamw_loop_variance_empirical, 0, 1, 1)
ADAMW_STATS_LOOP(adamw_loop_full, 1, 1, 0)
ADAMW_STATS_LOOP(adamw_loop_full_empirical, 1, 1, 1)
#undef ADAMW_STATS_LOOP

static void adamw_step_elements_stats(const void *hyper, const StepInfo *info, const MicroStatsView *mv, float *param,
                                      const float *grad, float *const *state, size_t n) {
    const AdamWHyper *h = (const AdamWHyper *)hyper;
    const AdamWStep s = adamw_resolve(h, info);
    const AdamWCorrection k = adamw_correction_resolve(h, &s, mv);
    float *m = state[0], *v = state[1];
    if (h->corr.split == CF_SPLIT_LOO) {
        adamw_loo_step(&s, &k, mv, param, grad, m, v, n);
        return;
    }
    const float *a = mv->a_sum, *q = mv->sq_sum, *q4 = mv->quartic_sum;
    if (!k.variance) adamw_loop_crossfit(&s, &k, param, grad, a, q, q4, m, v, n);
    else if (!k.split) (k.empirical ? adamw_loop_variance_empirical : adamw_loop_variance)(&s, &k, param, grad, a, q, q4, m, v, n);
    else (k.empirical ? adamw_loop_full_empirical : adamw_loop_full)(&s, &k, param, grad, a, q, q4, m, v, n);
}

static const OptimizerDef optimizer_adamw = {
    .name = "adamw",
    .summary = "AdamW with the ablation switches (Loshchilov & Hutter 2019; LaProp: Ziyin et al. 2020)",
    .keys = adamw_keys,
    .hyper_size = sizeof(AdamWHyper),
    .check = adamw_check,
    .slots = adamw_slots,
    .step_elements = adamw_step_elements,
    .log_scalars = adamw_log_scalars,
    .needs_whole_tensor = adamw_needs_whole_tensor,
    .stats_need = adamw_stats_need,
    .step_elements_stats = adamw_step_elements_stats,
    .loo_fold_elements = adamw_loo_fold_elements,
};
#endif  // OPTIM_RULES_ONLY
