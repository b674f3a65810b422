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
#pragma once
#include <math.h>

#include "../runtime/portable.h"

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

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>

#include "optimizer.h"
#include "schedules.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
    int bias_correction;
    const cJSON *bias_correction_m_json, *bias_correction_v_json;
    int zero_init, eps_inside_sqrt, variant, weight_decay_mode, amsgrad, cautious;
    const cJSON *eps_schedule_json;
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
};
#endif  // OPTIM_RULES_ONLY
