// Host-side helpers of the CUDA backend that need the C-only parts of shared headers (the
// optimizer headers' hyperparameter structs and config tables are C, not C++). They are
// compiled by gcc into libgpt.a and called from the .cu files.
#pragma once
// C++ (nvcc) compiles only the per-element rules of the optimizer headers; the rest is C.
#if defined(__cplusplus) && !defined(OPTIM_RULES_ONLY)
#define OPTIM_RULES_ONLY
#endif
#include "../optim/adamw.h"
#include "../optim/optimizer.h"

#ifdef __cplusplus
extern "C" {
#endif

// When group g runs AdamW: fills *step with the step's resolved switches (adamw_resolve,
// exactly as the CPU step does), *amsgrad and *cautious, and returns 1. Else returns 0.
int cuda_host_adamw_step(const OptimGroup *g, const StepInfo *s, AdamWStep *step, int *amsgrad, int *cautious);

// kernels/rope.h's table (T, hd/2, 2) = {cos, sin}, computed on the host in double.
void cuda_host_rope_table(float *table, int T, int hd, float theta);

#ifdef __cplusplus
}
#endif
