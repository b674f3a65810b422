// The CUDA implementation of the trainer's Backend (runtime/backend.h): the model of
// model/gpt_cuda.cuh and the optimizer of model/cuda_optim.cuh on one GPU, with the
// gradients averaged over ranks by NCCL (runtime/dist_nccl.h). Plain C interface, so the
// trainer and the tests see it like the CPU backend.
#pragma once
#include "../runtime/backend.h"
#include "../runtime/run_config.h"

#ifdef __cplusplus
extern "C" {
#endif

// Builds the model (random init, or model.init_from) and the optimizer groups on the GPU.
// Fatal errors: an optimizer without CUDA kernels (before any GPU work), no GPU, a build for
// another GPU architecture, not enough GPU memory.
Backend *cuda_backend_create(const RunConfig *rc);
// The same, but returns NULL when the activations do not fit in GPU memory (the benchmark's
// batch-size search).
Backend *cuda_backend_try_create(const RunConfig *rc);
void cuda_backend_free(Backend *b);

// "fp32" or "bf16": the precision this binary was built for.
const char *cuda_backend_precision(void);
// The gradients (flat parameter layout, fp32) to and from the host; for the tests.
void cuda_backend_get_grads(Backend *b, float *dst);
void cuda_backend_set_grads(Backend *b, const float *src);

#ifdef __cplusplus
}
#endif
