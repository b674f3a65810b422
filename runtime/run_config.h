// The sections of a run config besides "model" and "optimizer" (which their own modules
// read), as typed structs with their key tables.
#pragma once
#include "../model/model.h"
#include "../optim/schedules.h"
#include "config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *train;  // comma-separated shard globs
    char *val;    // "" for none
    char *vocab;  // vocab.json for decoding samples; "": next to the first train shard
    int shuffle;
} DataConfig;

typedef struct {
    int batch_size;  // sequences per micro-batch per rank
    int seq_len;     // 0: model.block_size
    int grad_accum;  // micro-batches per optimizer step
    int steps;
    float grad_clip; // max global grad norm; 0: off
    int seed;        // data shuffle, sampled labels, text sampling
    int zero;        // ZeRO stage (0 or 1)
    int spread_matrix_optimizers;  // per-tensor optimizers step each tensor on one rank
} TrainConfig;

typedef struct {
    int every;    // steps between evaluations; 0: off
    int batches;  // micro-batches per evaluation
} EvalConfig;

typedef struct {
    int every;  // steps between checkpoints; 0: off
    int keep;   // newest checkpoints kept; 0: all
} CheckpointConfig;

typedef struct {
    int every;        // steps between progress lines and log.jsonl records
    int diagnostics;  // per-group update and gradient RMS in log.jsonl
} LogConfig;

typedef struct {
    int every;   // steps between text samples; 0: off
    int tokens;
    float temperature;
    char *prompt;
} SampleConfig;

typedef struct {
    JsonConfig *json;
    ModelConfig model;
    DataConfig data;
    TrainConfig train;
    ScheduleConfig schedule;
    EvalConfig eval;
    CheckpointConfig checkpoint;
    LogConfig log;
    SampleConfig sample;
} RunConfig;

extern const ConfigKey data_keys[], train_keys[], eval_keys[], checkpoint_keys[], log_keys[], sample_keys[];

// Reads and validates every section except "optimizer" (which needs the model's tensors).
// Takes ownership of `json`.
void run_config_read(RunConfig *rc, JsonConfig *json);
void run_config_free(RunConfig *rc);
// Prints every key of every section, with the registered optimizers' keys.
void run_config_print_keys(void);

#ifdef __cplusplus
}
#endif
