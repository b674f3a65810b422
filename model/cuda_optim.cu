// See cuda_optim.cuh.
#include "cuda_optim.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/adamw.cuh"
#include "../kernels/global_norm.cuh"
#include "../runtime/common.h"
#include "cuda_host.h"

void cuda_optim_check(const Optimizer *opt, int zero) {
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        if (strcmp(g->def->name, "adamw") != 0)
            fatal("train_gptcu: optimizer %s (group %s) has no CUDA kernel yet; use the CPU trainer", g->def->name, g->label);
    }
    if (zero) fatal("train_gptcu: train.zero = %d (ZeRO-1) has no CUDA implementation yet; use train.zero = 0 or the CPU trainer", zero);
}

void cuda_optim_init(CudaOptim *o, Optimizer *opt, int diagnostics) {
    memset(o, 0, sizeof *o);
    o->opt = opt;
    optim_alloc_state(opt);  // host, initialised exactly as the CPU's
    const size_t bytes = opt->state_floats * sizeof(float);
    CHECK_CUDA(cudaMalloc(&o->state, bytes ? bytes : sizeof(float)));
    CHECK_CUDA(cudaMemcpy(o->state, opt->state, bytes, cudaMemcpyHostToDevice));
    free(opt->state);  // the state lives on the device from here on
    opt->state = NULL;
    CHECK_CUDA(cudaMalloc(&o->agree, sizeof *o->agree));
    CHECK_CUDA(cudaMalloc(&o->sumsq_scratch, SUMSQ_BLOCKS * sizeof(double)));
    CHECK_CUDA(cudaMalloc(&o->sums, 2 * (size_t)opt->n_tensors * sizeof(double)));
    CHECK_CUDA(cudaMallocHost(&o->h_sums, 2 * (size_t)opt->n_tensors * sizeof(double)));
    if (diagnostics) {
        size_t n = 0;  // the parameter array ends where its last tensor does
        for (int i = 0; i < opt->n_tensors; i++)
            if (opt->tensors[i].offset + opt->tensors[i].numel > n) n = opt->tensors[i].offset + opt->tensors[i].numel;
        CHECK_CUDA(cudaMalloc(&o->snapshot, n * sizeof(float)));
    }
}

void cuda_optim_free(CudaOptim *o) {
    CHECK_CUDA(cudaFree(o->state));
    CHECK_CUDA(cudaFree(o->agree));
    CHECK_CUDA(cudaFree(o->sumsq_scratch));
    CHECK_CUDA(cudaFree(o->sums));
    CHECK_CUDA(cudaFreeHost(o->h_sums));
    CHECK_CUDA(cudaFree(o->snapshot));
    memset(o, 0, sizeof *o);
}

// The stochastic-rounding seed of tensor i at a step: a pure function of both, so a run
// and its resumption round alike.
static uint32_t rounding_seed(long step, int i) { return (uint32_t)step * 0x9E3779B1u + (uint32_t)i * 0x85EBCA77u; }

// Per group: RMS of the update (params minus the snapshot) and of the gradients, from
// per-tensor sums of squares added in double in tensor order.
static void diagnostics(CudaOptim *o, const float *params, const float *grads, GroupDiagnostics *diag, cudaStream_t stream) {
    const Optimizer *opt = o->opt;
    for (int i = 0; i < opt->n_tensors; i++) {
        const ParamTensor *t = &opt->tensors[i];
        sum_squares(o->sums + 2 * i, params + t->offset, o->snapshot + t->offset, t->numel, o->sumsq_scratch, stream);
        sum_squares(o->sums + 2 * i + 1, grads + t->offset, NULL, t->numel, o->sumsq_scratch, stream);
    }
    CHECK_CUDA(cudaMemcpyAsync(o->h_sums, o->sums, 2 * (size_t)opt->n_tensors * sizeof(double), cudaMemcpyDeviceToHost, stream));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        double upd = 0, grad = 0;
        for (int k = 0; k < g->n_tensors; k++) {
            upd += o->h_sums[2 * g->tensors[k]];
            grad += o->h_sums[2 * g->tensors[k] + 1];
        }
        diag[gi].update_rms = g->numel ? sqrt(upd / (double)g->numel) : 0.0;
        diag[gi].grad_rms = g->numel ? sqrt(grad / (double)g->numel) : 0.0;
    }
}

void cuda_optim_step(CudaOptim *o, float *params, floatX *params_x, const float *grads, const StepInfo *base,
                     GroupDiagnostics *diag, cudaStream_t stream) {
    const Optimizer *opt = o->opt;
    if (diag && !o->snapshot) fatal("internal: optimizer diagnostics without a snapshot buffer (cuda_optim_init)");
    if (diag) {
        for (int i = 0; i < opt->n_tensors; i++) {
            const ParamTensor *t = &opt->tensors[i];
            CHECK_CUDA(cudaMemcpyAsync(o->snapshot + t->offset, params + t->offset, t->numel * sizeof(float),
                                       cudaMemcpyDeviceToDevice, stream));
        }
    }
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        const StepInfo s = optim_group_step_info(g, base);
        AdamWStep step;
        int amsgrad, cautious;
        if (!cuda_host_adamw_step(g, &s, &step, &amsgrad, &cautious))
            fatal("internal: group %s (%s) reached the CUDA step without a CUDA kernel", g->label, g->def->name);
        for (int k = 0; k < g->n_tensors; k++) {
            const int i = g->tensors[k];
            const ParamTensor *t = &opt->tensors[i];
            adamw_update(params + t->offset, params_x ? params_x + t->offset : NULL, grads + t->offset,
                         o->state + opt->state_offset[i], t->numel, &step, amsgrad, cautious, rounding_seed(base->step, i),
                         o->agree, stream);
        }
    }
    if (diag) diagnostics(o, params, grads, diag, stream);
}

void cuda_optim_get_state(CudaOptim *o, float *dst, cudaStream_t stream) {
    const size_t n = o->opt->state_floats;
    float *local = (float *)xmalloc((n ? n : 1) * sizeof(float));
    CHECK_CUDA(cudaMemcpyAsync(local, o->state, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    optim_state_to_global(o->opt, local, dst);
    free(local);
}

void cuda_optim_set_state(CudaOptim *o, const float *src, cudaStream_t stream) {
    const size_t n = o->opt->state_floats;
    float *local = (float *)xmalloc((n ? n : 1) * sizeof(float));
    optim_state_from_global(o->opt, src, local);
    CHECK_CUDA(cudaMemcpyAsync(o->state, local, n * sizeof(float), cudaMemcpyHostToDevice, stream));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    free(local);
}
