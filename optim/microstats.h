// Per-micro-batch gradient statistics for the bias corrections of Nayak et al. 2026,
// "Correcting Stochastic Update Bias in Preconditioned Language Model Optimizers"
// (arXiv:2605.20756; code github.com/fastino-ai/preconditioner-bias-correction).
// docs/crossfit.md has the estimators, the keys, the memory and time costs.
//
// With gradient accumulation over M micro-batches (grad_accum x ranks), an optimizer group
// with `correction` set gets, besides the usual mean gradient g (after clipping):
//   - cross-fitting: micro-batch j belongs to group A or B (crossfit_split); the numerator
//     (momentum) is fed A's mean gradient, the preconditioner B's micro-batches;
//   - variance-corrected inversion: the spread of the per-micro-batch hypothetical
//     preconditioners gives the delta-method bias of the inverse (root), which is subtracted:
//       E[f(x_hat)] ~ f(x) + f''(x) Var(x_hat) / 2,  f(x) = x^-e  =>
//       f_corrected = x^-e - e (e + 1) / 2 x^(-e-2) Var(x_hat)        (cf_delta_inverse_power)
// The statistics are running sums over the micro-batches, never stored copies:
//   S  = sum over A of g_j           (the A sum; also the scratch that holds one g_j)
//   Q2 = sum over V of g_j^2         (V = B with cross-fitting, else every micro-batch)
//   Q4 = sum over V of g_j^4         (variance_moments "empirical" only)
// all unclipped: the clip factor c is known only after the last micro-batch, and linear
// sums scale by c, squares by c^2, fourth powers by c^4, so clipping stays exact.
//
// The first part (enums, views, per-element math) compiles for CUDA too (HOST_DEVICE, C++);
// the engine that owns the CPU buffers follows under #ifndef OPTIM_RULES_ONLY.
#pragma once
#include <math.h>
#include <stddef.h>

#include "../runtime/portable.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CORRECTION_NONE, CORRECTION_CROSSFIT, CORRECTION_VARIANCE, CORRECTION_FULL };
enum { CF_SPLIT_ALTERNATING, CF_SPLIT_HALVES, CF_SPLIT_RANKS, CF_SPLIT_LOO };
enum { CF_MOMENTS_GAUSSIAN, CF_MOMENTS_EMPIRICAL };

// The correction keys every corrected optimizer carries (CF_KEYS below).
typedef struct {
    int correction;     // CORRECTION_*
    int split;          // CF_SPLIT_*: how micro-batches are assigned to A and B
    int moments;        // CF_MOMENTS_*: how Var(g_j^2) is estimated (AdamW, Sophia)
    int skip_nonfinite; // zero a non-finite update element (Shampoo: a block's update)
    float update_clip;  // > 0: clip the update direction (see each optimizer); 0: off
} CorrectionConfig;

static inline HOST_DEVICE int cf_crossfits(int correction) {
    return correction == CORRECTION_CROSSFIT || correction == CORRECTION_FULL;
}
static inline HOST_DEVICE int cf_corrects_variance(int correction) {
    return correction == CORRECTION_VARIANCE || correction == CORRECTION_FULL;
}

// What the step of a corrected group reads, its pointers already offset to the elements
// (element-wise run or tensor) being stepped. Sums are over micro-batches of every rank and
// unclipped; `clip` is c.
typedef struct MicroStatsView {
    const float *a_sum;        // sum over A of g_j (NULL without cross-fitting)
    const float *sq_sum;       // sum over V of g_j^2 (NULL when no group needs it)
    const float *quartic_sum;  // sum over V of g_j^4 (NULL unless variance_moments "empirical")
    float *u1, *u3;            // leave-one-out: sums over folds r of m_hat_r / D_r and m_hat_r / D_r^3
    float clip;                // c: the clip factor applied to the mean gradient this step
    int n_a, n_v, n_total;     // micro-batches in A, in V, in all (every rank)
    int v_is_b;                // V is group B (cross-fitting); else V is every micro-batch
} MicroStatsView;

// What a group asks for (OptimizerDef.stats_need). All zero: nothing (correction "none").
typedef struct MicroStatsNeed {
    int active;            // the group is corrected
    int split;             // CF_SPLIT_* of the group
    int main_split;        // its main-pass statistics are over B (else over every micro-batch)
    int a_sum;             // main pass: S = sum over A of g_j
    int sq, quartic;       // main pass: Q2, Q4 over V
    int tensor_fold;       // main pass: per-tensor folds of each V micro-batch (stats_fold_tensor)
    int fold_reads_state;  // the per-tensor fold reads optimizer state (needs it on every rank)
    int main_variance;     // main pass: a variance across its micro-batches is estimated
    int loo;               // leave-one-out: a second pass after clipping (loo_fold_elements)
    int curvature;         // the curvature pass runs with statistics (Sophia)
    int curv_split;        // ... over B only (else every micro-batch)
    int curv_variance;     // ... estimating a variance across them
    int curv_quartic;      // ... with fourth powers
} MicroStatsNeed;

// The delta-method corrected expectation of x^-e: x^-e - e (e + 1) / 2 x^(-e-2) var, the
// leading bias of E[x_hat^-e] for an estimate x_hat of x with variance var removed. e = 1/4
// gives Shampoo's lambda^(-1/4) - (5/32) lambda^(-9/4) Var, e = 1 the inverse below.
static inline HOST_DEVICE double cf_delta_inverse_power(double x, double e, double var) {
    return pow(x, -e) - 0.5 * e * (e + 1.0) * pow(x, -e - 2.0) * var;
}

// max(0, 1/D - var/D^3): the corrected inverse of a denominator D whose estimate has
// variance var (e = 1 above), floored at zero so it never flips the update's sign.
static inline HOST_DEVICE float cf_corrected_inverse(float D, float var) {
    const float inv = 1.0f / D;
    const float r = inv - var * inv * inv * inv;
    return r > 0.0f ? r : 0.0f;
}

// Unbiased sample variance over n micro-batches of x_j = g_j^2 from the means of g_j^2
// and g_j^4 (variance_moments "empirical"); n_over_n1 = n / (n - 1). Floored at zero.
static inline HOST_DEVICE float cf_var_sq_empirical(float mean_sq, float mean_quartic, float n_over_n1) {
    const float v = n_over_n1 * (mean_quartic - mean_sq * mean_sq);
    return v > 0.0f ? v : 0.0f;
}

// The same under a Gaussian model of g_j (variance_moments "gaussian"): with mean mu and
// variance s2, Var(g^2) = 2 s2^2 + 4 mu^2 s2; mu is the mean of g_j, s2 their unbiased
// sample variance. Needs only sums of g_j and g_j^2.
static inline HOST_DEVICE float cf_var_sq_gaussian(float mean_g, float mean_sq, float n_over_n1) {
    float s2 = n_over_n1 * (mean_sq - mean_g * mean_g);
    s2 = s2 > 0.0f ? s2 : 0.0f;
    return 2.0f * s2 * s2 + 4.0f * mean_g * mean_g * s2;
}

// 1 when x is finite (without isfinite, which C and CUDA C++ spell differently).
static inline HOST_DEVICE int cf_finite(float x) { return x - x == 0.0f; }

#ifdef __cplusplus
}
#endif

#ifndef OPTIM_RULES_ONLY
#include <stdio.h>

#include "optimizer.h"

#ifdef __cplusplus
extern "C" {
#endif

// Config keys shared by adamw, sophia and shampoo (their hyperparameter struct has a
// CorrectionConfig member `corr`).
#define CF_KEYS(Hyper)                                                                                                \
    {"correction", KEY_CHOICE, offsetof(Hyper, corr.correction), "\"none\"", NULL, "none|crossfit|variance|full",     \
     "bias correction (docs/crossfit.md): crossfit = numerator from micro-batch group A, preconditioner from B; "      \
     "variance = delta-method corrected inverse; full = both"},                                                        \
    {"crossfit_split", KEY_CHOICE, offsetof(Hyper, corr.split), "\"alternating\"", NULL,                              \
     "alternating|halves|ranks|leave_one_out",                                                                        \
     "micro-batch j is in A when j is even (alternating), in the first half (halves), on an even rank (ranks); "      \
     "leave_one_out (adamw): each micro-batch against all the others"},                                               \
    {"skip_nonfinite", KEY_BOOL, offsetof(Hyper, corr.skip_nonfinite), "true", NULL, NULL,                            \
     "with a correction: a non-finite update (element; shampoo: block) is skipped"},                                  \
    {"update_clip", KEY_FLOAT, offsetof(Hyper, corr.update_clip), "0", "[0,inf)", NULL,                               \
     "with a correction: clip the update direction (element-wise; shampoo: Frobenius norm per block); 0 = off"}

#define CF_MOMENTS_KEY(Hyper)                                                                                         \
    {"variance_moments", KEY_CHOICE, offsetof(Hyper, corr.moments), "\"gaussian\"", NULL, "gaussian|empirical",       \
     "Var(g_j^2) from sums of g_j, g_j^2 under a Gaussian model (no extra buffer) or from g_j^4 (one more buffer)"}

// Cross-key checks of the shared keys: a safeguard without a correction, leave-one-out
// where it is not implemented or without cross-fitting. `path` names the group.
void cf_check(const CorrectionConfig *cc, const JsonConfig *c, const char *path, int allow_loo, const char *optimizer);

// --- The engine: plans the statistics a model's groups need and owns their CPU buffers ---

// Passes over a step's micro-batches, and the roles of micro-batches within a pass.
enum { MS_PASS_MAIN, MS_PASS_LOO, MS_PASS_CURVATURE };
enum {
    MS_ROLE_PLAIN,  // backward adds grad_scale * g_j into the main buffer, as without statistics
    MS_ROLE_A,      // backward adds g_j into S (the A sum)
    MS_ROLE_B,      // backward into the zeroed S; then folded: main += grad_scale * g_j, Q2, Q4, tensor folds
    MS_ROLE_LOO,    // backward into the zeroed S; then the leave-one-out fold
};

// What the training loop needs to know; the rest is the backend's business.
typedef struct MicroStatsPlan {
    int active;                          // some group is corrected
    int main, loo, curvature;            // which passes run through the statistics
    int split;                           // CF_SPLIT_* (the groups agree), -1 when none splits
    int main_split, curv_split;          // the pass assigns A and B
    int main_a_sum, main_isolate, main_sq, main_quartic, main_tensor_fold;
    int curv_isolate, curv_plain, curv_sq, curv_quartic;
    int rank, world, accum;
    int n_total, n_a, n_b;               // micro-batches per step, every rank
    size_t num_params;
    int grad_buffers;                    // gradient-sized buffers the statistics hold
    size_t tensor_stats_floats;          // per-tensor statistics (Shampoo's Gram sums, ...)
    char buffers[160];                   // what the buffers are, for the start-up line
} MicroStatsPlan;

typedef struct MicroStats {
    MicroStatsPlan plan;
    MicroStatsNeed *need;        // per group
    float *scratch, *sq, *quartic, *u1, *u3, *tensor_stats;
    size_t *tensor_offset;       // per tensor, into tensor_stats (SIZE_MAX: none)
    float clip;                  // product of the clip factors of this step's main gradient
    int a_started;               // S holds A's sum of this pass
    StepInfo info;               // the step being accumulated
} MicroStats;

// 1 when some group of `opt` asks for statistics (correction other than "none").
int microstats_required(const Optimizer *opt);
// Plans and allocates for this rank. Errors (settings that contradict each other, too few
// micro-batches for a split or a variance) are fatal and name the group.
void microstats_init(MicroStats *ms, const Optimizer *opt, int rank, int world, int accum);
void microstats_free(MicroStats *ms);
// The start-up line: passes, groups A and B, the buffers and their bytes.
void microstats_print(const MicroStatsPlan *p, FILE *out);

// The order (indices into the step's micro-batches) and roles of `pass` on this rank;
// returns how many micro-batches the pass runs (the curvature pass may skip A's).
// Within a pass B's micro-batches (which use S as scratch) come before A's (which sum into S).
int microstats_schedule(const MicroStatsPlan *p, int pass, int *order, int *role);

// Backend side (CPU). begin: a pass of step info->step starts. target: where the backward
// of a micro-batch with `role` must add its gradient, with which scale (zeroes S where the
// role needs it alone). fold: after that backward. end: the main buffer holds the usual
// mean gradient again and the statistics are summed over ranks.
void microstats_begin(MicroStats *ms, int pass, const StepInfo *info);
float *microstats_target(MicroStats *ms, int role, float *grads, float grad_scale, float *scale);
void microstats_fold(MicroStats *ms, Optimizer *opt, float *grads, int pass, int role, float grad_scale);
void microstats_end(MicroStats *ms, Optimizer *opt, float *grads, int pass, float grad_scale);
// The main gradient was scaled by s (clipping): the statistics follow.
void microstats_scale(MicroStats *ms, float s);

// The view a group sees for elements [start, start + n) in `pass` (tests use it too).
MicroStatsView microstats_view(const MicroStats *ms, int pass, size_t start);

#ifdef __cplusplus
}
#endif
#endif  // OPTIM_RULES_ONLY
