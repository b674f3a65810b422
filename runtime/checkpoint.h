// Checkpoints: everything needed to resume exactly (config, parameters, optimizer state,
// step, data position, RNG states). Layout in docs/checkpoint.md. Files are written to a
// temporary name and renamed, so a crash never leaves a half-written checkpoint.
#pragma once
#include <stdint.h>

#include "../data/loader.h"
#include "../model/model.h"
#include "../optim/optimizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t step;          // optimizer steps taken
    LoaderPos train_pos;   // where the training loader resumes
    uint64_t rng_train;    // sampled labels (Sophia)
    uint64_t rng_sample;   // text samples
} TrainState;

// Writes `path` atomically. `config_json` is the resolved run config.
void checkpoint_save(const char *path, const char *config_json, const ModelLayout *layout, const float *params,
                     const Optimizer *opt, const float *opt_state, const TrainState *ts);
// The resolved config stored in a checkpoint (caller frees).
char *checkpoint_read_config(const char *path);
// Restores into buffers laid out for `layout` and `opt`; any mismatch (model shape,
// parameter count, optimizer state layout) is a fatal error that says what differs.
void checkpoint_load(const char *path, const ModelLayout *layout, float *params, const Optimizer *opt, float *opt_state,
                     TrainState *ts);
// The newest DIR/ckpt_*.bin into `out`; returns 0 when there is none.
int checkpoint_latest(const char *dir, char *out, size_t cap);
// "DIR/ckpt_00000500.bin"
void checkpoint_path(char *out, size_t cap, const char *dir, long step);
// Deletes all but the newest `keep` checkpoints in dir (keep 0: keep all).
void checkpoint_prune(const char *dir, int keep);

#ifdef __cplusplus
}
#endif
