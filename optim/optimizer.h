// The optimizer interface, the registry and parameter groups.
//
// An optimizer is one header in optim/ that defines an OptimizerDef: its config keys
// (defaults, ranges, docs), its state layout and its step. Two families exist:
//   - element-wise (AdamW, Lion, ...): `slots` floats of state per parameter, stored
//     slot-major per tensor (m[0..n), v[0..n), ...), and a step over a run of elements.
//     The per-element arithmetic is a static inline HOST_DEVICE function that the CUDA
//     kernels call unchanged. Runs of elements can be any slice, which is what ZeRO uses.
//   - per-tensor (Muon, Shampoo, SOAP, Adafactor): a state block per tensor and a step
//     on the whole 2-D tensor.
// Adding an optimizer is one header plus one line in optim/registry.c.
//
// Groups: optimizer.groups routes tensors by role or name to an optimizer with its own
// hyperparameters, lr and weight decay. Every tensor lands in exactly one group.
#pragma once
#include <stddef.h>
#include <stdio.h>

#include "../model/model.h"
#include "../runtime/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    long step;               // 1-based index of the step being taken
    long total_steps;        // train.steps, for schedules that depend on the horizon
    float lr;                // this group's learning rate at this step
    float lr_scale;          // the lr schedule's multiplier at this step (lr / peak lr)
    double tokens_per_step;  // tokens in one optimizer step, all ranks and micro-batches
} StepInfo;

struct MicroStatsNeed;
struct MicroStatsView;

typedef struct OptimizerDef {
    const char *name;
    const char *summary;    // one line, with the reference it follows
    const ConfigKey *keys;  // every optimizer has a "weight_decay" key
    size_t hyper_size;      // sizeof its hyperparameter struct (filled from keys)
    // Cross-key validation after reading; NULL if none.
    void (*check)(void *hyper, const JsonConfig *c, const char *path);
    // NULL if the optimizer can take this tensor, else why not (e.g. Muon on an embedding).
    const char *(*refuses)(const void *hyper, const ParamTensor *t);

    // Element-wise family.
    int (*slots)(const void *hyper);
    void (*step_elements)(const void *hyper, const StepInfo *s, float *param, const float *grad,
                          float *const *state, size_t n);

    // Per-tensor family.
    size_t (*tensor_state)(const void *hyper, const ParamTensor *t);
    void (*init_tensor_state)(const void *hyper, const ParamTensor *t, float *state);  // NULL: zeros
    void (*step_tensor)(const void *hyper, const StepInfo *s, const ParamTensor *t, float *param,
                        const float *grad, float *state);

    // Curvature hook (Sophia): on steps where curvature_due() is true, the trainer runs
    // an extra backward with labels sampled from the model and passes that gradient here.
    int (*curvature_due)(const void *hyper, long step);
    void (*curvature_elements)(const void *hyper, const StepInfo *s, const float *curvature_grad,
                               float *const *state, size_t n);

    // True when the step needs the whole tensor at once (e.g. a cautious mask's agreement
    // fraction), which rules out ZeRO's element-range shards. NULL: never.
    int (*needs_whole_tensor)(const void *hyper);
    // Relative cost of a per-tensor step, for spreading tensors over ranks. NULL:
    // rows * cols * min(rows, cols), the order of a Newton-Schulz iteration.
    double (*cost)(const void *hyper, const ParamTensor *t);

    // Scheduled values worth logging (e.g. AdamW's eps when it follows a schedule): fills
    // up to `max` names and values and returns how many. NULL: none.
    int (*log_scalars)(const void *hyper, const StepInfo *s, const char **names, double *values, int max);

    // Bias corrections from per-micro-batch statistics (optim/microstats.h, docs/crossfit.md);
    // all NULL for optimizers without them. stats_need fills what the group needs; a group
    // whose need is inactive (correction "none") runs the plain steps above, bit for bit.
    void (*stats_need)(const void *hyper, struct MicroStatsNeed *need);
    // Element-wise: the step, the curvature update and the leave-one-out fold of micro-batch
    // gradient g_r, with the statistics of the same elements in `v`.
    void (*step_elements_stats)(const void *hyper, const StepInfo *s, const struct MicroStatsView *v, float *param,
                                const float *grad, float *const *state, size_t n);
    void (*curvature_elements_stats)(const void *hyper, const StepInfo *s, const struct MicroStatsView *v,
                                     const float *curvature_grad, float *const *state, size_t n);
    void (*loo_fold_elements)(const void *hyper, const StepInfo *s, const struct MicroStatsView *v, const float *g_r,
                              float *const *state, size_t n);
    // Per-tensor: floats of per-tensor statistics, the fold of one micro-batch's gradient of
    // the tensor into them (state: the tensor's optimizer state), and the step.
    size_t (*stats_tensor_floats)(const void *hyper, const ParamTensor *t);
    void (*stats_fold_tensor)(const void *hyper, const StepInfo *s, const ParamTensor *t, const float *g_j,
                              const float *state, float *stats);
    void (*step_tensor_stats)(const void *hyper, const StepInfo *s, const struct MicroStatsView *v, const ParamTensor *t,
                              float *param, const float *grad, float *state, const float *stats);
} OptimizerDef;

const OptimizerDef *optimizer_find(const char *name);
// NULL-terminated list of all registered optimizers.
const OptimizerDef *const *optimizer_registry(void);

typedef struct {
    char label[64];            // "0:adamw" etc., for logs
    const OptimizerDef *def;
    void *hyper;               // def->hyper_size bytes
    cJSON *json;               // the group's merged settings; KEY_JSON hyperparameters point into it
    float lr_peak;             // absolute peak learning rate of this group
    int n_tensors;
    int *tensors;              // indices into the model's tensor list
    size_t numel, state_floats;
} OptimGroup;

// How the optimizer is spread over data-parallel ranks (runtime/dist.h):
//   - element-wise tensors are stepped by every rank (same gradients, same result), or,
//     with ZeRO-1, each rank steps a contiguous range of the flat parameter array and
//     holds only that range's state; the ranges are then all-gathered;
//   - per-tensor optimizers (Muon, Shampoo, SOAP, ...) step whole tensors, each on one
//     rank chosen by cost, and the ranks exchange the updated tensors, so no rank repeats
//     another's Newton-Schulz or eigendecomposition.
typedef struct {
    int rank, world;
    int zero;               // ZeRO-1 on
    size_t *counts;         // ZeRO: parameters per rank (contiguous ranges in rank order)
    size_t lo, hi;          // ZeRO: this rank's range of the flat parameter array
    size_t *local_offset;   // ZeRO: per tensor, its shard's state in the local state
    int *owner;             // per tensor: the rank stepping it; -1: every rank
    size_t local_floats;    // state floats this rank holds
} OptimDist;

typedef struct {
    OptimGroup *groups;
    int n_groups;
    const ParamTensor *tensors;  // the model's tensors (not owned)
    int n_tensors;
    int *group_of;               // per tensor
    size_t *state_offset;        // per tensor, into the state array
    size_t state_floats;         // total state size
    float *state;                // this rank's state (host, CPU trainer): dist.local_floats floats
    int elementwise_only;        // every group is element-wise (ZeRO-1 can shard it)
    OptimDist dist;              // a world of one until optim_distribute
} Optimizer;

// Builds the groups from the "optimizer" section. `base_lr` is schedule.lr. Errors name
// the key and file: unknown optimizer, unknown key, a tensor in no group or in two.
void optim_build(Optimizer *opt, const JsonConfig *c, const ParamTensor *tensors, int n_tensors, float base_lr);
void optim_free(Optimizer *opt);
// Allocates and initialises this rank's state (opt->state) on the host.
void optim_alloc_state(Optimizer *opt);

// --- data parallelism (optim/distributed.c) ---
// Spreads the optimizer over the ranks: ZeRO-1 shards with zero = 1, and per-tensor
// owners when `spread` (else every rank steps every tensor). Errors (e.g. ZeRO with a
// per-tensor optimizer) name train.zero and the group.
void optim_distribute(Optimizer *opt, const JsonConfig *c, int zero, int spread, int rank, int world, size_t num_params);
// Averages gradients over ranks: all-reduce, or reduce-scatter of the ZeRO ranges.
void optim_sync_grads(const Optimizer *opt, float *grads, size_t num_params);
// The range of the gradients that is averaged on this rank after optim_sync_grads.
void optim_grad_range(const Optimizer *opt, size_t num_params, size_t *lo, size_t *hi);
// After a step: every rank gets the parameters other ranks updated.
void optim_exchange_params(const Optimizer *opt, float *params);
// Checkpoints hold the state in the one-rank layout: gather it (every rank gets all of
// `global`, opt->state_floats floats), and take this rank's part back.
void optim_state_to_global(const Optimizer *opt, const float *local, float *global);
void optim_state_from_global(const Optimizer *opt, const float *global, float *local);
// Prints groups, parameter counts and state bytes.
void optim_print(const Optimizer *opt, FILE *out);

struct MicroStats;  // optim/microstats.h

// One step of every group on the CPU. `base` gives the step, the horizon, the schedule
// multiplier and the tokens per step; each group's lr is its peak lr times lr_scale.
// With micro-batch statistics (`ms`, NULL for none) groups with a bias correction take
// their corrected step.
void optim_step_cpu(Optimizer *opt, const struct MicroStats *ms, float *params, const float *grads, const StepInfo *base);
int optim_needs_curvature(const Optimizer *opt, long step);
void optim_curvature_cpu(Optimizer *opt, const struct MicroStats *ms, const float *curvature_grads, const StepInfo *base);
// The StepInfo a group sees: `base` with the group's own learning rate.
StepInfo optim_group_step_info(const OptimGroup *g, const StepInfo *base);

// The part of element-wise tensor i that this rank steps: parameters [*start, *start +
// *len) of the flat array, with its state slots inside `state` (this rank's state).
// Returns 0 when this rank steps none of it (ZeRO).
int optim_elementwise_part(const Optimizer *opt, int i, float *state, float **slots, size_t *start, size_t *len);

// Slot pointers of an element-wise tensor's state (slot-major layout).
static inline void optim_slot_pointers(float *state, size_t numel, int slots, float **out) {
    for (int s = 0; s < slots; s++) out[s] = state + (size_t)s * numel;
}

#define OPTIM_MAX_SLOTS 8

#ifdef __cplusplus
}
#endif
