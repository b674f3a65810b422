// See gpt_cuda.cuh. The structure follows model/gpt_cpu.c line for line; read them side by side.
#include "gpt_cuda.cuh"

#include <stdlib.h>
#include <string.h>

#include "../kernels/crossentropy.cuh"
#include "../kernels/layernorm.cuh"
#include "../kernels/matmul.cuh"
#include "../kernels/rmsnorm.cuh"
#include "../kernels/rope.cuh"
#include "../kernels/swiglu.cuh"
#include "../runtime/common.h"
#include "cuda_host.h"

// Pointers to layer l's arrays inside a flat array laid out like the parameters (the
// parameters, their bf16 copy, or the gradients). Absent arrays give NULL.
template <typename T>
struct LayerArrays {
    T *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
};

template <typename T>
static T *array_at(const ModelLayout *L, T *base, int arr, int l) {
    const size_t per_layer = L->array_size[arr] / (size_t)L->cfg.n_layer;
    return L->array_size[arr] ? base + L->array_offset[arr] + (size_t)l * per_layer : NULL;
}

template <typename T>
static LayerArrays<T> layer_arrays(const ModelLayout *L, T *base, int l) {
    LayerArrays<T> w = {
        array_at(L, base, P_LN1W, l), array_at(L, base, P_LN1B, l), array_at(L, base, P_QKVW, l),
        array_at(L, base, P_QKVB, l), array_at(L, base, P_ATTPROJW, l), array_at(L, base, P_ATTPROJB, l),
        array_at(L, base, P_LN2W, l), array_at(L, base, P_LN2B, l), array_at(L, base, P_FCW, l),
        array_at(L, base, P_FCB, l), array_at(L, base, P_FCPROJW, l), array_at(L, base, P_FCPROJB, l),
    };
    return w;
}

// A whole (non-layer) array, or NULL when absent.
template <typename T>
static T *whole_array(const ModelLayout *L, T *base, int arr) {
    return L->array_size[arr] ? base + L->array_offset[arr] : NULL;
}

template <typename T>
static T *head_array(const ModelLayout *L, T *base) {
    return base + L->array_offset[L->cfg.tie_embeddings ? P_WTE : P_HEAD];
}

// ---------------------------------------------------------------------------------------
// Memory

// Hands out 256-byte aligned slices of one block; with base == NULL it only measures.
typedef struct {
    char *base;
    size_t used;
} Slicer;

template <typename T>
static T *take(Slicer *s, size_t count) {
    const size_t off = s->used;
    s->used += (count * sizeof(T) + 255) & ~(size_t)255;
    return s->base ? (T *)(s->base + off) : NULL;
}

// Points every activation at its slice of `base` (NULL: measure); returns the bytes needed.
static size_t carve_activations(GPTCuda *m, char *base) {
    const ModelConfig *c = &m->layout->cfg;
    const size_t N = (size_t)m->max_B * m->max_T, Ly = (size_t)c->n_layer, C = (size_t)c->n_embd;
    const size_t qkv = (size_t)c->qkv_dim, fc = (size_t)c->fc_dim, hid = (size_t)c->hidden;
    const size_t kv = N * c->n_kv_head * c->head_dim, att = (size_t)m->max_B * c->n_head * m->max_T * m->max_T;
    const size_t widest = C * 2 > qkv ? (C * 2 > fc ? C * 2 : fc) : (qkv > fc ? qkv : fc);
    Slicer s = {base, 0};
    m->ln1 = take<floatX>(&s, Ly * N * C);
    m->qkv = take<floatX>(&s, Ly * N * qkv);
    m->att = take<floatX>(&s, Ly * att);
    m->atty = take<floatX>(&s, Ly * N * C);
    m->res2 = take<floatX>(&s, Ly * N * C);
    m->ln2 = take<floatX>(&s, Ly * N * C);
    m->fch = take<floatX>(&s, Ly * N * fc);
    m->fch_act = take<floatX>(&s, Ly * N * hid);
    m->res3 = take<floatX>(&s, Ly * N * C);
    m->ln1_mean = take<float>(&s, Ly * N);
    m->ln1_rstd = take<float>(&s, Ly * N);
    m->ln2_mean = take<float>(&s, Ly * N);
    m->ln2_rstd = take<float>(&s, Ly * N);
    m->encoded = take<floatX>(&s, N * C);
    m->lnf = take<floatX>(&s, N * C);
    m->logits = take<floatX>(&s, N * (size_t)c->padded_vocab_size);
    m->lnf_mean = take<float>(&s, N);
    m->lnf_rstd = take<float>(&s, N);
    m->losses = take<float>(&s, N);
    m->dres = take<floatX>(&s, N * C);
    m->dln = take<floatX>(&s, N * C);
    m->dqkv = take<floatX>(&s, N * qkv);
    m->datty = take<floatX>(&s, N * C);
    m->dfch = take<floatX>(&s, N * fc);
    m->dfch_act = take<floatX>(&s, N * hid);
    m->tmp = take<floatX>(&s, N * C);
    m->attn.q = take<floatX>(&s, N * C);
    m->attn.k = take<floatX>(&s, kv);
    m->attn.v = take<floatX>(&s, kv);
    m->attn.y = take<floatX>(&s, N * C);
    m->attn.dq = take<floatX>(&s, N * C);
    m->attn.dk = take<floatX>(&s, kv);
    m->attn.dv = take<floatX>(&s, kv);
    m->attn.dy = take<floatX>(&s, N * C);
    m->attn.datt = take<floatX>(&s, att);
    m->colsum_scratch = take<float>(&s, colsum_scratch_floats((int)N, (int)widest, 1));
    m->rope = take<float>(&s, (size_t)m->max_T * c->head_dim);
    m->io = take<int>(&s, 5 * N + 1);
    return s.used;
}

// cudaMalloc that reports running out of memory instead of failing.
static int try_cuda_malloc(void **p, size_t bytes) {
    const cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();  // clear it
        *p = NULL;
        return 0;
    }
    CHECK_CUDA(e);
    return 1;
}

#ifdef ENABLE_BF16
// The bf16 copy of fp32 values, rounded to nearest.
static __global__ void to_floatx_kernel(floatX *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        store_rn(dst + i, src[i]);
}
#endif

void gpt_cuda_params_changed(GPTCuda *m) {
#ifdef ENABLE_BF16
    const size_t n = m->layout->num_params;
    to_floatx_kernel<<<grid_for(n, 256), 256, 0, m->ctx.stream>>>(m->params_x, m->params, n);
    CHECK_LAUNCH();
#endif
}

int gpt_cuda_init(GPTCuda *m, const ModelLayout *layout, int max_B, int max_T) {
    memset(m, 0, sizeof *m);
    m->layout = layout;
    m->max_B = max_B;
    m->max_T = max_T;
    const ModelConfig *c = &layout->cfg;
    const size_t P = layout->num_params, N = (size_t)max_B * max_T;
    const size_t act_bytes = carve_activations(m, NULL);
    cuda_ctx_init(&m->ctx);
    int ok = try_cuda_malloc(&m->device_blocks[0], P * sizeof(float)) &&
             try_cuda_malloc(&m->device_blocks[1], P * sizeof(float)) &&
             try_cuda_malloc(&m->device_blocks[2], act_bytes);
#ifdef ENABLE_BF16
    ok = ok && try_cuda_malloc(&m->device_blocks[3], P * sizeof(floatX));
#endif
    if (!ok) {
        for (int i = 0; i < 4; i++) CHECK_CUDA(cudaFree(m->device_blocks[i]));
        cuda_ctx_free(&m->ctx);
        memset(m, 0, sizeof *m);
        return 0;
    }
    m->params = (float *)m->device_blocks[0];
    m->grads = (float *)m->device_blocks[1];
    carve_activations(m, (char *)m->device_blocks[2]);
#ifdef ENABLE_BF16
    m->params_x = (floatX *)m->device_blocks[3];
#else
    m->params_x = m->params;
#endif
    // Poison: 0xff bytes are NaN in fp32 and bf16 alike.
    CHECK_CUDA(cudaMemsetAsync(m->device_blocks[2], 0xff, act_bytes, m->ctx.stream));
    CHECK_CUDA(cudaMemsetAsync(m->grads, 0, P * sizeof(float), m->ctx.stream));

    const size_t io_ints = 5 * N + 1, count_ints = (size_t)c->padded_vocab_size;
    CHECK_CUDA(cudaMallocHost(&m->host_block, (io_ints + count_ints) * sizeof(int) + N * sizeof(float)));
    m->h_io = (int *)m->host_block;
    m->h_count = m->h_io + io_ints;
    m->h_losses = (float *)(m->h_count + count_ints);
    m->tokens = m->io;
    m->targets = m->io + N;
    m->buckets.tokens = m->io + 2 * N;
    m->buckets.offsets = m->io + 3 * N;
    m->buckets.pos = m->io + 4 * N + 1;

    if (c->arch == ARCH_LLAMA) {
        float *table = (float *)xmalloc((size_t)max_T * c->head_dim * sizeof(float));
        cuda_host_rope_table(table, max_T, c->head_dim, c->rope_theta);
        CHECK_CUDA(cudaMemcpyAsync(m->rope, table, (size_t)max_T * c->head_dim * sizeof(float), cudaMemcpyHostToDevice,
                                   m->ctx.stream));  // after the poisoning above, on the same stream
        CHECK_CUDA(cudaStreamSynchronize(m->ctx.stream));
        free(table);
    }
    float *host = (float *)xmalloc(P * sizeof(float));
    model_init_params(layout, host);
    gpt_cuda_set_params(m, host);
    free(host);
    return 1;
}

void gpt_cuda_free(GPTCuda *m) {
    if (!m->layout) return;
    cuda_ctx_free(&m->ctx);
    for (int i = 0; i < 4; i++) CHECK_CUDA(cudaFree(m->device_blocks[i]));
    CHECK_CUDA(cudaFreeHost(m->host_block));
    memset(m, 0, sizeof *m);
}

void gpt_cuda_set_params(GPTCuda *m, const float *src) {
    CHECK_CUDA(cudaMemcpyAsync(m->params, src, m->layout->num_params * sizeof(float), cudaMemcpyHostToDevice, m->ctx.stream));
    gpt_cuda_params_changed(m);
    CHECK_CUDA(cudaStreamSynchronize(m->ctx.stream));
}

void gpt_cuda_get_params(GPTCuda *m, float *dst) {
    CHECK_CUDA(cudaMemcpyAsync(dst, m->params, m->layout->num_params * sizeof(float), cudaMemcpyDeviceToHost, m->ctx.stream));
    CHECK_CUDA(cudaStreamSynchronize(m->ctx.stream));
}

void gpt_cuda_zero_grad(GPTCuda *m) {
    CHECK_CUDA(cudaMemsetAsync(m->grads, 0, m->layout->num_params * sizeof(float), m->ctx.stream));
}

// ---------------------------------------------------------------------------------------
// The micro-batch

// Copies tokens (and targets, and the embedding backward's buckets) to the device.
static void upload_batch(GPTCuda *m, const int *inputs, const int *targets, int B, int T, int with_buckets) {
    const ModelConfig *c = &m->layout->cfg;
    if (B > m->max_B || T > m->max_T || T > c->block_size)
        fatal("internal: forward on B=%d T=%d exceeds the allocated B=%d T=%d (block_size %d)", B, T, m->max_B, m->max_T,
              c->block_size);
    m->B = B;
    m->T = T;
    const int N = B * T, Nmax = m->max_B * m->max_T;
    CHECK_CUDA(cudaStreamSynchronize(m->ctx.stream));  // the previous copy out of h_io may still be running
    int *h = m->h_io;
    memcpy(h, inputs, (size_t)N * sizeof(int));
    size_t count = (size_t)N;
    if (targets) {
        memcpy(h + Nmax, targets, (size_t)N * sizeof(int));
        count = (size_t)Nmax + N;
    }
    if (with_buckets) {
        EncoderBuckets hb = {0, h + 2 * Nmax, h + 3 * Nmax, h + 4 * Nmax + 1};
        encoder_buckets(&hb, m->h_count, inputs, N, c->padded_vocab_size);
        m->buckets.n_buckets = hb.n_buckets;
        count = 5 * (size_t)Nmax + 1;
    }
    CHECK_CUDA(cudaMemcpyAsync(m->io, h, count * sizeof(int), cudaMemcpyHostToDevice, m->ctx.stream));
}

// Mean of the N losses, summed in double in row order as on the CPU (after the stream).
static float mean_loss(GPTCuda *m, int N) {
    CHECK_CUDA(cudaStreamSynchronize(m->ctx.stream));
    double sum = 0;
    for (int i = 0; i < N; i++) sum += m->h_losses[i];
    return (float)(sum / N);
}

// ---------------------------------------------------------------------------------------
// Forward

// The two places where the architectures differ inside a block: the norm and the MLP
// activation. a == NULL: out = norm(res); else res = a + b first (the fused residual).
static void norm_forward(GPTCuda *m, floatX *res, floatX *out, float *mean, float *rstd, const floatX *a,
                         const floatX *b, const floatX *w, const floatX *bias, int N) {
    const ModelConfig *c = &m->layout->cfg;
    const cudaStream_t st = m->ctx.stream;
    if (c->arch == ARCH_LLAMA) {
        if (a) fused_residual_rmsnorm_forward(res, out, rstd, a, b, w, N, c->n_embd, c->norm_eps, st);
        else rmsnorm_forward(out, rstd, res, w, N, c->n_embd, c->norm_eps, st);
    } else {
        if (a) fused_residual_layernorm_forward(res, out, mean, rstd, a, b, w, bias, N, c->n_embd, c->norm_eps, st);
        else layernorm_forward(out, mean, rstd, res, w, bias, N, c->n_embd, c->norm_eps, st);
    }
}

static void norm_backward(GPTCuda *m, floatX *dinp, float *dw, float *db, const floatX *dout, const floatX *inp,
                          const floatX *w, const float *mean, const float *rstd, int N) {
    const ModelConfig *c = &m->layout->cfg;
    if (c->arch == ARCH_LLAMA) rmsnorm_backward(dinp, dw, dout, inp, w, rstd, N, c->n_embd, m->colsum_scratch, m->ctx.stream);
    else layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, c->n_embd, m->colsum_scratch, m->ctx.stream);
}

// Everything up to the logits, for the tokens already uploaded.
static void forward_pass(GPTCuda *m) {
    const ModelLayout *L = m->layout;
    const ModelConfig *c = &L->cfg;
    const CudaCtx *ctx = &m->ctx;
    const int B = m->B, T = m->T, N = B * T, C = c->n_embd, H = c->n_head, KVH = c->n_kv_head, hd = c->head_dim;
    const size_t NC = (size_t)N * C, att_stride = (size_t)B * H * T * T;
    floatX *px = m->params_x;
    encoder_forward(m->encoded, m->tokens, whole_array(L, px, P_WTE), whole_array(L, px, P_WPE), N, T, C, ctx->stream);

    const floatX *res = m->encoded;
    for (int l = 0; l < c->n_layer; l++) {
        const LayerArrays<floatX> w = layer_arrays(L, px, l);
        floatX *ln1 = m->ln1 + l * NC, *qkv = m->qkv + (size_t)l * N * c->qkv_dim, *att = m->att + l * att_stride;
        floatX *atty = m->atty + l * NC, *res2 = m->res2 + l * NC, *ln2 = m->ln2 + l * NC;
        floatX *fch = m->fch + (size_t)l * N * c->fc_dim, *fch_act = m->fch_act + (size_t)l * N * c->hidden;
        floatX *res3 = m->res3 + l * NC;
        // Layer l > 0 had its ln1 computed with the residual add that ended layer l - 1.
        if (l == 0)
            norm_forward(m, m->encoded, ln1, m->ln1_mean, m->ln1_rstd, NULL, NULL, w.ln1w, w.ln1b, N);
        matmul_forward(ctx, qkv, NULL, ln1, w.qkvw, w.qkvb, N, C, c->qkv_dim);
        if (c->arch == ARCH_LLAMA) rope_forward(qkv, m->rope, B, T, H, KVH, hd, ctx->stream);
        attention_forward(ctx, atty, att, qkv, &m->attn, B, T, H, KVH, hd);
        matmul_forward(ctx, m->tmp, NULL, atty, w.attprojw, w.attprojb, N, C, C);
        norm_forward(m, res2, ln2, m->ln2_mean + (size_t)l * N, m->ln2_rstd + (size_t)l * N, res, m->tmp, w.ln2w, w.ln2b, N);
        if (c->arch == ARCH_LLAMA) {
            matmul_forward(ctx, fch, NULL, ln2, w.fcw, w.fcb, N, C, c->fc_dim);
            swiglu_forward(fch_act, fch, N, c->hidden, ctx->stream);
        } else {
            matmul_forward(ctx, fch_act, fch, ln2, w.fcw, w.fcb, N, C, c->hidden);  // GELU, pre-activation kept in fch
        }
        matmul_forward(ctx, m->tmp, NULL, fch_act, w.fcprojw, w.fcprojb, N, c->hidden, C);
        // res3 = res2 + tmp, normalised by the next block's ln1, or by the final norm.
        if (l + 1 < c->n_layer) {
            const LayerArrays<floatX> next = layer_arrays(L, px, l + 1);
            norm_forward(m, res3, ln1 + NC, m->ln1_mean + (size_t)(l + 1) * N, m->ln1_rstd + (size_t)(l + 1) * N, res2,
                         m->tmp, next.ln1w, next.ln1b, N);
        } else {
            norm_forward(m, res3, m->lnf, m->lnf_mean, m->lnf_rstd, res2, m->tmp, whole_array(L, px, P_LNFW),
                         whole_array(L, px, P_LNFB), N);
        }
        res = res3;
    }
    // All padded-vocabulary rows of the head are multiplied; crossentropy.cuh masks them.
    matmul_forward(ctx, m->logits, NULL, m->lnf, head_array(L, px), NULL, N, C, c->padded_vocab_size);
}

float gpt_cuda_forward(GPTCuda *m, const int *inputs, const int *targets, int B, int T) {
    upload_batch(m, inputs, targets, B, T, 0);
    forward_pass(m);
    if (!targets) return 0.0f;
    const ModelConfig *c = &m->layout->cfg;
    const int N = B * T;
    crossentropy_forward(m->losses, m->logits, m->targets, N, c->vocab_size, c->padded_vocab_size, m->ctx.stream);
    CHECK_CUDA(cudaMemcpyAsync(m->h_losses, m->losses, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost, m->ctx.stream));
    return mean_loss(m, N);
}

void gpt_cuda_logits_row(GPTCuda *m, int row, float *out) {
    const ModelConfig *c = &m->layout->cfg;
    floatX *host = (floatX *)xmalloc((size_t)c->padded_vocab_size * sizeof(floatX));
    CHECK_CUDA(cudaMemcpyAsync(host, m->logits + (size_t)row * c->padded_vocab_size,
                               (size_t)c->padded_vocab_size * sizeof(floatX), cudaMemcpyDeviceToHost, m->ctx.stream));
    CHECK_CUDA(cudaStreamSynchronize(m->ctx.stream));
    for (int i = 0; i < c->vocab_size; i++) out[i] = (float)host[i];
    free(host);
}

// ---------------------------------------------------------------------------------------
// Backward

static void grads_ready(GPTCuda *m, int what, int layer) {
    if (m->grads_ready) m->grads_ready(m->grads_ready_arg, what, layer);
}

float gpt_cuda_forward_backward(GPTCuda *m, const int *inputs, const int *targets, int B, int T, float grad_scale) {
    if (!targets) fatal("the CUDA trainer cannot sample labels from the model yet (Sophia's curvature step); use the CPU trainer");
    upload_batch(m, inputs, targets, B, T, 1);
    forward_pass(m);
    const ModelLayout *L = m->layout;
    const ModelConfig *c = &L->cfg;
    const CudaCtx *ctx = &m->ctx;
    const cudaStream_t st = ctx->stream;
    const int N = B * T, C = c->n_embd, H = c->n_head, KVH = c->n_kv_head, hd = c->head_dim, Vp = c->padded_vocab_size;
    const size_t NC = (size_t)N * C, att_stride = (size_t)B * H * T * T;
    float *sc = m->colsum_scratch;

    // Logits become dlogits in place: the loss is a mean over the N tokens.
    crossentropy_forward_backward(m->losses, m->logits, m->targets, grad_scale / (float)N, N, c->vocab_size, Vp, st);
    CHECK_CUDA(cudaMemcpyAsync(m->h_losses, m->losses, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost, st));
    const floatX *dlogits = m->logits;

    floatX *px = m->params_x;
    float *g = m->grads;
    const floatX *res_last = m->res3 + (size_t)(c->n_layer - 1) * NC;
    matmul_backward(ctx, m->dln, head_array(L, g), NULL, dlogits, m->lnf, head_array(L, px), N, C, Vp, sc);
    CHECK_CUDA(cudaMemsetAsync(m->dres, 0, NC * sizeof(floatX), st));
    norm_backward(m, m->dres, whole_array(L, g, P_LNFW), whole_array(L, g, P_LNFB), m->dln, res_last,
                  whole_array(L, px, P_LNFW), m->lnf_mean, m->lnf_rstd, N);
    grads_ready(m, GRADS_READY_TOP, -1);

    for (int l = c->n_layer - 1; l >= 0; l--) {
        const LayerArrays<floatX> w = layer_arrays(L, px, l);
        const LayerArrays<float> dw = layer_arrays(L, g, l);
        const floatX *res_in = l ? m->res3 + (size_t)(l - 1) * NC : m->encoded;
        const floatX *ln1 = m->ln1 + l * NC, *qkv = m->qkv + (size_t)l * N * c->qkv_dim, *att = m->att + l * att_stride;
        const floatX *atty = m->atty + l * NC, *res2 = m->res2 + l * NC, *ln2 = m->ln2 + l * NC;
        const floatX *fch = m->fch + (size_t)l * N * c->fc_dim, *fch_act = m->fch_act + (size_t)l * N * c->hidden;

        // MLP branch: res3 = res2 + proj(act(fc(norm(res2)))); dres holds d res3 and becomes d res2.
        matmul_backward(ctx, m->dfch_act, dw.fcprojw, dw.fcprojb, m->dres, fch_act, w.fcprojw, N, c->hidden, C, sc);
        if (c->arch == ARCH_LLAMA) swiglu_backward(m->dfch, m->dfch_act, fch, N, c->hidden, st);
        else gelu_backward(m->dfch, fch, m->dfch_act, (size_t)N * c->hidden, st);
        matmul_backward(ctx, m->dln, dw.fcw, dw.fcb, m->dfch, ln2, w.fcw, N, C, c->fc_dim, sc);
        norm_backward(m, m->dres, dw.ln2w, dw.ln2b, m->dln, res2, w.ln2w, m->ln2_mean + (size_t)l * N,
                      m->ln2_rstd + (size_t)l * N, N);

        // Attention branch: res2 = res_in + proj(attn(rope(qkv(norm(res_in))))); dres becomes d res_in.
        matmul_backward(ctx, m->datty, dw.attprojw, dw.attprojb, m->dres, atty, w.attprojw, N, C, C, sc);
        attention_backward(ctx, m->dqkv, m->datty, qkv, att, &m->attn, B, T, H, KVH, hd);
        if (c->arch == ARCH_LLAMA) rope_backward(m->dqkv, m->rope, B, T, H, KVH, hd, st);
        matmul_backward(ctx, m->dln, dw.qkvw, dw.qkvb, m->dqkv, ln1, w.qkvw, N, C, c->qkv_dim, sc);
        norm_backward(m, m->dres, dw.ln1w, dw.ln1b, m->dln, res_in, w.ln1w, m->ln1_mean + (size_t)l * N,
                      m->ln1_rstd + (size_t)l * N, N);
        grads_ready(m, GRADS_READY_LAYER, l);
    }
    encoder_backward(whole_array(L, g, P_WTE), whole_array(L, g, P_WPE), m->dres, &m->buckets, B, T, C, st);
    grads_ready(m, GRADS_READY_BOTTOM, -1);
    return mean_loss(m, N);
}
