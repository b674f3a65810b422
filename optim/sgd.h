// SGD with momentum, optionally Nesterov, as torch.optim.SGD defines it (Polyak 1964;
// Sutskever et al. 2013, "On the importance of initialization and momentum in deep
// learning", for the Nesterov form):
//   b_1 = g_1;  b_t = mu b_{t-1} + (1 - dampening) g_t          (momentum > 0)
//   u_t = nesterov ? g_t + mu b_t : b_t                          (momentum 0: u_t = g_t)
//   p  <- (1 - lr wd) p - lr u_t                                 weight_decay_mode decoupled
//   g_t <- g_t + wd p before everything above                     weight_decay_mode l2 (torch)
//   cautious: u_t <- u_t * [u_t g_t > 0] / max(mean over the tensor of [u_t g_t > 0], 1e-3)
//             (Liang et al. 2024, "Cautious Optimizers"; the rescaling as in timm)
// State: the momentum buffer b (one float per parameter; none when momentum is 0).
#pragma once
#include <math.h>

#include "../runtime/portable.h"

enum { SGD_WD_DECOUPLED, SGD_WD_L2 };

// What the per-element rule needs for one step, resolved once per step on the host.
typedef struct {
    float momentum;  // mu (0: no buffer)
    float damp;      // 1 - dampening
    float l2;        // g <- g + l2 p before the rule (L2 mode)
    int first;       // first step: the buffer starts as the gradient (torch)
    int nesterov;
} SgdStep;

// Advances the momentum buffer *b with the effective gradient g and returns the update
// direction u (p <- keep p - lr u).
static inline HOST_DEVICE float sgd_rule(const SgdStep *s, float g, float *b) {
    if (s->momentum == 0.0f) return g;
    const float bn = s->first ? g : s->momentum * *b + s->damp * g;
    *b = bn;
    return s->nesterov ? g + s->momentum * bn : bn;
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>

#include "optimizer.h"

typedef struct {
    float momentum, dampening, weight_decay;
    int nesterov, weight_decay_mode, cautious;
} SgdHyper;

#define SGDKEY(name, type, def, range, choices, doc) {#name, type, offsetof(SgdHyper, name), def, range, choices, doc}
static const ConfigKey sgd_keys[] = {
    SGDKEY(momentum, KEY_FLOAT, "0.9", "[0,1)", NULL, "momentum mu (0: plain SGD, no state)"),
    SGDKEY(dampening, KEY_FLOAT, "0", "[0,1)", NULL, "the gradient enters the buffer as (1 - dampening) g (not on step 1, as torch)"),
    SGDKEY(nesterov, KEY_BOOL, "false", NULL, NULL, "Nesterov momentum: u = g + mu b"),
    SGDKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decay coefficient, applied as weight_decay_mode says"),
    SGDKEY(weight_decay_mode, KEY_CHOICE, "\"decoupled\"", NULL, "decoupled|l2",
           "decoupled: p *= 1 - lr wd; l2: g += wd p (torch.optim.SGD)"),
    SGDKEY(cautious, KEY_BOOL, "false", NULL, NULL, "mask update entries whose sign disagrees with the gradient"),
    KEY_END,
};
#undef SGDKEY

static void sgd_check(void *hyper, const JsonConfig *c, const char *path) {
    const SgdHyper *h = (const SgdHyper *)hyper;
    if (h->nesterov && (h->momentum == 0.0f || h->dampening != 0.0f)) {
        char sub[128];
        snprintf(sub, sizeof sub, "%s.nesterov", path);
        config_key_error(c, sub, "Nesterov momentum needs momentum > 0 and dampening 0 (as torch.optim.SGD)");
    }
}

static int sgd_slots(const void *hyper) { return ((const SgdHyper *)hyper)->momentum > 0.0f ? 1 : 0; }

static void sgd_step_elements(const void *hyper, const StepInfo *info, float *param, const float *grad,
                              float *const *state, size_t n) {
    const SgdHyper *h = (const SgdHyper *)hyper;
    SgdStep s;
    s.momentum = h->momentum;
    s.damp = 1.0f - h->dampening;
    s.l2 = h->weight_decay_mode == SGD_WD_L2 ? h->weight_decay : 0.0f;
    s.first = info->step == 1;
    s.nesterov = h->nesterov;
    const float lr = info->lr;
    const float keep = h->weight_decay_mode == SGD_WD_DECOUPLED ? 1.0f - lr * h->weight_decay : 1.0f;
    float scratch = 0.0f;
    float *b = h->momentum > 0.0f ? state[0] : NULL;
    float scale = 1.0f;
    if (h->cautious) {
        // The rescaling needs the agreeing fraction over the tensor: a first pass on copies.
        size_t agree = 0;
#pragma omp parallel for schedule(static) reduction(+ : agree) if (n > 4096)
        for (size_t i = 0; i < n; i++) {
            const float g = grad[i] + s.l2 * param[i];
            float bc = b ? b[i] : 0.0f;
            agree += sgd_rule(&s, g, &bc) * g > 0.0f;
        }
        scale = 1.0f / fmaxf((float)agree / (float)n, 1e-3f);
    }
    const int cautious = h->cautious;
#pragma omp parallel for schedule(static) firstprivate(scratch) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i] + s.l2 * param[i];
        const float u = sgd_rule(&s, g, b ? &b[i] : &scratch);
        const float step = cautious ? (u * g > 0.0f ? scale * u : 0.0f) : u;
        param[i] = keep * param[i] - lr * step;
    }
}

static int sgd_needs_whole_tensor(const void *hyper) { return ((const SgdHyper *)hyper)->cautious; }

static const OptimizerDef optimizer_sgd = {
    .name = "sgd",
    .summary = "SGD with momentum and Nesterov as torch.optim.SGD (Sutskever et al. 2013); decoupled or L2 decay, cautious mask",
    .keys = sgd_keys,
    .hyper_size = sizeof(SgdHyper),
    .check = sgd_check,
    .slots = sgd_slots,
    .step_elements = sgd_step_elements,
    .needs_whole_tensor = sgd_needs_whole_tensor,
};
#endif  // OPTIM_RULES_ONLY
