// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2):
//   u = sign(beta1 m + (1 - beta1) g)
//   p <- p - lr (u + wd p)
//   m <- beta2 m + (1 - beta2) g
// sign(0) = 0, as torch.sign. Lion's update has unit magnitude per entry, so its lr is
// typically 3-10x smaller than AdamW's and its weight decay 3-10x larger (paper, sec. 5).
// cautious: u <- u [u g > 0] / max(mean over the tensor of [u g > 0], 1e-3) (Liang et al.
// 2024, "Cautious Optimizers"; the rescaling as in timm).
// State: m, one float per parameter.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

typedef struct {
    float beta1, beta2;
} LionStep;

static inline HOST_DEVICE float lion_sign(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

// Returns the update direction u for gradient g and advances the momentum *m.
static inline HOST_DEVICE float lion_rule(const LionStep *s, float g, float *m) {
    const float u = lion_sign(s->beta1 * *m + (1.0f - s->beta1) * g);
    *m = s->beta2 * *m + (1.0f - s->beta2) * g;
    return u;
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>

#include "optimizer.h"

typedef struct {
    float beta1, beta2, weight_decay;
    int cautious;
} LionHyper;

#define LIONKEY(name, type, def, range, choices, doc) {#name, type, offsetof(LionHyper, name), def, range, choices, doc}
static const ConfigKey lion_keys[] = {
    LIONKEY(beta1, KEY_FLOAT, "0.9", "[0,1)", NULL, "interpolation between momentum and gradient inside the sign"),
    LIONKEY(beta2, KEY_FLOAT, "0.99", "[0,1)", NULL, "momentum decay"),
    LIONKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decoupled decay: p -= lr wd p"),
    LIONKEY(cautious, KEY_BOOL, "false", NULL, NULL, "mask update entries whose sign disagrees with the gradient"),
    KEY_END,
};
#undef LIONKEY

static int lion_slots(const void *hyper) { return 1; }

static void lion_step_elements(const void *hyper, const StepInfo *info, float *param, const float *grad,
                               float *const *state, size_t n) {
    const LionHyper *h = (const LionHyper *)hyper;
    const LionStep s = {h->beta1, h->beta2};
    const float lr = info->lr, keep = 1.0f - info->lr * h->weight_decay;
    float *m = state[0];
    float scale = 1.0f;
    if (h->cautious) {
        // The rescaling needs the agreeing fraction over the tensor: a first pass on copies.
        size_t agree = 0;
#pragma omp parallel for schedule(static) reduction(+ : agree) if (n > 4096)
        for (size_t i = 0; i < n; i++) {
            float mc = m[i];
            agree += lion_rule(&s, grad[i], &mc) * grad[i] > 0.0f;
        }
        scale = 1.0f / fmaxf((float)agree / (float)n, 1e-3f);
    }
    const int cautious = h->cautious;
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        const float u = lion_rule(&s, grad[i], &m[i]);
        const float step = cautious ? (u * grad[i] > 0.0f ? scale * u : 0.0f) : u;
        param[i] = keep * param[i] - lr * step;
    }
}

static int lion_needs_whole_tensor(const void *hyper) { return ((const LionHyper *)hyper)->cautious; }

static const OptimizerDef optimizer_lion = {
    .name = "lion",
    .summary = "Lion, sign of an interpolated momentum (Chen et al. 2023, Symbolic Discovery of Optimization Algorithms)",
    .keys = lion_keys,
    .hyper_size = sizeof(LionHyper),
    .slots = lion_slots,
    .step_elements = lion_step_elements,
    .needs_whole_tensor = lion_needs_whole_tensor,
};
#endif  // OPTIM_RULES_ONLY
