#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "../runtime/common.h"
#include "../runtime/rng.h"
#include "llmc.h"

#define MKEY(name, type, def, range, choices, doc) {#name, type, offsetof(ModelConfig, name), def, range, choices, doc}
const ConfigKey model_keys[] = {
    MKEY(arch, KEY_CHOICE, "\"gpt2\"", NULL, "gpt2|llama", "gpt2: LayerNorm, GELU, learned positions; llama: RMSNorm, SwiGLU, RoPE, no biases"),
    MKEY(n_layer, KEY_INT, "0", "[0,inf)", NULL, "transformer blocks (required unless init_from gives it)"),
    MKEY(n_head, KEY_INT, "0", "[0,inf)", NULL, "attention heads (required unless init_from)"),
    MKEY(n_kv_head, KEY_INT, "0", "[0,inf)", NULL, "key/value heads for grouped-query attention; 0: n_head"),
    MKEY(n_embd, KEY_INT, "0", "[0,inf)", NULL, "model width (required unless init_from)"),
    MKEY(block_size, KEY_INT, "0", "[0,inf)", NULL, "maximum context length (required unless init_from)"),
    MKEY(vocab_size, KEY_INT, "0", "[0,inf)", NULL, "vocabulary size; padded to a multiple of 64 internally (required unless init_from)"),
    MKEY(mlp_hidden, KEY_INT, "0", "[0,inf)", NULL, "MLP hidden width; 0: from mlp_ratio"),
    MKEY(mlp_ratio, KEY_FLOAT, "0", "[0,inf)", NULL, "MLP width / n_embd; 0: 4 (gpt2) or 8/3 (llama); llama rounds up to a multiple of 64"),
    MKEY(norm_eps, KEY_FLOAT, "1e-5", "(0,1)", NULL, "epsilon of LayerNorm / RMSNorm"),
    MKEY(rope_theta, KEY_FLOAT, "10000", "(0,inf)", NULL, "RoPE base (llama)"),
    MKEY(tie_embeddings, KEY_BOOL, "true", NULL, NULL, "share the token embedding with the output head"),
    MKEY(init_std, KEY_FLOAT, "0.02", "(0,inf)", NULL, "std of the normal weight init; residual projections get init_std/sqrt(2 n_layer)"),
    MKEY(init_from, KEY_STRING, "\"\"", NULL, NULL, "llm.c checkpoint (gpt2_124M.bin layout) to start from"),
    MKEY(seed, KEY_INT, "-1", "[-1,inf)", NULL, "seed of the weight init; -1: train.seed"),
    KEY_END,
};

const char *const param_array_names[NUM_PARAM_ARRAYS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb", "lm_head",
};

const char *const role_names[NUM_ROLES] = {
    "embedding", "head", "q", "k", "v", "o", "mlp_in", "mlp_gate", "mlp_out", "norm", "bias",
};

int role_is_matrix(int role) { return role >= ROLE_Q && role <= ROLE_MLP_OUT; }

const char *arch_name(int arch) { return arch == ARCH_LLAMA ? "llama" : "gpt2"; }

static int round_up(int x, int m) { return (x + m - 1) / m * m; }

void model_config_read(ModelConfig *mc, const JsonConfig *c) {
    config_read_keys(c, json_config_section(c, "model"), "model", model_keys, mc, NULL);
    if (mc->init_from[0]) llmc_fill_config(mc, c);
    model_config_finalize(mc, c);
}

void model_config_finalize(ModelConfig *mc, const JsonConfig *c) {
    const char *required[] = {"n_layer", "n_head", "n_embd", "block_size", "vocab_size"};
    const int values[] = {mc->n_layer, mc->n_head, mc->n_embd, mc->block_size, mc->vocab_size};
    for (int i = 0; i < 5; i++) {
        char path[64];
        snprintf(path, sizeof path, "model.%s", required[i]);
        if (values[i] <= 0) config_key_error(c, path, "required (a positive integer)");
    }
    if (mc->n_kv_head == 0) mc->n_kv_head = mc->n_head;
    if (mc->n_embd % mc->n_head)
        config_key_error(c, "model.n_head", "n_embd (%d) must be divisible by n_head (%d)", mc->n_embd, mc->n_head);
    if (mc->n_head % mc->n_kv_head)
        config_key_error(c, "model.n_kv_head", "n_head (%d) must be divisible by n_kv_head (%d)", mc->n_head, mc->n_kv_head);
    mc->head_dim = mc->n_embd / mc->n_head;
    if (mc->arch == ARCH_LLAMA && mc->head_dim % 2)
        config_key_error(c, "model.n_head", "RoPE needs an even head size, got n_embd/n_head = %d", mc->head_dim);
    mc->padded_vocab_size = round_up(mc->vocab_size, 64);
    mc->qkv_dim = (mc->n_head + 2 * mc->n_kv_head) * mc->head_dim;
    if (mc->mlp_hidden > 0) {
        mc->hidden = mc->mlp_hidden;
    } else if (mc->arch == ARCH_LLAMA) {
        float ratio = mc->mlp_ratio > 0 ? mc->mlp_ratio : 8.0f / 3.0f;
        mc->hidden = round_up((int)ceilf(ratio * (float)mc->n_embd), 64);
    } else {
        mc->hidden = mc->mlp_ratio > 0 ? (int)lroundf(mc->mlp_ratio * (float)mc->n_embd) : 4 * mc->n_embd;
    }
    mc->fc_dim = mc->arch == ARCH_LLAMA ? 2 * mc->hidden : mc->hidden;
}

typedef struct {
    ModelLayout *layout;
    int cap;
} TensorList;

static void add_tensor(TensorList *tl, const char *name, int role, int layer, int array, size_t offset, int rows, int cols) {
    ModelLayout *l = tl->layout;
    if (l->num_tensors == tl->cap) {
        tl->cap = tl->cap ? 2 * tl->cap : 64;
        l->tensors = (ParamTensor *)xrealloc(l->tensors, (size_t)tl->cap * sizeof(ParamTensor));
    }
    ParamTensor *t = &l->tensors[l->num_tensors++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->role = role;
    t->layer = layer;
    t->array = array;
    t->offset = offset;
    t->rows = rows;
    t->cols = cols;
    t->numel = (size_t)rows * (size_t)cols;
}

void model_layout_init(ModelLayout *layout, const ModelConfig *cfg) {
    memset(layout, 0, sizeof *layout);
    layout->cfg = *cfg;
    const int gpt2 = cfg->arch == ARCH_GPT2;
    const size_t L = (size_t)cfg->n_layer, C = (size_t)cfg->n_embd, Vp = (size_t)cfg->padded_vocab_size;
    const size_t qkv = (size_t)cfg->qkv_dim, hid = (size_t)cfg->hidden, fc = (size_t)cfg->fc_dim;
    size_t *sz = layout->array_size;
    sz[P_WTE] = Vp * C;
    sz[P_WPE] = gpt2 ? (size_t)cfg->block_size * C : 0;
    sz[P_LN1W] = L * C;
    sz[P_LN1B] = gpt2 ? L * C : 0;
    sz[P_QKVW] = L * qkv * C;
    sz[P_QKVB] = gpt2 ? L * qkv : 0;
    sz[P_ATTPROJW] = L * C * C;
    sz[P_ATTPROJB] = gpt2 ? L * C : 0;
    sz[P_LN2W] = L * C;
    sz[P_LN2B] = gpt2 ? L * C : 0;
    sz[P_FCW] = L * fc * C;
    sz[P_FCB] = gpt2 ? L * fc : 0;
    sz[P_FCPROJW] = L * C * hid;
    sz[P_FCPROJB] = gpt2 ? L * C : 0;
    sz[P_LNFW] = C;
    sz[P_LNFB] = gpt2 ? C : 0;
    sz[P_HEAD] = cfg->tie_embeddings ? 0 : Vp * C;
    size_t off = 0;
    for (int i = 0; i < NUM_PARAM_ARRAYS; i++) {
        layout->array_offset[i] = off;
        off += sz[i];
    }
    layout->num_params = off;

    TensorList tl = {layout, 0};
    const size_t *ao = layout->array_offset;
    const int H = cfg->n_head, KVH = cfg->n_kv_head, hd = cfg->head_dim;
    char name[48];
    add_tensor(&tl, "wte", ROLE_EMBEDDING, -1, P_WTE, ao[P_WTE], (int)Vp, (int)C);
    if (gpt2) add_tensor(&tl, "wpe", ROLE_EMBEDDING, -1, P_WPE, ao[P_WPE], cfg->block_size, (int)C);
    for (int l = 0; l < cfg->n_layer; l++) {
        const size_t lq = ao[P_QKVW] + (size_t)l * qkv * C;
#define NAME(fmt) (snprintf(name, sizeof name, fmt, l), name)
        add_tensor(&tl, NAME("h.%d.ln1.weight"), ROLE_NORM, l, P_LN1W, ao[P_LN1W] + l * C, 1, (int)C);
        if (gpt2) add_tensor(&tl, NAME("h.%d.ln1.bias"), ROLE_BIAS, l, P_LN1B, ao[P_LN1B] + l * C, 1, (int)C);
        add_tensor(&tl, NAME("h.%d.attn.q"), ROLE_Q, l, P_QKVW, lq, H * hd, (int)C);
        add_tensor(&tl, NAME("h.%d.attn.k"), ROLE_K, l, P_QKVW, lq + (size_t)H * hd * C, KVH * hd, (int)C);
        add_tensor(&tl, NAME("h.%d.attn.v"), ROLE_V, l, P_QKVW, lq + (size_t)(H + KVH) * hd * C, KVH * hd, (int)C);
        if (gpt2) add_tensor(&tl, NAME("h.%d.attn.qkv.bias"), ROLE_BIAS, l, P_QKVB, ao[P_QKVB] + l * qkv, 1, (int)qkv);
        add_tensor(&tl, NAME("h.%d.attn.o"), ROLE_O, l, P_ATTPROJW, ao[P_ATTPROJW] + l * C * C, (int)C, (int)C);
        if (gpt2) add_tensor(&tl, NAME("h.%d.attn.o.bias"), ROLE_BIAS, l, P_ATTPROJB, ao[P_ATTPROJB] + l * C, 1, (int)C);
        add_tensor(&tl, NAME("h.%d.ln2.weight"), ROLE_NORM, l, P_LN2W, ao[P_LN2W] + l * C, 1, (int)C);
        if (gpt2) add_tensor(&tl, NAME("h.%d.ln2.bias"), ROLE_BIAS, l, P_LN2B, ao[P_LN2B] + l * C, 1, (int)C);
        const size_t lf = ao[P_FCW] + (size_t)l * fc * C;
        if (gpt2) {
            add_tensor(&tl, NAME("h.%d.mlp.in"), ROLE_MLP_IN, l, P_FCW, lf, (int)hid, (int)C);
            add_tensor(&tl, NAME("h.%d.mlp.in.bias"), ROLE_BIAS, l, P_FCB, ao[P_FCB] + l * fc, 1, (int)fc);
        } else {
            // SwiGLU's fused input matrix: rows [0, hidden) are the gate, [hidden, 2 hidden) the up projection.
            add_tensor(&tl, NAME("h.%d.mlp.gate"), ROLE_MLP_GATE, l, P_FCW, lf, (int)hid, (int)C);
            add_tensor(&tl, NAME("h.%d.mlp.in"), ROLE_MLP_IN, l, P_FCW, lf + hid * C, (int)hid, (int)C);
        }
        add_tensor(&tl, NAME("h.%d.mlp.out"), ROLE_MLP_OUT, l, P_FCPROJW, ao[P_FCPROJW] + l * C * hid, (int)C, (int)hid);
        if (gpt2) add_tensor(&tl, NAME("h.%d.mlp.out.bias"), ROLE_BIAS, l, P_FCPROJB, ao[P_FCPROJB] + l * C, 1, (int)C);
#undef NAME
    }
    add_tensor(&tl, "lnf.weight", ROLE_NORM, -1, P_LNFW, ao[P_LNFW], 1, (int)C);
    if (gpt2) add_tensor(&tl, "lnf.bias", ROLE_BIAS, -1, P_LNFB, ao[P_LNFB], 1, (int)C);
    if (!cfg->tie_embeddings) add_tensor(&tl, "lm_head", ROLE_HEAD, -1, P_HEAD, ao[P_HEAD], (int)Vp, (int)C);
}

void model_layout_free(ModelLayout *layout) {
    free(layout->tensors);
    layout->tensors = NULL;
    layout->num_tensors = 0;
}

static void fill_normal_rows(float *p, size_t rows, size_t cols, size_t real_rows, float std, Rng *rng) {
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) p[r * cols + c] = r < real_rows ? std * rng_normal(rng) : 0.0f;
}

void model_init_params(const ModelLayout *layout, float *params) {
    const ModelConfig *cfg = &layout->cfg;
    Rng rng;
    rng_seed(&rng, (uint64_t)cfg->seed);
    const float std = cfg->init_std;
    const float residual_std = std / sqrtf(2.0f * (float)cfg->n_layer);
    const size_t C = (size_t)cfg->n_embd;
    for (int a = 0; a < NUM_PARAM_ARRAYS; a++) {
        float *p = params + layout->array_offset[a];
        const size_t n = layout->array_size[a];
        switch (a) {
        case P_WTE:
        case P_HEAD:
            fill_normal_rows(p, n / C, C, (size_t)cfg->vocab_size, std, &rng);
            break;
        case P_LN1W:
        case P_LN2W:
        case P_LNFW:
            for (size_t i = 0; i < n; i++) p[i] = 1.0f;
            break;
        case P_ATTPROJW:
        case P_FCPROJW:
            fill_normal_rows(p, n, 1, n, residual_std, &rng);
            break;
        case P_WPE:
        case P_QKVW:
        case P_FCW:
            fill_normal_rows(p, n, 1, n, std, &rng);
            break;
        default:  // biases
            memset(p, 0, n * sizeof(float));
        }
    }
}
