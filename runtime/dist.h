// Collectives for data parallelism. Above this interface the distributed logic is the
// same for every backend: MPI on the CPU (runtime/dist.c), NCCL on the GPU
// (runtime/dist_nccl.cu, bootstrapped through MPI). A world of one needs neither: a
// build without MPI, or a program not started by mpirun, runs single-process.
//
// Buffers are host memory for MPI and device memory for NCCL. Every rank must make the
// same calls in the same order.
#pragma once
#include <stddef.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

// Joins the job if started by a launcher (mpirun, srun with PMI); else a world of one.
// Makes fatal() on any rank end the whole job, with the rank in the message.
void dist_init(int *argc, char ***argv);
void dist_finalize(void);
int dist_rank(void);
int dist_world(void);
int dist_local_rank(void);  // rank among the processes on this node (GPU selection)

// In place: every rank ends with the sum (or mean) over ranks.
void dist_allreduce_sum(float *buf, size_t n);
void dist_allreduce_mean(float *buf, size_t n);
void dist_allreduce_sum_double(double *buf, size_t n);
// Mean of a scalar over ranks.
double dist_mean(double x);
// buf holds one part per rank, part r being counts[r] floats at the prefix sum of the
// counts before r. Reduce-scatter: afterwards this rank's part holds the mean over ranks
// of that part (other parts are left unspecified).
void dist_reduce_scatter_mean(float *buf, const size_t *counts);
// All-gather in place: every rank's part (as above) is copied to every rank.
void dist_allgatherv_inplace(float *buf, const size_t *counts);
// All-gather from a separate buffer: rank r contributes counts[r] floats from `mine`;
// `out` receives them concatenated in rank order.
void dist_allgatherv(const float *mine, const size_t *counts, float *out);
void dist_broadcast(void *buf, size_t bytes, int root);
void dist_barrier(void);

#ifdef __cplusplus
}
#endif
