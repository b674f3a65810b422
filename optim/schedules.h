// Schedules as pure functions of the step, so that resuming, the CPU and the GPU all see
// the same values. Steps are 1-based: step t is the t-th optimizer update of T.
#pragma once
#include "../runtime/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DECAY_CONSTANT, DECAY_COSINE, DECAY_LINEAR, DECAY_WSD } DecayKind;

typedef struct {
    float lr;              // peak learning rate
    int warmup;            // linear warmup steps: lr * t / warmup for t <= warmup
    int decay;             // DecayKind after warmup
    float min_lr;          // floor reached at the last step (cosine, linear, wsd)
    float decay_fraction;  // wsd: the final fraction of steps that decays linearly
} ScheduleConfig;

extern const ConfigKey schedule_keys[];

// The learning rate at step t of T divided by the peak lr: the multiplier every group's
// own peak lr is scaled by.
float lr_scale_at(const ScheduleConfig *s, long t, long T);

typedef enum { EPS_CONSTANT, EPS_WARMUP_EXP, EPS_LOG_LINEAR } EpsScheduleKind;

typedef struct {
    int type;       // EpsScheduleKind
    float eps_max;  // value reached at E*T and kept after
    float w;        // fraction of T where growth starts
    float E;        // fraction of T where growth ends
    float kappa;    // warmup_exp: growth rate over the window (k = kappa / (T (E - w)))
} EpsSchedule;

extern const ConfigKey eps_schedule_keys[];

// Reads an eps_schedule object (NULL: constant); `path` names it in errors.
void eps_schedule_read(EpsSchedule *s, const JsonConfig *c, const cJSON *obj, const char *path);
// eps at step t of T, starting from the base eps:
//   constant:   eps
//   warmup_exp: eps until wT; A exp(k (t - wT)) + B from eps (at wT) to eps_max (at ET)
//               with k = kappa / (T (E - w)); eps_max after ET
//   log_linear: eps until wT; eps (eps_max/eps)^((t - wT)/((E - w)T)) up to ET; eps_max after
double eps_at(const EpsSchedule *s, double eps, long t, long T);

// Linear ramp from `from` to `to` over the first `steps` steps (t = steps gives `to`);
// used for momentum and beta warmups. steps <= 0 gives `to`.
double linear_warmup(double from, double to, long t, long steps);

// AdEMAMix's beta3 warmup (Pagliardini et al. 2024, and their official code): linear in
// the half-life f(beta) = ln(0.5) / ln(beta + 1e-8) - 1 from `from` (at t = 0) to `to` (at
// t = steps), that is beta(t) = 0.5^(1 / (1 + (1 - t/steps) f(from) + (t/steps) f(to))).
// t >= steps (or steps <= 0) gives `to` exactly. The 1e-8 is the official code's guard
// for from = 0.
double halflife_warmup(double from, double to, long t, long steps);

#ifdef __cplusplus
}
#endif
