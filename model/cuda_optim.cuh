// The optimizer groups on the GPU: the state in device memory (in the same layout as the
// CPU's, so checkpoints are the same bytes), one fused kernel launch per tensor, and the
// per-group diagnostics. AdamW is the only optimizer with CUDA kernels so far; the others
// are refused up front by cuda_optim_check.
#pragma once
#include "../kernels/cuda_common.cuh"
#include "../optim/optimizer.h"
#include "../runtime/backend.h"

typedef struct {
    Optimizer *opt;               // groups and state layout (not owned)
    float *state;                 // device, opt->state_floats
    unsigned long long *agree;    // device counter of the cautious mask
    double *sumsq_scratch;        // device, SUMSQ_BLOCKS doubles
    double *sums, *h_sums;        // per tensor: |update|^2 and |grad|^2 (device, pinned host)
    float *snapshot;              // device copy of the parameters before a step (diagnostics), or NULL
} CudaOptim;

// Fatal error naming the group when a group's optimizer has no CUDA kernel, or when the run
// asks for something the CUDA step does not do (ZeRO-1). Host only: safe before any CUDA call.
void cuda_optim_check(const Optimizer *opt, int zero);
// Device state initialised as the CPU's (optim_alloc_state); diagnostics: keep a snapshot buffer.
void cuda_optim_init(CudaOptim *o, Optimizer *opt, int diagnostics);
void cuda_optim_free(CudaOptim *o);
// One step of every group on `stream`. params are the fp32 master weights; params_x their
// bf16 copy (bf16 build) or NULL. Fills diag[n_groups] when diag != NULL (synchronises).
void cuda_optim_step(CudaOptim *o, float *params, floatX *params_x, const float *grads, const StepInfo *base,
                     GroupDiagnostics *diag, cudaStream_t stream);
// Host copies in the one-rank layout (collective, like the CPU backend's).
void cuda_optim_get_state(CudaOptim *o, float *dst, cudaStream_t stream);
void cuda_optim_set_state(CudaOptim *o, const float *src, cudaStream_t stream);
