// The CPU implementation of the trainer's Backend: the model of model/gpt_cpu.h and the
// optimizers' CPU steps, all in host memory.
#pragma once
#include "../runtime/backend.h"
#include "../runtime/run_config.h"
#include "gpt_cpu.h"

#ifdef __cplusplus
extern "C" {
#endif

// Builds the model (random init, or model.init_from) and the optimizer groups.
Backend *cpu_backend_create(const RunConfig *rc);
void cpu_backend_free(Backend *b);
GPTCpu *cpu_backend_model(Backend *b);
// The per-micro-batch statistics of the bias corrections (plan.active = 0 without them).
struct MicroStats;
const struct MicroStats *cpu_backend_stats(Backend *b);

// Sum of squares in double, deterministic whatever the thread count: fixed-size chunks
// are summed in parallel, then the chunk sums in order.
double sum_squares(const float *x, size_t n);

#ifdef __cplusplus
}
#endif
