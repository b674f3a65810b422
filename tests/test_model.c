// The whole model's gradient against central finite differences, for both architectures,
// plus layout and initialisation checks.
#include <stdlib.h>
#include <string.h>

#include "../model/gpt_cpu.h"
#include "../runtime/common.h"
#include "harness.h"
#include "test_util.h"

static void model_from_json(GPTCpu *m, const char *json, int B, int T) {
    JsonConfig *c = config_from_text(json);
    ModelConfig mc;
    model_config_read(&mc, c);
    if (mc.seed < 0) mc.seed = 7;
    gpt_cpu_init(m, &mc, B, T);
    json_config_free(c);
}

// Central differences of the mean loss on a sample of every parameter array, compared
// norm-wise with the analytic gradient. A larger init std makes the gradients large
// enough that float32 rounding in the loss (~1e-7 relative) stays far below them.
static void check_model_gradient(const char *json) {
    enum { B = 2, T = 5 };
    GPTCpu m;
    model_from_json(&m, json, B, T);
    const ModelLayout *L = &m.layout;
    int inputs[B * T], targets[B * T];
    Rng r;
    rng_seed(&r, 99);
    for (int i = 0; i < B * T; i++) {
        inputs[i] = (int)rng_below(&r, (uint64_t)L->cfg.vocab_size);
        targets[i] = (int)rng_below(&r, (uint64_t)L->cfg.vocab_size);
    }
    // Perturb norm weights and biases away from 1 and 0 so their gradients are generic.
    for (int a = 0; a < NUM_PARAM_ARRAYS; a++) {
        if (a != P_LN1W && a != P_LN2W && a != P_LNFW && a != P_LN1B && a != P_LN2B && a != P_LNFB && a != P_QKVB &&
            a != P_FCB && a != P_ATTPROJB && a != P_FCPROJB)
            continue;
        float *p = m.params + L->array_offset[a];
        for (size_t i = 0; i < L->array_size[a]; i++) p[i] += 0.3f * (rng_uniform(&r) - 0.5f);
    }
    gpt_cpu_zero_grad(&m);
    const float loss = gpt_cpu_forward_backward(&m, inputs, targets, B, T, 1.0f, NULL);
    CHECKF(loss > 0 && isfinite(loss), "loss %g", loss);
    const float h = 1e-2f;
    for (int a = 0; a < NUM_PARAM_ARRAYS; a++) {
        const size_t n = L->array_size[a];
        if (!n) continue;
        enum { SAMPLES = 48 };
        double fd[SAMPLES], an[SAMPLES];
        int count = 0;
        for (int s = 0; s < SAMPLES && s < (int)n; s++) {
            size_t idx = n <= SAMPLES ? (size_t)s : (size_t)rng_below(&r, n);
            if (a == P_WTE || a == P_HEAD) idx %= (size_t)L->cfg.vocab_size * L->cfg.n_embd;  // skip padded rows
            float *p = m.params + L->array_offset[a] + idx;
            const float saved = *p;
            *p = saved + h;
            const double up = gpt_cpu_forward(&m, inputs, targets, B, T);
            *p = saved - h;
            const double down = gpt_cpu_forward(&m, inputs, targets, B, T);
            *p = saved;
            fd[count] = (up - down) / (2.0 * h);
            an[count] = m.grads[L->array_offset[a] + idx];
            count++;
        }
        const double err = rel_error_d(an, fd, (size_t)count);
        CHECKF(err < 1e-2, "%s: gradient vs finite differences relative error %.3g", param_array_names[a], err);
    }
    gpt_cpu_free(&m);
}

TEST(model_gradient_gpt2) {
    check_model_gradient("{\"model\": {\"arch\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 6, \"block_size\": 7,"
                         " \"vocab_size\": 11, \"mlp_hidden\": 10, \"init_std\": 0.4}}");
}

TEST(model_gradient_gpt2_untied) {
    check_model_gradient("{\"model\": {\"arch\": \"gpt2\", \"n_layer\": 1, \"n_head\": 3, \"n_embd\": 9, \"block_size\": 5,"
                         " \"vocab_size\": 13, \"tie_embeddings\": false, \"init_std\": 0.4}}");
}

TEST(model_gradient_llama_gqa_untied) {
    check_model_gradient("{\"model\": {\"arch\": \"llama\", \"n_layer\": 2, \"n_head\": 4, \"n_kv_head\": 2, \"n_embd\": 24,"
                         " \"block_size\": 6, \"vocab_size\": 11, \"mlp_hidden\": 7, \"tie_embeddings\": false,"
                         " \"init_std\": 0.4, \"rope_theta\": 100}}");
}

TEST(model_gradient_llama_tied) {
    check_model_gradient("{\"model\": {\"arch\": \"llama\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 12,"
                         " \"block_size\": 5, \"vocab_size\": 9, \"init_std\": 0.4}}");
}

// The tensors published to the optimizers tile the parameter array exactly once.
static void check_tensors_cover(const char *json) {
    GPTCpu m;
    model_from_json(&m, json, 1, 4);
    const ModelLayout *L = &m.layout;
    unsigned char *hits = (unsigned char *)xcalloc(L->num_params, 1);
    for (int i = 0; i < L->num_tensors; i++) {
        const ParamTensor *t = &L->tensors[i];
        CHECKF(t->numel == (size_t)t->rows * t->cols, "%s numel", t->name);
        for (size_t j = 0; j < t->numel; j++) hits[t->offset + j]++;
    }
    size_t bad = 0;
    for (size_t j = 0; j < L->num_params; j++) bad += hits[j] != 1;
    CHECKF(bad == 0, "%zu parameters covered by zero or several tensors", bad);
    free(hits);
    gpt_cpu_free(&m);
}

TEST(model_tensors_cover_params) {
    check_tensors_cover("{\"model\": {\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"block_size\": 4, \"vocab_size\": 70}}");
    check_tensors_cover("{\"model\": {\"arch\": \"llama\", \"n_layer\": 2, \"n_head\": 4, \"n_kv_head\": 1, \"n_embd\": 8,"
                        " \"block_size\": 4, \"vocab_size\": 70, \"tie_embeddings\": false}}");
}

TEST(model_sizes_and_roles) {
    GPTCpu m;
    model_from_json(&m, "{\"model\": {\"arch\": \"llama\", \"n_layer\": 1, \"n_head\": 4, \"n_kv_head\": 2, \"n_embd\": 16,"
                        " \"block_size\": 4, \"vocab_size\": 65}}", 1, 4);
    const ModelConfig *c = &m.layout.cfg;
    CHECK(c->padded_vocab_size == 128);
    CHECK(c->hidden == 64);  // 8/3 * 16 = 42.7, rounded up to a multiple of 64
    CHECK(c->qkv_dim == (4 + 2 * 2) * 4);
    int roles[NUM_ROLES] = {0};
    for (int i = 0; i < m.layout.num_tensors; i++) roles[m.layout.tensors[i].role]++;
    CHECK(roles[ROLE_Q] == 1 && roles[ROLE_K] == 1 && roles[ROLE_V] == 1 && roles[ROLE_O] == 1);
    CHECK(roles[ROLE_MLP_GATE] == 1 && roles[ROLE_MLP_IN] == 1 && roles[ROLE_MLP_OUT] == 1);
    CHECK(roles[ROLE_BIAS] == 0 && roles[ROLE_HEAD] == 0 && roles[ROLE_NORM] == 3);
    // Padded vocabulary rows start at zero and the residual projections are scaled down.
    const float *wte = m.params + m.layout.array_offset[P_WTE];
    double pad = 0;
    for (int i = 65 * 16; i < 128 * 16; i++) pad += fabs(wte[i]);
    CHECK(pad == 0.0);
    gpt_cpu_free(&m);
}

static void bad_heads(void *arg) {
    (void)arg;
    ModelConfig mc;
    model_config_read(&mc, config_from_text("{\"model\": {\"n_layer\": 1, \"n_head\": 3, \"n_embd\": 8, \"block_size\": 4, \"vocab_size\": 5}}"));
}

static void bad_kv(void *arg) {
    (void)arg;
    ModelConfig mc;
    model_config_read(&mc, config_from_text("{\"model\": {\"n_layer\": 1, \"n_head\": 4, \"n_kv_head\": 3, \"n_embd\": 8, \"block_size\": 4, \"vocab_size\": 5}}"));
}

TEST(model_config_errors) {
    EXPECT_FATAL(bad_heads, NULL, "test: model.n_head: n_embd (8) must be divisible by n_head (3)");
    EXPECT_FATAL(bad_kv, NULL, "model.n_kv_head: n_head (4) must be divisible by n_kv_head (3)");
}

// Causality of the whole model: changing token t must leave the logits of every earlier
// position unchanged (bit for bit) and change those at t. A leak through attention, RoPE
// or any layer mixing positions would make a model look far better than it is.
static void check_model_causal(const char *json) {
    enum { B = 2, T = 9 };
    GPTCpu m;
    model_from_json(&m, json, B, T);
    const int V = m.layout.cfg.vocab_size, N = B * T;
    int tokens[B * T];
    Rng r;
    rng_seed(&r, 4);
    for (int i = 0; i < N; i++) tokens[i] = (int)rng_below(&r, (uint64_t)V);
    gpt_cpu_forward(&m, tokens, NULL, B, T);
    float *before = xmalloc_floats((size_t)N * V);
    memcpy(before, m.logits, (size_t)N * V * sizeof(float));
    for (int t = 1; t < T; t++) {
        int changed[B * T];
        memcpy(changed, tokens, sizeof changed);
        for (int b = 0; b < B; b++) changed[b * T + t] = (tokens[b * T + t] + 1) % V;
        gpt_cpu_forward(&m, changed, NULL, B, T);
        for (int b = 0; b < B; b++) {
            const size_t earlier = (size_t)(b * T) * V, at = (size_t)(b * T + t) * V;
            CHECKF(memcmp(m.logits + earlier, before + earlier, (size_t)t * V * sizeof(float)) == 0,
                   "changing token %d changed the logits of an earlier position", t);
            CHECKF(memcmp(m.logits + at, before + at, (size_t)V * sizeof(float)) != 0,
                   "changing token %d did not change its own logits", t);
        }
    }
    free(before);
    gpt_cpu_free(&m);
}

TEST(model_is_causal) {
    check_model_causal("{\"model\": {\"arch\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"block_size\": 9, \"vocab_size\": 13}}");
    check_model_causal("{\"model\": {\"arch\": \"llama\", \"n_layer\": 2, \"n_head\": 4, \"n_kv_head\": 2, \"n_embd\": 16,"
                       " \"block_size\": 9, \"vocab_size\": 13, \"tie_embeddings\": false}}");
}
