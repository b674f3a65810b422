// Data parallelism on GPUs: NCCL collectives on device buffers, next to runtime/dist.h's
// collectives on host buffers (MPI, runtime/dist.c). The CUDA trainer uses both: dist.h for
// what the shared code exchanges (losses, checkpoint state), this for the gradients.
// The NCCL communicator is bootstrapped through MPI: rank 0's ncclUniqueId is broadcast
// with dist_broadcast. A world of one needs neither; a build without NCCL refuses to run
// with more than one rank.
#pragma once
#include <stddef.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

// After dist_init: picks this rank's GPU (its rank among the processes on its node) and,
// in a world of more than one, creates the NCCL communicator. Collective.
void dist_nccl_init(void);
void dist_nccl_finalize(void);
// 1 when gradients go through NCCL (a world of more than one).
int dist_nccl_enabled(void);
// In place on device memory, asynchronous on `stream` like a kernel: the mean over ranks
// of n floats, or of n_ranges slices base[offsets[i] .. offsets[i] + counts[i]) in one
// NCCL group. Every rank makes the same calls in the same order.
void dist_nccl_allreduce_mean(float *buf, size_t n, cudaStream_t stream);
void dist_nccl_allreduce_mean_ranges(float *base, const size_t *offsets, const size_t *counts, int n_ranges,
                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif
