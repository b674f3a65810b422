// The model on the GPU: forward, loss and backward for both architectures, composed from
// the kernels in kernels/*.cuh exactly as model/gpt_cpu.c composes kernels/*.h: the same
// parameter layout, the same activations (saved per layer for the backward), the same
// order of operations. Differences, each for speed and each documented where it happens:
// residual adds are fused into the next norm; logits span the padded vocabulary
// (crossentropy.cuh); linear layers overwrite their outputs instead of adding into zeroed
// buffers.
//
// Parameters and gradients are device arrays in the CPU's flat layout (model/model.h), fp32
// (the master weights). In the bf16 build the model computes with params_x, a bf16 copy
// that the optimizer writes; in the fp32 build params_x is params.
#pragma once
#include "../kernels/attention.cuh"
#include "../kernels/cuda_common.cuh"
#include "../kernels/encoder.cuh"
#include "model.h"

// What the backward reports as it goes, for overlapping the gradient all-reduce with it:
// the gradients of these parameters are final for this micro-batch.
enum {
    GRADS_READY_TOP,     // the final norm (and the untied head): right after the loss
    GRADS_READY_LAYER,   // every array of block `layer`
    GRADS_READY_BOTTOM,  // the embeddings (and the tied head): at the very end
};
typedef void (*GradsReadyFn)(void *arg, int what, int layer);

typedef struct {
    const ModelLayout *layout;  // not owned
    CudaCtx ctx;
    float *params, *grads;      // device, layout->num_params each
    floatX *params_x;           // what the forward and backward read
    int max_B, max_T;
    int B, T;                   // shape of the last forward

    // Per-layer activations saved for the backward, each indexed [layer][...].
    floatX *ln1, *qkv, *att, *atty, *res2, *ln2, *fch, *fch_act, *res3;
    float *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd;
    floatX *encoded, *lnf, *logits;  // logits: (N, padded vocab); dlogits in place after a backward
    float *lnf_mean, *lnf_rstd, *losses;
    // Backward scratch (one layer).
    floatX *dres, *dln, *dqkv, *datty, *dfch, *dfch_act, *tmp;
    AttentionScratch attn;
    float *colsum_scratch;
    float *rope;                // (max_T, head_dim/2, 2) table, llama only

    // The micro-batch: tokens, targets and the token buckets of the embedding backward, one
    // int array on the device (io) and its pinned host staging copy (h_io).
    int *io, *h_io, *h_count;
    int *tokens, *targets;
    EncoderBuckets buckets;     // device pointers into io
    float *h_losses;            // pinned

    GradsReadyFn grads_ready;   // NULL: no hook
    void *grads_ready_arg;

    void *device_blocks[4];     // everything cudaMalloc'd, for gpt_cuda_free
    void *host_block;           // h_io, h_count and h_losses (cudaMallocHost)
} GPTCuda;

// Allocates parameters (initialised from cfg.seed like the CPU's), zeroed gradients and the
// activations for micro-batches up to max_B x max_T; activations start poisoned with NaN, so
// a kernel that reads what no kernel wrote shows up in every loss. Returns 0, with nothing
// left allocated, when the GPU's memory is too small (the benchmark then tries a smaller batch).
int gpt_cuda_init(GPTCuda *m, const ModelLayout *layout, int max_B, int max_T);
void gpt_cuda_free(GPTCuda *m);

// Host parameters (fp32, flat) in and out; set also refreshes the bf16 copy.
void gpt_cuda_set_params(GPTCuda *m, const float *src);
void gpt_cuda_get_params(GPTCuda *m, float *dst);
void gpt_cuda_params_changed(GPTCuda *m);  // after writing m->params on the device

// Forward on B x T host tokens. With targets, returns the mean cross-entropy; else 0 and only
// the logits are meaningful.
float gpt_cuda_forward(GPTCuda *m, const int *inputs, const int *targets, int B, int T);
// Forward and backward of one micro-batch: adds grad_scale * d(mean loss)/d(params) to
// m->grads and returns the mean loss.
float gpt_cuda_forward_backward(GPTCuda *m, const int *inputs, const int *targets, int B, int T, float grad_scale);
// Row `row` of the last forward's logits, vocab_size floats, to the host.
void gpt_cuda_logits_row(GPTCuda *m, int row, float *out);
void gpt_cuda_zero_grad(GPTCuda *m);
