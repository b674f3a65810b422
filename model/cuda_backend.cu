// See cuda_backend.h. This file is glue: the model (gpt_cuda.cu), the optimizer
// (cuda_optim.cu) and the gradient all-reduce (dist_nccl.cu) behind the Backend interface.
//
// Data parallelism: with more than one rank, the gradients are averaged by NCCL in buckets
// while the backward still runs. The model reports when a set of parameter gradients is
// final (the final norm and untied head first, then each block from the top, then the
// embeddings); on the last micro-batch of a step each such bucket is all-reduced on a side
// stream that waits for exactly that point of the compute stream. sync_grads then only
// makes the compute stream wait for the side stream. Set GPTCU_OVERLAP=0 to all-reduce the
// whole gradient in sync_grads instead.
#include "cuda_backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/global_norm.cuh"
#include "../runtime/common.h"
#include "../runtime/dist.h"
#include "../runtime/dist_nccl.h"
#include "cuda_optim.cuh"
#include "gpt_cuda.cuh"
#include "llmc.h"

typedef struct {
    Backend base;
    ModelLayout layout;
    Optimizer opt;
    GPTCuda model;
    CudaOptim optim;
    double *norm_scratch, *norm_out;  // device: SUMSQ_BLOCKS doubles, one double

    // Data parallelism (world > 1).
    int overlap;              // bucketed all-reduce during the last micro-batch's backward
    int reduce_this_micro;    // the running backward all-reduces as it goes
    int micro;                // micro-batches since zero_grad
    int dirty;                // gradients hold contributions not averaged over ranks yet
    int comm_pending;         // the side stream has work the compute stream has not waited for
    cudaStream_t comm;
    cudaEvent_t ready, done;
    size_t *offsets, *counts; // one bucket's ranges (scratch)
} CudaBackend;

static CudaBackend *self_of(Backend *b) { return (CudaBackend *)b->self; }

const char *cuda_backend_precision(void) { return PRECISION_NAME; }

// ---------------------------------------------------------------------------------------
// Gradient all-reduce, overlapped with the backward

// The compute stream waits (on the device) for the all-reduces issued so far.
static void wait_for_comm(CudaBackend *cb) {
    if (!cb->comm_pending) return;
    CHECK_CUDA(cudaStreamWaitEvent(cb->model.ctx.stream, cb->done, 0));
    cb->comm_pending = 0;
}

// Adds array `arr`'s slice of layer `layer` (or the whole array when layer < 0).
static int add_range(CudaBackend *cb, int n, int arr, int layer) {
    const ModelLayout *L = &cb->layout;
    if (!L->array_size[arr]) return n;
    const size_t per = layer < 0 ? L->array_size[arr] : L->array_size[arr] / (size_t)L->cfg.n_layer;
    cb->offsets[n] = L->array_offset[arr] + (layer < 0 ? 0 : (size_t)layer * per);
    cb->counts[n] = per;
    return n + 1;
}

// GPTCuda's hook: these gradients are final for this micro-batch.
static void on_grads_ready(void *arg, int what, int layer) {
    CudaBackend *cb = (CudaBackend *)arg;
    if (!cb->reduce_this_micro) return;
    int n = 0;
    if (what == GRADS_READY_TOP) {
        n = add_range(cb, n, P_LNFW, -1);
        n = add_range(cb, n, P_LNFB, -1);
        n = add_range(cb, n, P_HEAD, -1);  // untied head; a tied one is wte, below
    } else if (what == GRADS_READY_LAYER) {
        for (int arr = P_LN1W; arr <= P_FCPROJB; arr++) n = add_range(cb, n, arr, layer);
    } else {
        n = add_range(cb, n, P_WTE, -1);
        n = add_range(cb, n, P_WPE, -1);
    }
    CHECK_CUDA(cudaEventRecord(cb->ready, cb->model.ctx.stream));
    CHECK_CUDA(cudaStreamWaitEvent(cb->comm, cb->ready, 0));
    dist_nccl_allreduce_mean_ranges(cb->model.grads, cb->offsets, cb->counts, n, cb->comm);
    CHECK_CUDA(cudaEventRecord(cb->done, cb->comm));
    cb->comm_pending = 1;
}

// ---------------------------------------------------------------------------------------
// The Backend functions

static float cuda_train_micro(Backend *b, const int *inputs, const int *targets, int B, int T, float grad_scale, Rng *rng) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    cb->micro++;
    // The trainer passes grad_scale = 1 / grad_accum, so this is the step's last
    // micro-batch when micro reaches grad_accum. Guessing wrong costs only time: an
    // all-reduce of the running sum is still the right average for later micro-batches
    // to add to (averaging is linear), and sync_grads reduces whatever was left dirty.
    const long accum = grad_scale > 0 ? lroundf(1.0f / grad_scale) : 1;
    cb->reduce_this_micro = cb->overlap && (accum < 1 || cb->micro % accum == 0);
    const float loss = gpt_cuda_forward_backward(&cb->model, inputs, targets, B, T, grad_scale);
    cb->dirty = !cb->reduce_this_micro;
    cb->reduce_this_micro = 0;
    return loss;
}

static float cuda_eval_micro(Backend *b, const int *inputs, const int *targets, int B, int T) {
    return gpt_cuda_forward(&self_of(b)->model, inputs, targets, B, T);
}

static void cuda_next_logits(Backend *b, const int *tokens, int t, float *logits) {
    GPTCuda *m = &self_of(b)->model;
    gpt_cuda_forward(m, tokens, NULL, 1, t);
    gpt_cuda_logits_row(m, t - 1, logits);
}

static void cuda_zero_grad(Backend *b) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    gpt_cuda_zero_grad(&cb->model);
    cb->micro = 0;
    cb->dirty = 0;
}

static void cuda_sync_grads(Backend *b) {
    CudaBackend *cb = self_of(b);
    if (!dist_nccl_enabled()) return;
    wait_for_comm(cb);
    if (cb->dirty) dist_nccl_allreduce_mean(cb->model.grads, b->layout->num_params, cb->model.ctx.stream);
    cb->dirty = 0;
}

static double cuda_grad_sq_norm(Backend *b) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    const cudaStream_t st = cb->model.ctx.stream;
    sum_squares(cb->norm_out, cb->model.grads, NULL, b->layout->num_params, cb->norm_scratch, st);
    double sq;
    CHECK_CUDA(cudaMemcpyAsync(&sq, cb->norm_out, sizeof sq, cudaMemcpyDeviceToHost, st));
    CHECK_CUDA(cudaStreamSynchronize(st));
    return sq;
}

static void cuda_scale_grads(Backend *b, float s) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    scale_array(cb->model.grads, s, b->layout->num_params, cb->model.ctx.stream);
}

static void cuda_optimizer_step(Backend *b, const StepInfo *base, GroupDiagnostics *diag) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    GPTCuda *m = &cb->model;
#ifdef ENABLE_BF16
    floatX *params_x = m->params_x;
#else
    floatX *params_x = NULL;  // the model reads the fp32 parameters themselves
#endif
    cuda_optim_step(&cb->optim, m->params, params_x, m->grads, base, diag, m->ctx.stream);
}

static void cuda_curvature_step(Backend *b, const StepInfo *base) {
    fatal("internal: the CUDA trainer has no curvature step (its optimizers do not use one)");
}

static void cuda_get_params(Backend *b, float *dst) { gpt_cuda_get_params(&self_of(b)->model, dst); }
static void cuda_set_params(Backend *b, const float *src) { gpt_cuda_set_params(&self_of(b)->model, src); }

static void cuda_get_state(Backend *b, float *dst) {
    CudaBackend *cb = self_of(b);
    cuda_optim_get_state(&cb->optim, dst, cb->model.ctx.stream);
}

static void cuda_set_state(Backend *b, const float *src) {
    CudaBackend *cb = self_of(b);
    cuda_optim_set_state(&cb->optim, src, cb->model.ctx.stream);
}

void cuda_backend_get_grads(Backend *b, float *dst) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    CHECK_CUDA(cudaMemcpyAsync(dst, cb->model.grads, b->layout->num_params * sizeof(float), cudaMemcpyDeviceToHost,
                               cb->model.ctx.stream));
    CHECK_CUDA(cudaStreamSynchronize(cb->model.ctx.stream));
}

void cuda_backend_set_grads(Backend *b, const float *src) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    CHECK_CUDA(cudaMemcpyAsync(cb->model.grads, src, b->layout->num_params * sizeof(float), cudaMemcpyHostToDevice,
                               cb->model.ctx.stream));
    CHECK_CUDA(cudaStreamSynchronize(cb->model.ctx.stream));
}

// ---------------------------------------------------------------------------------------
// Creation

static __global__ void probe_kernel(void) {}

// A GPU, and code for it: the build targets one architecture (GPU_ARCH).
static void require_gpu(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0)
        fatal("no CUDA GPU is available (%s); the CUDA trainer needs one (train_gpt is the CPU trainer)",
              e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    cudaFuncAttributes attr;
    e = cudaFuncGetAttributes(&attr, probe_kernel);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        int dev = 0;
        cudaDeviceProp p;
        CHECK_CUDA(cudaGetDevice(&dev));
        CHECK_CUDA(cudaGetDeviceProperties(&p, dev));
        fatal("this build has no code for the %s (compute capability %d.%d): rebuild with make GPU_ARCH=%d%d (%s)", p.name,
              p.major, p.minor, p.major, p.minor, cudaGetErrorString(e));
    }
}

static Backend *create(const RunConfig *rc, int may_fail) {
    CudaBackend *cb = (CudaBackend *)xcalloc(1, sizeof *cb);
    model_layout_init(&cb->layout, &rc->model);
    const ModelLayout *L = &cb->layout;
    optim_build(&cb->opt, rc->json, L->tensors, L->num_tensors, rc->schedule.lr);
    cuda_optim_check(&cb->opt, rc->train.zero);  // before any GPU work: a config error needs no GPU
    require_gpu();
    // Activations for the whole context, as the CPU backend: text samples use all of it.
    if (!gpt_cuda_init(&cb->model, L, rc->train.batch_size, rc->model.block_size)) {
        if (!may_fail)
            fatal("not enough GPU memory for batch %d x %d tokens of this model; lower train.batch_size (and raise "
                  "train.grad_accum to keep the tokens per step)", rc->train.batch_size, rc->model.block_size);
        optim_free(&cb->opt);
        model_layout_free(&cb->layout);
        free(cb);
        return NULL;
    }
    if (may_fail) {
        // What is still to come (optimizer state, a diagnostics snapshot) and headroom for
        // cuBLAS's own workspaces must fit too, or the first step would fail instead.
        const size_t later = (cb->opt.state_floats + (rc->log.diagnostics ? L->num_params : 0)) * sizeof(float);
        size_t free_bytes = 0, total_bytes = 0;
        CHECK_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
        if (free_bytes < later + ((size_t)1 << 30)) {
            gpt_cuda_free(&cb->model);
            optim_free(&cb->opt);
            model_layout_free(&cb->layout);
            free(cb);
            return NULL;
        }
    }
    if (rc->model.init_from[0]) {
        float *host = xmalloc_floats(L->num_params);
        llmc_load_params(rc->model.init_from, L, host);
        gpt_cuda_set_params(&cb->model, host);
        free(host);
    }
    optim_distribute(&cb->opt, rc->json, rc->train.zero, rc->train.spread_matrix_optimizers, dist_rank(), dist_world(),
                     L->num_params);
    cuda_optim_init(&cb->optim, &cb->opt, rc->log.diagnostics);
    CHECK_CUDA(cudaMalloc(&cb->norm_scratch, SUMSQ_BLOCKS * sizeof(double)));
    CHECK_CUDA(cudaMalloc(&cb->norm_out, sizeof(double)));

    if (dist_nccl_enabled()) {
        const char *env = getenv("GPTCU_OVERLAP");
        cb->overlap = !(env && strcmp(env, "0") == 0);
        CHECK_CUDA(cudaStreamCreateWithFlags(&cb->comm, cudaStreamNonBlocking));
        CHECK_CUDA(cudaEventCreateWithFlags(&cb->ready, cudaEventDisableTiming));
        CHECK_CUDA(cudaEventCreateWithFlags(&cb->done, cudaEventDisableTiming));
        cb->offsets = (size_t *)xmalloc(NUM_PARAM_ARRAYS * sizeof(size_t));
        cb->counts = (size_t *)xmalloc(NUM_PARAM_ARRAYS * sizeof(size_t));
        cb->model.grads_ready = on_grads_ready;
        cb->model.grads_ready_arg = cb;
    }

    Backend *b = &cb->base;
    b->name = "cuda (" PRECISION_NAME ")";
    b->layout = L;
    b->opt = &cb->opt;
    b->self = cb;
    b->train_micro = cuda_train_micro;
    b->eval_micro = cuda_eval_micro;
    b->next_logits = cuda_next_logits;
    b->zero_grad = cuda_zero_grad;
    b->sync_grads = cuda_sync_grads;
    b->grad_sq_norm = cuda_grad_sq_norm;
    b->scale_grads = cuda_scale_grads;
    b->optimizer_step = cuda_optimizer_step;
    b->curvature_step = cuda_curvature_step;
    b->get_params = cuda_get_params;
    b->set_params = cuda_set_params;
    b->get_state = cuda_get_state;
    b->set_state = cuda_set_state;
    CHECK_CUDA(cudaStreamSynchronize(cb->model.ctx.stream));
    return b;
}

Backend *cuda_backend_create(const RunConfig *rc) { return create(rc, 0); }
Backend *cuda_backend_try_create(const RunConfig *rc) { return create(rc, 1); }

void cuda_backend_free(Backend *b) {
    CudaBackend *cb = self_of(b);
    wait_for_comm(cb);
    CHECK_CUDA(cudaStreamSynchronize(cb->model.ctx.stream));
    if (cb->comm) {
        CHECK_CUDA(cudaStreamDestroy(cb->comm));
        CHECK_CUDA(cudaEventDestroy(cb->ready));
        CHECK_CUDA(cudaEventDestroy(cb->done));
    }
    free(cb->offsets);
    free(cb->counts);
    CHECK_CUDA(cudaFree(cb->norm_scratch));
    CHECK_CUDA(cudaFree(cb->norm_out));
    cuda_optim_free(&cb->optim);
    gpt_cuda_free(&cb->model);
    optim_free(&cb->opt);
    model_layout_free(&cb->layout);
    free(cb);
}
