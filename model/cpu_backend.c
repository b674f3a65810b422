#include "cpu_backend.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/crossentropy.h"
#include "../optim/microstats.h"
#include "../runtime/common.h"
#include "../runtime/dist.h"
#include "llmc.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// On models this small, threads inside each layer spend much of their time waiting at
// the ~100 fork/joins of a step. Instead, each thread runs the whole forward and backward
// on its own slice of the batch's rows (single-threaded BLAS inside), and the slices'
// gradients are summed once per step. slices[0] owns the parameters.
enum { MAX_SLICES = 64 };

typedef struct {
    Backend base;
    GPTCpu slices[MAX_SLICES];
    int n_slices;
    Optimizer opt;
    float *snapshot;  // parameters before the step, for update-RMS diagnostics
    MicroStats stats; // per-micro-batch statistics of the bias corrections (plan.active = 0: none)
    int stats_pass;   // the pass of stats_micro (MS_PASS_*)
} CpuBackend;

static GPTCpu *model_of(Backend *b) { return &((CpuBackend *)b->self)->slices[0]; }

double sum_squares(const float *x, size_t n) {
    enum { CHUNK = 1 << 15 };
    const size_t chunks = (n + CHUNK - 1) / CHUNK;
    double stack[256];
    double *partial = chunks <= 256 ? stack : (double *)xmalloc(chunks * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        const size_t end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        double s = 0;
        for (size_t i = c * CHUNK; i < end; i++) s += (double)x[i] * x[i];
        partial[c] = s;
    }
    double total = 0;
    for (size_t c = 0; c < chunks; c++) total += partial[c];
    if (partial != stack) free(partial);
    return total;
}

// Rows [first, first + count) of a batch of B for slice k of n: as even as possible.
static void slice_rows(int B, int n, int k, int *first, int *count) {
    *first = (int)((long)B * k / n);
    *count = (int)((long)B * (k + 1) / n) - *first;
}

// Forward (and backward, with `train`) of a micro-batch split over the slices; the mean
// loss of the whole batch. Each slice's rows weigh in by their share of the tokens.
static float run_slices(CpuBackend *cb, const int *inputs, const int *targets, int B, int T, float grad_scale, Rng *rng,
                        int train) {
    const int n = cb->n_slices < B ? cb->n_slices : B;
    if (n == 1) {
        GPTCpu *m = &cb->slices[0];
        return train ? gpt_cpu_forward_backward(m, inputs, targets, B, T, grad_scale, rng)
                     : gpt_cpu_forward(m, inputs, targets, B, T);
    }
    // Sampled labels: one RNG stream per slice, derived from the trainer's.
    const uint64_t stream = rng ? rng_u64(rng) : 0;
    double loss = 0;
#pragma omp parallel num_threads(n) reduction(+ : loss)
    {
#ifdef _OPENMP
        const int k = omp_get_thread_num();
#else
        const int k = 0;
#endif
        int first, rows;
        slice_rows(B, n, k, &first, &rows);
        const size_t off = (size_t)first * T;
        const float share = (float)rows / (float)B;
        GPTCpu *m = &cb->slices[k];
        Rng r;
        rng_seed(&r, stream + (uint64_t)k);
        const float l = train ? gpt_cpu_forward_backward(m, inputs + off, targets ? targets + off : NULL, rows, T,
                                                         grad_scale * share, &r)
                              : gpt_cpu_forward(m, inputs + off, targets + off, rows, T);
        loss += (double)l * share;
    }
    return (float)loss;
}

static float cpu_train_micro(Backend *b, const int *inputs, const int *targets, int B, int T, float grad_scale, Rng *rng) {
    return run_slices((CpuBackend *)b->self, inputs, targets, B, T, grad_scale, rng, 1);
}

static float cpu_eval_micro(Backend *b, const int *inputs, const int *targets, int B, int T) {
    return run_slices((CpuBackend *)b->self, inputs, targets, B, T, 0.0f, NULL, 0);
}

static void cpu_next_logits(Backend *b, const int *tokens, int t, float *logits) {
    GPTCpu *m = model_of(b);
    gpt_cpu_forward(m, tokens, NULL, 1, t);
    const int V = m->layout.cfg.vocab_size;
    memcpy(logits, m->logits + (size_t)(t - 1) * V, (size_t)V * sizeof(float));
}

static void cpu_zero_grad(Backend *b) {
    CpuBackend *cb = (CpuBackend *)b->self;
    for (int k = 0; k < cb->n_slices; k++) gpt_cpu_zero_grad(&cb->slices[k]);
}

// The gradients of slices 1.. into g (in slice order, so the sum is deterministic), which
// leaves them zero.
static void gather_slices(CpuBackend *cb, float *g, size_t n) {
    if (cb->n_slices > 1) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float sum = g[i];
            for (int k = 1; k < cb->n_slices; k++) {
                sum += cb->slices[k].grads[i];
                cb->slices[k].grads[i] = 0.0f;
            }
            g[i] = sum;
        }
    }
}

// The slices' gradients into slices[0], then across ranks.
static void cpu_sync_grads(Backend *b) {
    CpuBackend *cb = (CpuBackend *)b->self;
    float *g = cb->slices[0].grads;
    const size_t n = b->layout->num_params;
    gather_slices(cb, g, n);
    optim_sync_grads(b->opt, g, n);
}

static double cpu_grad_sq_norm(Backend *b) {
    size_t lo, hi;  // under ZeRO each rank holds the averaged gradients of its range only
    optim_grad_range(b->opt, b->layout->num_params, &lo, &hi);
    double sq = sum_squares(model_of(b)->grads + lo, hi - lo);
    if (b->opt->dist.zero) dist_allreduce_sum_double(&sq, 1);
    return sq;
}

static void cpu_scale_grads(Backend *b, float s) {
    GPTCpu *m = model_of(b);
    size_t lo, hi;
    optim_grad_range(b->opt, b->layout->num_params, &lo, &hi);
#pragma omp parallel for schedule(static)
    for (size_t i = lo; i < hi; i++) m->grads[i] *= s;
    microstats_scale(&((CpuBackend *)b->self)->stats, s);  // the statistics follow the clip
}

// Sum of squares of x (minus `minus`) over a group's tensors, within [lo, hi).
static double group_sq(const Optimizer *opt, const OptimGroup *g, const float *x, const float *minus, size_t lo, size_t hi) {
    double sum = 0;
    for (int k = 0; k < g->n_tensors; k++) {
        const ParamTensor *t = &opt->tensors[g->tensors[k]];
        const size_t a = t->offset > lo ? t->offset : lo, e = t->offset + t->numel < hi ? t->offset + t->numel : hi;
        for (size_t i = a; i < e; i++) {
            const double d = (double)x[i] - (minus ? (double)minus[i] : 0.0);
            sum += d * d;
        }
    }
    return sum;
}

static void cpu_optimizer_step(Backend *b, const StepInfo *base, GroupDiagnostics *diag) {
    CpuBackend *cb = (CpuBackend *)b->self;
    GPTCpu *m = &cb->slices[0];
    const size_t n = b->layout->num_params;
    if (diag) memcpy(cb->snapshot, m->params, n * sizeof(float));
    optim_step_cpu(&cb->opt, cb->stats.plan.active ? &cb->stats : NULL, m->params, m->grads, base);
    optim_exchange_params(&cb->opt, m->params);
    if (!diag) return;
    size_t lo, hi;
    optim_grad_range(&cb->opt, n, &lo, &hi);
    for (int gi = 0; gi < cb->opt.n_groups; gi++) {
        const OptimGroup *g = &cb->opt.groups[gi];
        double sq[2] = {group_sq(&cb->opt, g, m->params, cb->snapshot, 0, n), group_sq(&cb->opt, g, m->grads, NULL, lo, hi)};
        if (cb->opt.dist.zero) dist_allreduce_sum_double(sq + 1, 1);
        diag[gi].update_rms = g->numel ? sqrt(sq[0] / (double)g->numel) : 0.0;
        diag[gi].grad_rms = g->numel ? sqrt(sq[1] / (double)g->numel) : 0.0;
    }
}

static void cpu_curvature_step(Backend *b, const StepInfo *base) {
    CpuBackend *cb = (CpuBackend *)b->self;
    optim_curvature_cpu(&cb->opt, cb->stats.plan.curvature ? &cb->stats : NULL, cb->slices[0].grads, base);
}

// Statistics (optim/microstats.h): slice 0's backward adds where the micro-batch's role says
// (the gradients, the A sum, or the zeroed scratch that then holds the micro-batch alone);
// the other slices' gradients are gathered into the same place before the fold.
static void cpu_stats_begin(Backend *b, int pass, const StepInfo *info) {
    CpuBackend *cb = (CpuBackend *)b->self;
    cb->stats_pass = pass;
    microstats_begin(&cb->stats, pass, info);
}

static float cpu_stats_micro(Backend *b, const int *inputs, const int *targets, int B, int T, float grad_scale, int role,
                             Rng *rng) {
    CpuBackend *cb = (CpuBackend *)b->self;
    GPTCpu *m = &cb->slices[0];
    float *grads = m->grads, scale;
    float *target = microstats_target(&cb->stats, role, grads, grad_scale, &scale);
    m->grads = target;
    const float loss = run_slices(cb, inputs, targets, B, T, scale, rng, 1);
    m->grads = grads;
    gather_slices(cb, target, b->layout->num_params);
    microstats_fold(&cb->stats, &cb->opt, grads, cb->stats_pass, role, grad_scale);
    return loss;
}

static void cpu_stats_end(Backend *b, int pass, float grad_scale) {
    CpuBackend *cb = (CpuBackend *)b->self;
    microstats_end(&cb->stats, &cb->opt, cb->slices[0].grads, pass, grad_scale);
}

static void cpu_get_params(Backend *b, float *dst) { memcpy(dst, model_of(b)->params, b->layout->num_params * sizeof(float)); }
static void cpu_set_params(Backend *b, const float *src) { memcpy(model_of(b)->params, src, b->layout->num_params * sizeof(float)); }
static void cpu_get_state(Backend *b, float *dst) { optim_state_to_global(b->opt, b->opt->state, dst); }
static void cpu_set_state(Backend *b, const float *src) { optim_state_from_global(b->opt, src, b->opt->state); }

Backend *cpu_backend_create(const RunConfig *rc) {
    CpuBackend *cb = (CpuBackend *)xcalloc(1, sizeof *cb);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    const int B = rc->train.batch_size;
    cb->n_slices = threads < B ? threads : B;
    if (cb->n_slices > MAX_SLICES) cb->n_slices = MAX_SLICES;
    const int rows = (B + cb->n_slices - 1) / cb->n_slices;  // the largest slice
    gpt_cpu_init(&cb->slices[0], &rc->model, rows, rc->model.block_size);
    for (int k = 1; k < cb->n_slices; k++) gpt_cpu_init_slice(&cb->slices[k], &cb->slices[0], rows, rc->model.block_size);
    if (rc->model.init_from[0]) llmc_load_params(rc->model.init_from, &cb->slices[0].layout, cb->slices[0].params);
    const ModelLayout *L = &cb->slices[0].layout;
    optim_build(&cb->opt, rc->json, L->tensors, L->num_tensors, rc->schedule.lr);
    optim_distribute(&cb->opt, rc->json, rc->train.zero, rc->train.spread_matrix_optimizers, dist_rank(), dist_world(),
                     L->num_params);
    optim_alloc_state(&cb->opt);
    if (microstats_required(&cb->opt)) microstats_init(&cb->stats, &cb->opt, dist_rank(), dist_world(), rc->train.grad_accum);
    if (rc->log.diagnostics) cb->snapshot = xmalloc_floats(L->num_params);
    Backend *b = &cb->base;
    b->name = "cpu";
    b->layout = L;
    b->opt = &cb->opt;
    b->self = cb;
    b->train_micro = cpu_train_micro;
    b->eval_micro = cpu_eval_micro;
    b->next_logits = cpu_next_logits;
    b->zero_grad = cpu_zero_grad;
    b->sync_grads = cpu_sync_grads;
    b->grad_sq_norm = cpu_grad_sq_norm;
    b->scale_grads = cpu_scale_grads;
    b->optimizer_step = cpu_optimizer_step;
    b->curvature_step = cpu_curvature_step;
    b->get_params = cpu_get_params;
    b->set_params = cpu_set_params;
    b->get_state = cpu_get_state;
    b->set_state = cpu_set_state;
    if (cb->stats.plan.active) {
        b->stats_plan = &cb->stats.plan;
        b->stats_begin = cpu_stats_begin;
        b->stats_micro = cpu_stats_micro;
        b->stats_end = cpu_stats_end;
    }
    return b;
}

GPTCpu *cpu_backend_model(Backend *b) { return model_of(b); }
const MicroStats *cpu_backend_stats(Backend *b) { return &((CpuBackend *)b->self)->stats; }

void cpu_backend_free(Backend *b) {
    CpuBackend *cb = (CpuBackend *)b->self;
    for (int k = cb->n_slices - 1; k >= 0; k--) gpt_cpu_free(&cb->slices[k]);
    optim_free(&cb->opt);
    microstats_free(&cb->stats);
    free(cb->snapshot);
    free(cb);
}
