// The MPI backend of runtime/dist.h (with USE_MPI), and the single-process fallback.
#define _GNU_SOURCE
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef USE_MPI
#include <mpi.h>
#endif

static int rank_, world_ = 1, local_rank_;

#ifdef USE_MPI
static int using_mpi;

// MPI counts are ints; large buffers go in pieces. The same piece size on every rank
// keeps the calls matched.
enum { MAX_PIECE = 1 << 28 };

static NORETURN void abort_job(int status) {
    // Every rank, not only this one, must stop: a peer blocked in a collective would hang.
    MPI_Abort(MPI_COMM_WORLD, status);
    exit(status);
}

// Started by a launcher? Calling MPI_Init in a plain `./train_gpt` run would make Open
// MPI start a singleton runtime for nothing (slow, and noisy in containers).
static int launched_by_mpi(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", NULL};
    for (const char **v = vars; *v; v++)
        if (getenv(*v)) return 1;
    return 0;
}
#endif

void dist_init(int *argc, char ***argv) {
#ifdef USE_MPI
    if (!launched_by_mpi()) return;
    MPI_Init(argc, argv);
    using_mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_free(&local);
    set_fatal_hook(abort_job);
    if (world_ > 1) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "rank %d: ", rank_);
        set_error_prefix(prefix);
    }
#else
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    if (size && atoi(size) > 1)
        fatal("this build has no MPI (install libopenmpi-dev and rebuild) but was started by mpirun with %s ranks", size);
#endif
}

void dist_finalize(void) {
#ifdef USE_MPI
    if (using_mpi) MPI_Finalize();
    using_mpi = 0;
#endif
}

int dist_rank(void) { return rank_; }
int dist_world(void) { return world_; }
int dist_local_rank(void) { return local_rank_; }

void dist_allreduce_sum(float *buf, size_t n) {
#ifdef USE_MPI
    if (world_ == 1) return;
    for (size_t off = 0; off < n; off += MAX_PIECE) {
        const size_t len = n - off < MAX_PIECE ? n - off : MAX_PIECE;
        MPI_Allreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
#endif
}

void dist_allreduce_mean(float *buf, size_t n) {
    if (world_ == 1) return;
    dist_allreduce_sum(buf, n);
    const float inv = 1.0f / (float)world_;
    for (size_t i = 0; i < n; i++) buf[i] *= inv;
}

void dist_allreduce_sum_double(double *buf, size_t n) {
#ifdef USE_MPI
    if (world_ > 1) MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#endif
}

double dist_mean(double x) {
    dist_allreduce_sum_double(&x, 1);
    return x / world_;
}

#ifdef USE_MPI
// Counts and displacements as MPI's ints; fatal beyond 2^31 floats in total.
static void int_counts(const size_t *counts, int *c, int *d) {
    size_t total = 0;
    for (int r = 0; r < world_; r++) {
        if (total + counts[r] > (size_t)2147483647) fatal("internal: a collective over more than 2^31 floats");
        c[r] = (int)counts[r];
        d[r] = (int)total;
        total += counts[r];
    }
}
#endif

void dist_reduce_scatter_mean(float *buf, const size_t *counts) {
    if (world_ == 1) return;
#ifdef USE_MPI
    int *c = (int *)xmalloc((size_t)world_ * sizeof(int)), *d = (int *)xmalloc((size_t)world_ * sizeof(int));
    int_counts(counts, c, d);
    float *mine = (float *)xmalloc((size_t)(c[rank_] ? c[rank_] : 1) * sizeof(float));
    MPI_Reduce_scatter(buf, mine, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    const float inv = 1.0f / (float)world_;
    for (int i = 0; i < c[rank_]; i++) buf[d[rank_] + i] = mine[i] * inv;
    free(mine);
    free(c);
    free(d);
#endif
}

void dist_allgatherv_inplace(float *buf, const size_t *counts) {
    if (world_ == 1) return;
#ifdef USE_MPI
    int *c = (int *)xmalloc((size_t)world_ * sizeof(int)), *d = (int *)xmalloc((size_t)world_ * sizeof(int));
    int_counts(counts, c, d);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, c, d, MPI_FLOAT, MPI_COMM_WORLD);
    free(c);
    free(d);
#endif
}

void dist_allgatherv(const float *mine, const size_t *counts, float *out) {
    if (world_ == 1) {
        memcpy(out, mine, counts[0] * sizeof(float));
        return;
    }
#ifdef USE_MPI
    int *c = (int *)xmalloc((size_t)world_ * sizeof(int)), *d = (int *)xmalloc((size_t)world_ * sizeof(int));
    int_counts(counts, c, d);
    MPI_Allgatherv(mine, c[rank_], MPI_FLOAT, out, c, d, MPI_FLOAT, MPI_COMM_WORLD);
    free(c);
    free(d);
#endif
}

void dist_broadcast(void *buf, size_t bytes, int root) {
#ifdef USE_MPI
    if (world_ == 1) return;
    for (size_t off = 0; off < bytes; off += MAX_PIECE)
        MPI_Bcast((char *)buf + off, (int)(bytes - off < MAX_PIECE ? bytes - off : MAX_PIECE), MPI_BYTE, root, MPI_COMM_WORLD);
#endif
}

void dist_barrier(void) {
#ifdef USE_MPI
    if (world_ > 1) MPI_Barrier(MPI_COMM_WORLD);
#endif
}
