// Helpers shared by the trainer-level tests.
#pragma once
#include <stdint.h>

#include "../runtime/config.h"
#include "../optim/optimizer.h"
#include "../runtime/run_config.h"

// A JsonConfig from JSON text (origin "test"); fatal on invalid JSON.
JsonConfig *config_from_text(const char *json);
// A RunConfig from JSON text.
void run_config_from_text(RunConfig *rc, const char *json);
void write_text(const char *path, const char *text);
// Writes DIR/train_000000.bin and DIR/val_000000.bin of random tokens below vocab.
void write_random_shards(const char *dir, int vocab, int train_tokens, int val_tokens, uint64_t seed);

// A tiny model on synthetic data (vocab 13, 2 layers, batch 3 x 8, grad_accum 2) with the
// given optimizer section (JSON), checkpointing every ckpt_every steps.
void tiny_config(RunConfig *rc, const char *arch, int steps, int ckpt_every, const char *optimizer_json);
// Runs training into `out`, resuming from the checkpoint `resume` when not NULL.
void run_training(RunConfig *rc, const char *out, const char *resume);
// Train losses from out/log.jsonl indexed by step (NAN where absent), steps 0..max_step.
void read_losses(const char *dir, double *loss, int max_step);
// 2N steps unbroken vs N steps, checkpoint, resume, N steps: the losses after the resume
// must be identical. `tag` names the run directories.
void check_resume_identical(const char *arch, const char *optimizer_json, const char *tag);
// The same with train.grad_accum = grad_accum (tiny_config has 2).
void check_resume_identical_accum(const char *arch, const char *optimizer_json, int grad_accum, const char *tag);
// Builds the optimizer section `optimizer_json` (JSON text) on a tiny GPT-2 (1 layer, width
// 8, vocab 11); the caller frees opt, L and c.
void tiny_optimizer(Optimizer *opt, ModelLayout *L, JsonConfig **c, const char *optimizer_json);
// The same, freed again: the target of EXPECT_FATAL checks of optimizer config errors.
void build_tiny_optimizer(void *optimizer_json);
