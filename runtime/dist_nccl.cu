// See dist_nccl.h. Built with USE_NCCL when the Makefile finds NCCL; without it, a world of
// one only.
#include "dist_nccl.h"

#include "../kernels/cuda_common.cuh"
#include "common.h"
#include "dist.h"

#ifdef USE_NCCL
#include <nccl.h>

static void nccl_check_(ncclResult_t r, const char *call, const char *file, int line) {
    if (r != ncclSuccess) fatal("NCCL error %d (%s) at %s:%d in %s", (int)r, ncclGetErrorString(r), file, line, call);
}
#define CHECK_NCCL(call) nccl_check_((call), #call, __FILE__, __LINE__)

static ncclComm_t comm;
static int have_comm;
#endif

void dist_nccl_init(void) {
    const int world = dist_world();
    if (world == 1) return;  // one process: the default GPU (CUDA_VISIBLE_DEVICES picks it)
#ifdef USE_NCCL
    int devices = 0;
    const cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0)
        fatal("no CUDA GPU is visible to this rank (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    const int local = dist_local_rank();
    if (local >= devices)
        fatal("this is process %d on its node, but the node has %d GPU%s: start at most one rank per GPU", local + 1,
              devices, devices > 1 ? "s" : "");
    CHECK_CUDA(cudaSetDevice(local));
    ncclUniqueId id;
    if (dist_rank() == 0) CHECK_NCCL(ncclGetUniqueId(&id));
    dist_broadcast(&id, sizeof id, 0);
    CHECK_NCCL(ncclCommInitRank(&comm, world, id, dist_rank()));
    have_comm = 1;
#else
    fatal("this build has no NCCL (install it, or set NCCL_HOME, and rebuild) but was started with %d ranks", world);
#endif
}

void dist_nccl_finalize(void) {
#ifdef USE_NCCL
    if (have_comm) CHECK_NCCL(ncclCommDestroy(comm));
    have_comm = 0;
#endif
}

int dist_nccl_enabled(void) {
#ifdef USE_NCCL
    return have_comm;
#else
    return 0;
#endif
}

void dist_nccl_allreduce_mean(float *buf, size_t n, cudaStream_t stream) {
    dist_nccl_allreduce_mean_ranges(buf, NULL, &n, 1, stream);
}

void dist_nccl_allreduce_mean_ranges(float *base, const size_t *offsets, const size_t *counts, int n_ranges,
                                     cudaStream_t stream) {
#ifdef USE_NCCL
    if (!have_comm) return;
    CHECK_NCCL(ncclGroupStart());
    for (int i = 0; i < n_ranges; i++) {
        float *p = base + (offsets ? offsets[i] : 0);
        CHECK_NCCL(ncclAllReduce(p, p, counts[i], ncclFloat, ncclAvg, comm, stream));
    }
    CHECK_NCCL(ncclGroupEnd());
#endif
}
