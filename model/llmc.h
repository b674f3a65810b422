// llm.c's GPT-2 checkpoint layout (as written by llm.c's train_gpt2.py, e.g. gpt2_124M.bin):
// a header of 256 int32 — [0]=20240326 magic, [1]=3 version (fp32, padded vocabulary),
// [2]=max T, [3]=vocab size, [4]=layers, [5]=heads, [6]=channels, [7]=padded vocab —
// then the 16 GPT-2 parameter arrays in ParamArray order, fp32. Our GPT-2 layout is the
// same, so import and export copy the flat parameter array as it is.
#pragma once
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LLMC_MAGIC 20240326
#define LLMC_VERSION_FP32 3

// Takes the model sizes from the file named by cfg->init_from; sizes already set in the
// config must agree with the file, else a fatal error naming the key.
void llmc_fill_config(ModelConfig *cfg, const JsonConfig *c);
void llmc_load_params(const char *path, const ModelLayout *layout, float *params);
// Writes the llm.c layout (temp file, then rename). Only GPT-2 models with tied
// embeddings, full attention heads and a 4x MLP fit that layout; others are refused.
void llmc_save(const char *path, const ModelLayout *layout, const float *params);

#ifdef __cplusplus
}
#endif
