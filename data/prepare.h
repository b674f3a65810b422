// The work of prepare_data (data/prepare_data.c is only its main), kept here so tests
// can call it: concatenate text files, tokenize, split into train (the first 1-F of the
// tokens) and val (the rest, as nanoGPT does), and write DIR/train_%06d.bin...,
// DIR/val_%06d.bin... and DIR/vocab.json.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char **inputs;    // text files, concatenated in this order
    int num_inputs;
    const char *tokenizer;  // "char" or "byte"
    const char *out_dir;
    double val_fraction;    // in [0, 1); default 0.1
    int64_t shard_tokens;   // tokens per shard at most; default 100,000,000
    int quiet;              // no summary on stdout
} PrepareOptions;

typedef struct {
    int64_t input_bytes, train_tokens, val_tokens;
    int train_shards, val_shards, vocab_size;
} PrepareResult;

void prepare_defaults(PrepareOptions *o);
// Does the work; every problem is a fatal error. result may be NULL.
void prepare_run(const PrepareOptions *o, PrepareResult *result);
// Parses the command line into o (inputs point into argv; free o->inputs). Returns 0 when
// ready to run, 1 when --help was printed, 2 on bad usage (usage printed to stderr).
int prepare_parse_args(int argc, char **argv, PrepareOptions *o);
// The whole program: parse, run, exit status.
int prepare_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
