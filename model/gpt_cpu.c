#include "gpt_cpu.h"

#include <stdlib.h>
#include <string.h>

#include "../kernels/attention.h"
#include "../kernels/crossentropy.h"
#include "../kernels/encoder.h"
#include "../kernels/gelu.h"
#include "../kernels/layernorm.h"
#include "../kernels/matmul.h"
#include "../kernels/rmsnorm.h"
#include "../kernels/rope.h"
#include "../kernels/swiglu.h"
#include "../runtime/common.h"

typedef struct {
    const float *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
} LayerWeights;

// Pointers to layer l's weights inside a flat array laid out like the parameters
// (used for both the parameters and their gradients). Absent arrays give NULL.
static LayerWeights layer_weights(const ModelLayout *L, const float *base, int l) {
    const ModelConfig *c = &L->cfg;
    const size_t C = (size_t)c->n_embd;
#define AT(arr, per_layer) (L->array_size[arr] ? base + L->array_offset[arr] + (size_t)l * (per_layer) : NULL)
    LayerWeights w = {
        AT(P_LN1W, C), AT(P_LN1B, C), AT(P_QKVW, (size_t)c->qkv_dim * C), AT(P_QKVB, (size_t)c->qkv_dim),
        AT(P_ATTPROJW, C * C), AT(P_ATTPROJB, C), AT(P_LN2W, C), AT(P_LN2B, C),
        AT(P_FCW, (size_t)c->fc_dim * C), AT(P_FCB, (size_t)c->fc_dim), AT(P_FCPROJW, C * (size_t)c->hidden), AT(P_FCPROJB, C),
    };
#undef AT
    return w;
}

static const float *head_weights(const ModelLayout *L, const float *base) {
    return base + L->array_offset[L->cfg.tie_embeddings ? P_WTE : P_HEAD];
}

// Gradients and activations for at most max_B x max_T tokens.
static void alloc_workspace(GPTCpu *m, int max_B, int max_T) {
    const ModelConfig *cfg = &m->layout.cfg;
    m->grads = xmalloc_floats(m->layout.num_params);
    memset(m->grads, 0, m->layout.num_params * sizeof(float));
    m->max_B = max_B;
    m->max_T = max_T;
    const size_t N = (size_t)max_B * max_T, Ly = (size_t)cfg->n_layer, C = (size_t)cfg->n_embd;
    const size_t qkv = (size_t)cfg->qkv_dim, fc = (size_t)cfg->fc_dim, hid = (size_t)cfg->hidden;
    const size_t att = (size_t)max_B * cfg->n_head * max_T * max_T;
    float **slots[] = {&m->ln1, &m->ln1_mean, &m->ln1_rstd, &m->qkv, &m->att, &m->atty, &m->res2, &m->ln2,
                       &m->ln2_mean, &m->ln2_rstd, &m->fch, &m->fch_act, &m->res3, &m->encoded, &m->lnf,
                       &m->lnf_mean, &m->lnf_rstd, &m->logits, &m->losses, &m->dres, &m->dln, &m->dqkv,
                       &m->datty, &m->dfch, &m->dfch_act, &m->rope};
    const size_t sizes[] = {Ly * N * C, Ly * N, Ly * N, Ly * N * qkv, Ly * att, Ly * N * C, Ly * N * C, Ly * N * C,
                            Ly * N, Ly * N, Ly * N * fc, Ly * N * hid, Ly * N * C, N * C, N * C,
                            N, N, N * (size_t)cfg->vocab_size, N, N * C, N * C, N * qkv,
                            N * C, N * fc, N * hid, (size_t)max_T * (size_t)cfg->head_dim};
    const int n = (int)(sizeof sizes / sizeof sizes[0]);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (sizes[i] + 15) & ~(size_t)15;  // 64-byte aligned slices
    m->act_memory = xmalloc_floats(total);
    float *p = m->act_memory;
    for (int i = 0; i < n; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    m->targets = (int *)xmalloc(N * sizeof(int));
    if (cfg->arch == ARCH_LLAMA) rope_table(m->rope, max_T, cfg->head_dim, cfg->rope_theta);
}

void gpt_cpu_init(GPTCpu *m, const ModelConfig *cfg, int max_B, int max_T) {
    memset(m, 0, sizeof *m);
    model_layout_init(&m->layout, cfg);
    m->params = xmalloc_floats(m->layout.num_params);
    m->owns_params = 1;
    model_init_params(&m->layout, m->params);
    alloc_workspace(m, max_B, max_T);
}

void gpt_cpu_init_slice(GPTCpu *slice, const GPTCpu *parent, int max_B, int max_T) {
    memset(slice, 0, sizeof *slice);
    model_layout_init(&slice->layout, &parent->layout.cfg);
    slice->params = parent->params;
    alloc_workspace(slice, max_B, max_T);
}

void gpt_cpu_free(GPTCpu *m) {
    if (m->owns_params) free(m->params);
    free(m->grads);
    free(m->act_memory);
    free(m->targets);
    model_layout_free(&m->layout);
    memset(m, 0, sizeof *m);
}

void gpt_cpu_zero_grad(GPTCpu *m) { memset(m->grads, 0, m->layout.num_params * sizeof(float)); }

// The two places where the architectures differ inside a block: the norm and the MLP activation.
static void norm_forward(const ModelConfig *c, float *out, float *mean, float *rstd, const float *inp, const float *w,
                         const float *b, int N) {
    if (c->arch == ARCH_LLAMA) rmsnorm_forward(out, rstd, inp, w, N, c->n_embd, c->norm_eps);
    else layernorm_forward(out, mean, rstd, inp, w, b, N, c->n_embd, c->norm_eps);
}

static void norm_backward(const ModelConfig *c, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const float *mean, const float *rstd, int N) {
    if (c->arch == ARCH_LLAMA) rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, c->n_embd);
    else layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, c->n_embd);
}

static void mlp_act_forward(const ModelConfig *c, float *out, const float *inp, int N) {
    if (c->arch == ARCH_LLAMA) swiglu_forward(out, inp, N, c->hidden);
    else gelu_forward(out, inp, N * c->hidden);
}

static void mlp_act_backward(const ModelConfig *c, float *dinp, const float *dout, const float *inp, int N) {
    if (c->arch == ARCH_LLAMA) swiglu_backward(dinp, dout, inp, N, c->hidden);
    else gelu_backward(dinp, inp, dout, N * c->hidden);
}

float gpt_cpu_forward(GPTCpu *m, const int *inputs, const int *targets, int B, int T) {
    const ModelLayout *L = &m->layout;
    const ModelConfig *c = &L->cfg;
    if (B > m->max_B || T > m->max_T || T > c->block_size)
        fatal("internal: forward on B=%d T=%d exceeds the allocated B=%d T=%d (block_size %d)", B, T, m->max_B, m->max_T,
              c->block_size);
    m->B = B;
    m->T = T;
    const int N = B * T, C = c->n_embd, H = c->n_head, KVH = c->n_kv_head, hd = c->head_dim;
    const size_t NC = (size_t)N * C, att_stride = (size_t)B * H * T * T;
    const float *wpe = L->array_size[P_WPE] ? m->params + L->array_offset[P_WPE] : NULL;
    encoder_forward(m->encoded, inputs, m->params + L->array_offset[P_WTE], wpe, N, T, C);

    const float *res = m->encoded;
    for (int l = 0; l < c->n_layer; l++) {
        const LayerWeights w = layer_weights(L, m->params, l);
        float *ln1 = m->ln1 + l * NC, *qkv = m->qkv + (size_t)l * N * c->qkv_dim, *att = m->att + l * att_stride;
        float *atty = m->atty + l * NC, *res2 = m->res2 + l * NC, *ln2 = m->ln2 + l * NC;
        float *fch = m->fch + (size_t)l * N * c->fc_dim, *fch_act = m->fch_act + (size_t)l * N * c->hidden;
        float *res3 = m->res3 + l * NC;
        norm_forward(c, ln1, m->ln1_mean + (size_t)l * N, m->ln1_rstd + (size_t)l * N, res, w.ln1w, w.ln1b, N);
        matmul_forward(qkv, ln1, w.qkvw, w.qkvb, N, C, c->qkv_dim);
        if (c->arch == ARCH_LLAMA) rope_forward(qkv, m->rope, B, T, H, KVH, hd);
        attention_forward(atty, att, qkv, B, T, H, KVH, hd);
        matmul_forward_residual(res2, res, atty, w.attprojw, w.attprojb, N, C, C);
        norm_forward(c, ln2, m->ln2_mean + (size_t)l * N, m->ln2_rstd + (size_t)l * N, res2, w.ln2w, w.ln2b, N);
        matmul_forward(fch, ln2, w.fcw, w.fcb, N, C, c->fc_dim);
        mlp_act_forward(c, fch_act, fch, N);
        matmul_forward_residual(res3, res2, fch_act, w.fcprojw, w.fcprojb, N, c->hidden, C);
        res = res3;
    }
    const float *lnfb = L->array_size[P_LNFB] ? m->params + L->array_offset[P_LNFB] : NULL;
    norm_forward(c, m->lnf, m->lnf_mean, m->lnf_rstd, res, m->params + L->array_offset[P_LNFW], lnfb, N);
    // Only the real vocabulary rows of the head are multiplied: padded rows never reach the loss.
    matmul_forward(m->logits, m->lnf, head_weights(L, m->params), NULL, N, C, c->vocab_size);
    if (!targets) return 0.0f;
    crossentropy_forward(m->losses, m->logits, targets, N, c->vocab_size);
    double sum = 0;
    for (int i = 0; i < N; i++) sum += m->losses[i];
    return (float)(sum / N);
}

// Draws each row's label from softmax(logits) (Sophia's Gauss-Newton-Bartlett estimator).
static void sample_labels(int *labels, const float *logits, int N, int V, Rng *rng) {
    for (int i = 0; i < N; i++) {
        const float *row = logits + (size_t)i * V;
        float maxv = row[0];
        for (int j = 1; j < V; j++) maxv = row[j] > maxv ? row[j] : maxv;
        double sum = 0;
        for (int j = 0; j < V; j++) sum += exp((double)(row[j] - maxv));
        double u = rng_uniform_double(rng) * sum, acc = 0;
        int pick = V - 1;
        for (int j = 0; j < V; j++) {
            acc += exp((double)(row[j] - maxv));
            if (u < acc) {
                pick = j;
                break;
            }
        }
        labels[i] = pick;
    }
}

float gpt_cpu_forward_backward(GPTCpu *m, const int *inputs, const int *targets, int B, int T, float grad_scale, Rng *rng) {
    gpt_cpu_forward(m, inputs, NULL, B, T);
    const ModelLayout *L = &m->layout;
    const ModelConfig *c = &L->cfg;
    const int N = B * T, C = c->n_embd, H = c->n_head, KVH = c->n_kv_head, hd = c->head_dim, V = c->vocab_size;
    const size_t NC = (size_t)N * C, att_stride = (size_t)B * H * T * T;

    if (targets) memcpy(m->targets, targets, (size_t)N * sizeof(int));
    else sample_labels(m->targets, m->logits, N, V, rng);
    // Logits become dlogits in place: the loss is a mean over the N tokens.
    const double loss_sum = crossentropy_forward_backward(m->losses, m->logits, m->logits, m->targets, grad_scale / (float)N, N, V);
    const float *dlogits = m->logits;

    float *g = m->grads;
    const float *res_last = c->n_layer ? m->res3 + (size_t)(c->n_layer - 1) * NC : m->encoded;
    matmul_backward(m->dln, (float *)head_weights(L, g), NULL, dlogits, m->lnf, head_weights(L, m->params), N, C, V);
    memset(m->dres, 0, NC * sizeof(float));
    float *dlnfb = L->array_size[P_LNFB] ? g + L->array_offset[P_LNFB] : NULL;
    norm_backward(c, m->dres, g + L->array_offset[P_LNFW], dlnfb, m->dln, res_last, m->params + L->array_offset[P_LNFW],
                  m->lnf_mean, m->lnf_rstd, N);

    for (int l = c->n_layer - 1; l >= 0; l--) {
        const LayerWeights w = layer_weights(L, m->params, l);
        const LayerWeights dw = layer_weights(L, g, l);
        const float *res_in = l ? m->res3 + (size_t)(l - 1) * NC : m->encoded;
        const float *ln1 = m->ln1 + l * NC, *qkv = m->qkv + (size_t)l * N * c->qkv_dim, *att = m->att + l * att_stride;
        const float *atty = m->atty + l * NC, *res2 = m->res2 + l * NC, *ln2 = m->ln2 + l * NC;
        const float *fch = m->fch + (size_t)l * N * c->fc_dim, *fch_act = m->fch_act + (size_t)l * N * c->hidden;

        // MLP branch: res3 = res2 + proj(act(fc(norm(res2)))); dres holds d res3 and becomes d res2.
        matmul_backward(m->dfch_act, (float *)dw.fcprojw, (float *)dw.fcprojb, m->dres, fch_act, w.fcprojw, N, c->hidden, C);
        mlp_act_backward(c, m->dfch, m->dfch_act, fch, N);
        matmul_backward(m->dln, (float *)dw.fcw, (float *)dw.fcb, m->dfch, ln2, w.fcw, N, C, c->fc_dim);
        norm_backward(c, m->dres, (float *)dw.ln2w, (float *)dw.ln2b, m->dln, res2, w.ln2w, m->ln2_mean + (size_t)l * N,
                      m->ln2_rstd + (size_t)l * N, N);

        // Attention branch: res2 = res_in + proj(attn(rope(qkv(norm(res_in))))); dres becomes d res_in.
        matmul_backward(m->datty, (float *)dw.attprojw, (float *)dw.attprojb, m->dres, atty, w.attprojw, N, C, C);
        memset(m->dqkv, 0, (size_t)N * c->qkv_dim * sizeof(float));
        attention_backward(m->dqkv, m->datty, qkv, att, B, T, H, KVH, hd);
        if (c->arch == ARCH_LLAMA) rope_backward(m->dqkv, m->rope, B, T, H, KVH, hd);
        matmul_backward(m->dln, (float *)dw.qkvw, (float *)dw.qkvb, m->dqkv, ln1, w.qkvw, N, C, c->qkv_dim);
        norm_backward(c, m->dres, (float *)dw.ln1w, (float *)dw.ln1b, m->dln, res_in, w.ln1w, m->ln1_mean + (size_t)l * N,
                      m->ln1_rstd + (size_t)l * N, N);
    }
    float *dwpe = L->array_size[P_WPE] ? g + L->array_offset[P_WPE] : NULL;
    encoder_backward(g + L->array_offset[P_WTE], dwpe, m->dres, inputs, N, T, C);
    return (float)(loss_sum / N);
}
