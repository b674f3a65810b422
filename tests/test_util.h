// Helpers shared by the trainer-level tests.
#pragma once
#include <stdint.h>

#include "../runtime/config.h"
#include "../runtime/run_config.h"

// A JsonConfig from JSON text (origin "test"); fatal on invalid JSON.
JsonConfig *config_from_text(const char *json);
// A RunConfig from JSON text.
void run_config_from_text(RunConfig *rc, const char *json);
void write_text(const char *path, const char *text);
// Writes DIR/train_000000.bin and DIR/val_000000.bin of random tokens below vocab.
void write_random_shards(const char *dir, int vocab, int train_tokens, int val_tokens, uint64_t seed);
