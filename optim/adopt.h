// ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the
// Optimal Rate", Algorithm 1 and the official code github.com/iShohei220/adopt):
//   step 1:  v = g^2 and nothing else (no parameter update, no decay)
//   step t:  x = g / max(sqrt(v), eps)                  v from the previous steps only
//            x = clamp(x, -c_t, c_t), c_t = (t-1)^0.25   clip (the official default since
//                                                        Nov 2024; clip=false: the original)
//            m = beta1 m + (1 - beta1) x
//            p <- (1 - lr wd) p - lr m                   (decoupled; l2: g += wd p first)
//            v = beta2 v + (1 - beta2) g^2
// t is this trainer's 1-based step, so t-1 is the official code's step counter (the
// number of earlier calls), and the first real update is clipped at 1.
// State: m, v, one float each per parameter.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

enum { ADOPT_WD_DECOUPLED, ADOPT_WD_L2 };

typedef struct {
    float beta1, beta2, eps;
    float clip;  // clamp of the normalised gradient; <= 0: no clipping
    int first;   // step 1: only v is initialised
} AdoptStep;

// Returns the update direction (the new m; 0 on the first step) and advances m and v with
// the effective gradient g.
static inline HOST_DEVICE float adopt_rule(const AdoptStep *s, float g, float *m, float *v) {
    if (s->first) {
        *v = g * g;
        return 0.0f;
    }
    float x = g / fmaxf(sqrtf(*v), s->eps);
    if (s->clip > 0.0f) x = fminf(fmaxf(x, -s->clip), s->clip);
    const float mn = s->beta1 * *m + (1.0f - s->beta1) * x;
    *m = mn;
    *v = s->beta2 * *v + (1.0f - s->beta2) * (g * g);
    return mn;
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>

#include "optimizer.h"

typedef struct {
    float beta1, beta2, eps, weight_decay;
    int weight_decay_mode, clip;
    float clip_exponent;
} AdoptHyper;

#define ADOPTKEY(name, type, def, range, choices, doc) {#name, type, offsetof(AdoptHyper, name), def, range, choices, doc}
static const ConfigKey adopt_keys[] = {
    ADOPTKEY(beta1, KEY_FLOAT, "0.9", "[0,1)", NULL, "decay of the momentum of normalised gradients"),
    ADOPTKEY(beta2, KEY_FLOAT, "0.9999", "[0,1)", NULL, "second-moment decay (the paper: any beta2 converges)"),
    ADOPTKEY(eps, KEY_FLOAT, "1e-6", "(0,inf)", NULL, "floor of sqrt(v): g / max(sqrt(v), eps)"),
    ADOPTKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decay coefficient, applied as weight_decay_mode says"),
    ADOPTKEY(weight_decay_mode, KEY_CHOICE, "\"decoupled\"", NULL, "decoupled|l2",
             "decoupled: p *= 1 - lr wd (official decouple=True); l2: g += wd p (official default decouple=False)"),
    ADOPTKEY(clip, KEY_BOOL, "true", NULL, NULL, "clamp g / max(sqrt(v), eps) to +-(t-1)^clip_exponent (official default)"),
    ADOPTKEY(clip_exponent, KEY_FLOAT, "0.25", "(0,inf)", NULL, "exponent of the clipping schedule"),
    KEY_END,
};
#undef ADOPTKEY

static int adopt_slots(const void *hyper) { return 2; }

static AdoptStep adopt_resolve(const AdoptHyper *h, const StepInfo *info) {
    AdoptStep s;
    s.beta1 = h->beta1;
    s.beta2 = h->beta2;
    s.eps = h->eps;
    s.first = info->step == 1;
    s.clip = h->clip && info->step > 1 ? (float)pow((double)(info->step - 1), h->clip_exponent) : 0.0f;
    return s;
}

static void adopt_step_elements(const void *hyper, const StepInfo *info, float *param, const float *grad,
                                float *const *state, size_t n) {
    const AdoptHyper *h = (const AdoptHyper *)hyper;
    const AdoptStep s = adopt_resolve(h, info);
    const float l2 = h->weight_decay_mode == ADOPT_WD_L2 ? h->weight_decay : 0.0f;
    // The first step changes nothing but v (the official code skips the decay too).
    const float lr = s.first ? 0.0f : info->lr;
    const float keep = h->weight_decay_mode == ADOPT_WD_DECOUPLED ? 1.0f - lr * h->weight_decay : 1.0f;
    float *m = state[0], *v = state[1];
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        const float u = adopt_rule(&s, grad[i] + l2 * param[i], &m[i], &v[i]);
        param[i] = keep * param[i] - lr * u;
    }
}

static const OptimizerDef optimizer_adopt = {
    .name = "adopt",
    .summary = "ADOPT, momentum of g normalised by the previous v, clipped (Taniguchi et al. 2024, NeurIPS)",
    .keys = adopt_keys,
    .hyper_size = sizeof(AdoptHyper),
    .slots = adopt_slots,
    .step_elements = adopt_step_elements,
};
#endif  // OPTIM_RULES_ONLY
