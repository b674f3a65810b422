#include "run_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../optim/optimizer.h"
#include "common.h"

#define K(S, name, type, def, range, choices, doc) {#name, type, offsetof(S, name), def, range, choices, doc}

const ConfigKey data_keys[] = {
    K(DataConfig, train, KEY_STRING, NULL, NULL, NULL, "training shards: glob pattern(s), comma-separated"),
    K(DataConfig, val, KEY_STRING, "\"\"", NULL, NULL, "validation shards; \"\" for none"),
    K(DataConfig, vocab, KEY_STRING, "\"\"", NULL, NULL, "vocab.json for decoding samples; \"\": beside the first train shard"),
    K(DataConfig, shuffle, KEY_BOOL, "false", NULL, NULL, "permute shards and rows each epoch (seeded by train.seed)"),
    KEY_END,
};

const ConfigKey train_keys[] = {
    K(TrainConfig, batch_size, KEY_INT, NULL, "[1,inf)", NULL, "sequences per micro-batch per rank"),
    K(TrainConfig, seq_len, KEY_INT, "0", "[0,inf)", NULL, "tokens per sequence; 0: model.block_size"),
    K(TrainConfig, grad_accum, KEY_INT, "1", "[1,inf)", NULL, "micro-batches per optimizer step"),
    K(TrainConfig, steps, KEY_INT, NULL, "[1,inf)", NULL, "optimizer steps"),
    K(TrainConfig, grad_clip, KEY_FLOAT, "1.0", "[0,inf)", NULL, "clip the global gradient norm to this; 0: off"),
    K(TrainConfig, seed, KEY_INT, "1337", "[0,inf)", NULL, "seed of the run: weight init (unless model.seed), data order, sampled labels, text samples"),
    K(TrainConfig, zero, KEY_INT, "0", "[0,1]", NULL, "ZeRO stage: 1 shards element-wise optimizer state over ranks"),
    K(TrainConfig, spread_matrix_optimizers, KEY_BOOL, "true", NULL, NULL,
      "data parallel: step each Muon/Shampoo/SOAP tensor on one rank and exchange; false: every rank steps all"),
    KEY_END,
};

const ConfigKey eval_keys[] = {
    K(EvalConfig, every, KEY_INT, "0", "[0,inf)", NULL, "steps between validation losses (also at step 0 and the end); 0: off"),
    K(EvalConfig, batches, KEY_INT, "20", "[1,inf)", NULL, "global batches (one optimizer step's tokens each) per validation loss"),
    KEY_END,
};

const ConfigKey checkpoint_keys[] = {
    K(CheckpointConfig, every, KEY_INT, "0", "[0,inf)", NULL, "steps between checkpoints (also at the end); 0: off"),
    K(CheckpointConfig, keep, KEY_INT, "2", "[0,inf)", NULL, "newest checkpoints kept; 0: all"),
    KEY_END,
};

const ConfigKey log_keys[] = {
    K(LogConfig, every, KEY_INT, "10", "[0,inf)", NULL, "steps between progress lines and log.jsonl records; 0: off"),
    K(LogConfig, diagnostics, KEY_BOOL, "false", NULL, NULL, "per-group update RMS and gradient RMS in log.jsonl"),
    KEY_END,
};

const ConfigKey sample_keys[] = {
    K(SampleConfig, every, KEY_INT, "0", "[0,inf)", NULL, "steps between generated text samples; 0: off"),
    K(SampleConfig, tokens, KEY_INT, "200", "[1,inf)", NULL, "tokens per sample"),
    K(SampleConfig, temperature, KEY_FLOAT, "1.0", "(0,inf)", NULL, "softmax temperature"),
    K(SampleConfig, prompt, KEY_STRING, "\"\\n\"", NULL, NULL, "text the sample starts from"),
    KEY_END,
};

static const char *const sections[] = {"model", "data", "train", "schedule", "optimizer",
                                       "eval", "checkpoint", "log", "sample", NULL};

void run_config_read(RunConfig *rc, JsonConfig *json) {
    memset(rc, 0, sizeof *rc);
    rc->json = json;
    const cJSON *root = json_config_root(json);
    for (const cJSON *m = root->child; m; m = m->next) {
        int known = 0;
        for (const char *const *s = sections; *s && !known; s++) known = strcmp(*s, m->string) == 0;
        if (!known) config_key_error(json, m->string, "unknown section (sections: model, data, train, schedule, optimizer, eval, checkpoint, log, sample)");
    }
    model_config_read(&rc->model, json);
    config_read_keys(json, json_config_section(json, "data"), "data", data_keys, &rc->data, NULL);
    config_read_keys(json, json_config_section(json, "train"), "train", train_keys, &rc->train, NULL);
    config_read_keys(json, json_config_section(json, "schedule"), "schedule", schedule_keys, &rc->schedule, NULL);
    config_read_keys(json, json_config_section(json, "eval"), "eval", eval_keys, &rc->eval, NULL);
    config_read_keys(json, json_config_section(json, "checkpoint"), "checkpoint", checkpoint_keys, &rc->checkpoint, NULL);
    config_read_keys(json, json_config_section(json, "log"), "log", log_keys, &rc->log, NULL);
    config_read_keys(json, json_config_section(json, "sample"), "sample", sample_keys, &rc->sample, NULL);

    if (rc->model.seed < 0) rc->model.seed = rc->train.seed;  // one seed varies a whole run
    if (rc->train.seq_len == 0) rc->train.seq_len = rc->model.block_size;
    if (rc->train.seq_len > rc->model.block_size)
        config_key_error(json, "train.seq_len", "%d exceeds model.block_size %d", rc->train.seq_len, rc->model.block_size);
    if (rc->schedule.warmup > rc->train.steps)
        config_key_error(json, "schedule.warmup", "%d warmup steps exceed train.steps %d", rc->schedule.warmup, rc->train.steps);
    if (rc->schedule.min_lr > rc->schedule.lr)
        config_key_error(json, "schedule.min_lr", "%g exceeds schedule.lr %g", rc->schedule.min_lr, rc->schedule.lr);
    if (rc->eval.every && !rc->data.val[0]) config_key_error(json, "data.val", "eval.every is set but no validation shards are given");
}

void run_config_free(RunConfig *rc) {
    json_config_free(rc->json);
    memset(rc, 0, sizeof *rc);
}

void run_config_print_keys(void) {
    printf("Config keys (section.key, type, default, range, meaning). Unknown keys are errors.\n\n");
    config_print_keys("model", model_keys);
    config_print_keys("data", data_keys);
    config_print_keys("train", train_keys);
    config_print_keys("schedule", schedule_keys);
    config_print_keys("eval", eval_keys);
    config_print_keys("checkpoint", checkpoint_keys);
    config_print_keys("log", log_keys);
    config_print_keys("sample", sample_keys);
    printf("\noptimizer.name selects the optimizer (default adamw); optimizer.groups is a list of\n"
           "{\"params\": selector(s), \"name\": optimizer, \"lr\" | \"lr_mult\", \"label\", ...its keys}.\n"
           "Selectors: all, matrices, embeddings, head, norms, biases, a role (q k v o mlp_in mlp_gate\n"
           "mlp_out embedding head norm bias), or a tensor-name pattern such as \"h.0.*\".\n");
    for (const OptimizerDef *const *d = optimizer_registry(); *d; d++) {
        printf("\noptimizer %s: %s\n", (*d)->name, (*d)->summary);
        config_print_keys("optimizer", (*d)->keys);
    }
    printf("\noptimizer.eps_schedule (adamw):\n");
    config_print_keys("optimizer.eps_schedule", eps_schedule_keys);
}
