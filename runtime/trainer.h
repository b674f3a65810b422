// The training loop shared by the CPU and CUDA trainers: data, gradient accumulation,
// clipping, the lr schedule, evaluation, text samples, logs, checkpoints and resume.
#pragma once
#include "backend.h"
#include "run_config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *out_dir;      // the run directory
    const char *resume_from;  // checkpoint to resume from, or NULL for a fresh start
    int quiet;                // no progress lines (tests)
} TrainOptions;

typedef struct {
    long steps;
    double final_train_loss;
    double final_val_loss, best_val_loss;  // NAN without evaluation
    double tokens_per_s;                   // mean over the steps run in this invocation
    double wall_s;
} TrainSummary;

// Runs (or resumes) training to rc->train.steps; writes out_dir/summary.json at the end.
void train_run(const RunConfig *rc, Backend *b, const TrainOptions *opts, TrainSummary *summary);

#ifdef __cplusplus
}
#endif
