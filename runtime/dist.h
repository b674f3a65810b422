// Collectives for data parallelism. Above this interface the distributed logic is the
// same for every backend: MPI on the CPU, NCCL on the GPU (bootstrapped through MPI). A
// world of one needs neither: without MPI the build runs single-process.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void dist_init(int *argc, char ***argv);
void dist_finalize(void);
int dist_rank(void);
int dist_world(void);
// Average of a float buffer over ranks, in place.
void dist_allreduce_mean(float *buf, size_t n);
// Average of a scalar over ranks.
double dist_mean(double x);
void dist_barrier(void);

#ifdef __cplusplus
}
#endif
