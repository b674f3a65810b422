// The model on the CPU: forward, loss and backward for both architectures, composed
// from the layer kernels in kernels/*.h. Activations are allocated once for the
// largest (B, T) and reused; backward needs only one layer's worth of scratch because
// it walks the layers top-down with a single running residual gradient.
#pragma once
#include "../runtime/rng.h"
#include "model.h"

typedef struct {
    ModelLayout layout;
    float *params, *grads;  // flat, layout.num_params each
    int owns_params;        // 0 for a slice that shares another model's parameters
    int max_B, max_T;
    int B, T;               // shape of the last forward
    float *act_memory;
    // Per-layer activations saved for backward, each indexed [layer][...].
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res2;
    float *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_act, *res3;
    float *encoded, *lnf, *lnf_mean, *lnf_rstd, *logits, *losses;
    int *targets;           // the labels the last loss used (given or sampled)
    // Backward scratch (one layer).
    float *dres, *dln, *dqkv, *datty, *dfch, *dfch_act;
    float *rope;            // (max_T, head_dim/2, 2) cos/sin table, llama only
} GPTCpu;

// Allocates parameters (initialised from cfg.seed), gradients (zeroed) and activations.
void gpt_cpu_init(GPTCpu *m, const ModelConfig *cfg, int max_B, int max_T);
// A slice: the parameters of `parent`, with its own gradients and activations, so that
// threads can run forward and backward on different rows of a batch at once.
void gpt_cpu_init_slice(GPTCpu *slice, const GPTCpu *parent, int max_B, int max_T);
void gpt_cpu_free(GPTCpu *m);

// Forward on B x T tokens. With targets, returns the mean cross-entropy; else 0 and only
// the logits ((B*T, vocab_size), row-major) are meaningful.
float gpt_cpu_forward(GPTCpu *m, const int *inputs, const int *targets, int B, int T);

// Forward and backward on one micro-batch: adds grad_scale * d(mean loss)/d(params) to
// m->grads and returns the mean loss. With targets == NULL the labels are sampled from
// the model's own softmax with `rng` (the Gauss-Newton-Bartlett estimator Sophia uses).
float gpt_cpu_forward_backward(GPTCpu *m, const int *inputs, const int *targets, int B, int T, float grad_scale, Rng *rng);

void gpt_cpu_zero_grad(GPTCpu *m);
