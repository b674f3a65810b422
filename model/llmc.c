#include "llmc.h"

#include <stdio.h>
#include <string.h>

#include "../runtime/common.h"
#include "../runtime/fileio.h"

static void read_header(const char *path, int header[256]) {
    FILE *f = xfopen(path, "rb");
    xfread(header, 256 * sizeof(int), f, path);
    fclose(f);
    if (header[0] != LLMC_MAGIC) fatal("%s: bad magic %d: not an llm.c GPT-2 checkpoint (expected %d)", path, header[0], LLMC_MAGIC);
    if (header[1] != LLMC_VERSION_FP32)
        fatal("%s: llm.c checkpoint version %d is not supported (only %d, fp32 with padded vocabulary)", path, header[1], LLMC_VERSION_FP32);
}

static void agree(const JsonConfig *c, const char *key, int *field, int file_value, const char *path) {
    if (*field != 0 && *field != file_value)
        config_key_error(c, key, "is %d but %s has %d", *field, path, file_value);
    *field = file_value;
}

void llmc_fill_config(ModelConfig *cfg, const JsonConfig *c) {
    const char *path = cfg->init_from;
    int h[256];
    read_header(path, h);
    if (cfg->arch != ARCH_GPT2) config_key_error(c, "model.arch", "init_from an llm.c checkpoint needs arch \"gpt2\"");
    if (!cfg->tie_embeddings) config_key_error(c, "model.tie_embeddings", "llm.c checkpoints have tied embeddings");
    if (cfg->mlp_hidden || cfg->mlp_ratio) config_key_error(c, "model.mlp_hidden", "llm.c checkpoints use a 4x MLP");
    agree(c, "model.block_size", &cfg->block_size, h[2], path);
    agree(c, "model.vocab_size", &cfg->vocab_size, h[3], path);
    agree(c, "model.n_layer", &cfg->n_layer, h[4], path);
    agree(c, "model.n_head", &cfg->n_head, h[5], path);
    agree(c, "model.n_embd", &cfg->n_embd, h[6], path);
    if (cfg->n_kv_head && cfg->n_kv_head != cfg->n_head)
        config_key_error(c, "model.n_kv_head", "llm.c checkpoints have n_kv_head = n_head");
}

static size_t llmc_params(const ModelLayout *l) {
    size_t n = 0;
    for (int a = 0; a < P_HEAD; a++) n += l->array_size[a];
    return n;
}

void llmc_load_params(const char *path, const ModelLayout *layout, float *params) {
    int h[256];
    read_header(path, h);
    const ModelConfig *cfg = &layout->cfg;
    if (h[7] != cfg->padded_vocab_size)
        fatal("%s: padded vocabulary %d differs from this build's %d (vocab %d rounded up to 64)", path, h[7],
              cfg->padded_vocab_size, cfg->vocab_size);
    FILE *f = xfopen(path, "rb");
    fseek(f, 256 * sizeof(int), SEEK_SET);
    const size_t n = llmc_params(layout);
    xfread(params, n * sizeof(float), f, path);
    if (fgetc(f) != EOF) fatal("%s: trailing bytes after %zu parameters: sizes do not match the header", path, n);
    fclose(f);
}

void llmc_save(const char *path, const ModelLayout *layout, const float *params) {
    const ModelConfig *cfg = &layout->cfg;
    if (cfg->arch != ARCH_GPT2 || !cfg->tie_embeddings || cfg->n_kv_head != cfg->n_head || cfg->hidden != 4 * cfg->n_embd)
        fatal("%s: only GPT-2 models with tied embeddings, n_kv_head = n_head and a 4x MLP fit llm.c's layout", path);
    int h[256] = {0};
    h[0] = LLMC_MAGIC;
    h[1] = LLMC_VERSION_FP32;
    h[2] = cfg->block_size;
    h[3] = cfg->vocab_size;
    h[4] = cfg->n_layer;
    h[5] = cfg->n_head;
    h[6] = cfg->n_embd;
    h[7] = cfg->padded_vocab_size;
    AtomicFile af = atomic_open(path);
    xfwrite(h, sizeof h, af.f, af.tmp_path);
    xfwrite(params, llmc_params(layout) * sizeof(float), af.f, af.tmp_path);
    atomic_commit(&af);
}
