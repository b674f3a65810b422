// What the training loop needs from a device: the CPU trainer (train_gpt.c) and the CUDA
// trainer (train_gpt.cu) each implement this, and runtime/trainer.c drives either one,
// so configs, logs, checkpoints and the CLI are the same on both.
#pragma once
#include "../model/model.h"
#include "../optim/optimizer.h"
#include "rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double update_rms, grad_rms;  // per group, when diagnostics are on
} GroupDiagnostics;

typedef struct Backend Backend;
struct MicroStatsPlan;  // optim/microstats.h
struct Backend {
    const char *name;            // "cpu" or "cuda"
    const ModelLayout *layout;
    Optimizer *opt;              // groups and state layout; the state itself lives in the backend
    void *self;

    // Forward and backward of one micro-batch of B x T tokens: adds
    // grad_scale * d(mean loss)/d(params) to the gradients and returns the mean loss.
    // targets == NULL samples the labels from the model's softmax with rng.
    float (*train_micro)(Backend *b, const int *inputs, const int *targets, int B, int T, float grad_scale, Rng *rng);
    // Mean loss of one micro-batch, no gradients.
    float (*eval_micro)(Backend *b, const int *inputs, const int *targets, int B, int T);
    // Logits (vocab_size floats, host) for the token after tokens[0..t).
    void (*next_logits)(Backend *b, const int *tokens, int t, float *logits);

    void (*zero_grad)(Backend *b);
    // Averages the accumulated gradients over data-parallel ranks (all-reduce, or the
    // ZeRO-1 reduce-scatter); nothing in a world of one.
    void (*sync_grads)(Backend *b);
    // Squared global norm of the averaged gradients (the same on every rank).
    double (*grad_sq_norm)(Backend *b);
    void (*scale_grads)(Backend *b, float s);
    // One optimizer step of every group, including the exchange of parameters between
    // ranks; fills diag[n_groups] when diag != NULL.
    void (*optimizer_step)(Backend *b, const StepInfo *base, GroupDiagnostics *diag);
    // The curvature hook: the current gradients are the sampled-label gradients.
    void (*curvature_step)(Backend *b, const StepInfo *base);

    // Host copies for checkpoints, in the one-rank layout (collective: every rank calls).
    void (*get_params)(Backend *b, float *dst);
    void (*set_params)(Backend *b, const float *src);
    void (*get_state)(Backend *b, float *dst);
    void (*set_state)(Backend *b, const float *src);

    // --- Optional: per-micro-batch statistics for the bias corrections (optim/microstats.h,
    // docs/crossfit.md). A backend without them leaves all of these NULL, and the trainer
    // refuses a config whose optimizer groups set a correction.
    // What the loop must do (NULL: no group asked for statistics).
    const struct MicroStatsPlan *stats_plan;
    // A pass (MS_PASS_*) over the micro-batches of step info->step begins.
    void (*stats_begin)(Backend *b, int pass, const StepInfo *info);
    // One micro-batch's forward and backward in the pass, its gradient folded into the
    // statistics by its role (MS_ROLE_*); grad_scale is what train_micro would get. Returns
    // the mean loss.
    float (*stats_micro)(Backend *b, const int *inputs, const int *targets, int B, int T, float grad_scale, int role,
                         Rng *rng);
    // The pass ends: the gradients hold what train_micro would have accumulated (before
    // sync_grads), and the statistics are summed over ranks.
    void (*stats_end)(Backend *b, int pass, float grad_scale);
};

#ifdef __cplusplus
}
#endif
