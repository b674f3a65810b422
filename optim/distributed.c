// Spreading the optimizer over data-parallel ranks (see OptimDist in optimizer.h).
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"
#include "../runtime/dist.h"
#include "optimizer.h"

static double tensor_cost(const OptimGroup *g, const ParamTensor *t) {
    if (g->def->cost) return g->def->cost(g->hyper, t);
    const double m = t->rows < t->cols ? t->rows : t->cols;
    return (double)t->rows * (double)t->cols * m;
}

// Largest first onto the least loaded rank; ties go to the lower tensor index and rank,
// so every rank computes the same assignment.
static void assign_owners(Optimizer *opt) {
    const int n = opt->n_tensors, world = opt->dist.world;
    int *order = (int *)xmalloc((size_t)n * sizeof(int));
    double *cost = (double *)xmalloc((size_t)n * sizeof(double));
    double *load = (double *)xcalloc((size_t)world, sizeof(double));
    int m = 0;
    for (int i = 0; i < n; i++) {
        const OptimGroup *g = &opt->groups[opt->group_of[i]];
        if (g->def->step_elements) continue;
        cost[i] = tensor_cost(g, &opt->tensors[i]);
        int j = m++;
        for (; j > 0 && cost[order[j - 1]] < cost[i]; j--) order[j] = order[j - 1];  // stable: equal costs keep index order
        order[j] = i;
    }
    for (int k = 0; k < m; k++) {
        int best = 0;
        for (int r = 1; r < world; r++)
            if (load[r] < load[best]) best = r;
        opt->dist.owner[order[k]] = best;
        load[best] += cost[order[k]];
    }
    free(order);
    free(cost);
    free(load);
}

void optim_distribute(Optimizer *opt, const JsonConfig *c, int zero, int spread, int rank, int world, size_t num_params) {
    OptimDist *d = &opt->dist;
    d->rank = rank;
    d->world = world;
    d->zero = zero;
    if (zero) {
        if (!opt->elementwise_only)
            for (int gi = 0; gi < opt->n_groups; gi++)
                if (!opt->groups[gi].def->step_elements)
                    config_key_error(c, "train.zero", "ZeRO-1 shards element-wise optimizer state, but group %s uses %s, "
                                     "which steps whole tensors (it is spread over ranks by tensor without ZeRO)",
                                     opt->groups[gi].label, opt->groups[gi].def->name);
        for (int gi = 0; gi < opt->n_groups; gi++) {
            const OptimGroup *g = &opt->groups[gi];
            if (g->def->needs_whole_tensor && g->def->needs_whole_tensor(g->hyper))
                config_key_error(c, "train.zero", "group %s (%s) needs whole tensors (a cautious mask); ZeRO-1 splits "
                                 "tensors between ranks", g->label, g->def->name);
        }
        // Contiguous, balanced ranges of the flat parameter array.
        d->counts = (size_t *)xmalloc((size_t)world * sizeof(size_t));
        const size_t per = num_params / (size_t)world, extra = num_params % (size_t)world;
        size_t lo = 0;
        for (int r = 0; r < world; r++) {
            d->counts[r] = per + ((size_t)r < extra);
            if (r == rank) d->lo = lo;
            lo += d->counts[r];
        }
        d->hi = d->lo + d->counts[rank];
        d->local_offset = (size_t *)xmalloc((size_t)opt->n_tensors * sizeof(size_t));
        size_t off = 0;
        for (int i = 0; i < opt->n_tensors; i++) {
            const ParamTensor *t = &opt->tensors[i];
            const OptimGroup *g = &opt->groups[opt->group_of[i]];
            const size_t a = t->offset > d->lo ? t->offset : d->lo;
            const size_t b = t->offset + t->numel < d->hi ? t->offset + t->numel : d->hi;
            d->local_offset[i] = off;
            if (a < b) off += (b - a) * (size_t)g->def->slots(g->hyper);
        }
        d->local_floats = off;
    }
    if (spread) assign_owners(opt);
    else for (int i = 0; i < opt->n_tensors; i++) d->owner[i] = -1;
}

void optim_grad_range(const Optimizer *opt, size_t num_params, size_t *lo, size_t *hi) {
    *lo = opt->dist.zero ? opt->dist.lo : 0;
    *hi = opt->dist.zero ? opt->dist.hi : num_params;
}

void optim_sync_grads(const Optimizer *opt, float *grads, size_t num_params) {
    if (opt->dist.world == 1) return;
    if (opt->dist.zero) dist_reduce_scatter_mean(grads, opt->dist.counts);
    else dist_allreduce_mean(grads, num_params);
}

// The parameters updated by per-tensor owners, packed in tensor order per owner.
static void exchange_owned(const Optimizer *opt, float *params) {
    const OptimDist *d = &opt->dist;
    size_t *counts = (size_t *)xcalloc((size_t)d->world, sizeof(size_t));
    size_t total = 0;
    for (int i = 0; i < opt->n_tensors; i++)
        if (d->owner[i] >= 0) counts[d->owner[i]] += opt->tensors[i].numel, total += opt->tensors[i].numel;
    if (total == 0) {
        free(counts);
        return;
    }
    float *mine = xmalloc_floats(counts[d->rank] ? counts[d->rank] : 1), *all = xmalloc_floats(total);
    size_t k = 0;
    for (int i = 0; i < opt->n_tensors; i++)
        if (d->owner[i] == d->rank) {
            memcpy(mine + k, params + opt->tensors[i].offset, opt->tensors[i].numel * sizeof(float));
            k += opt->tensors[i].numel;
        }
    dist_allgatherv(mine, counts, all);
    k = 0;
    for (int r = 0; r < d->world; r++)
        for (int i = 0; i < opt->n_tensors; i++)
            if (d->owner[i] == r) {
                memcpy(params + opt->tensors[i].offset, all + k, opt->tensors[i].numel * sizeof(float));
                k += opt->tensors[i].numel;
            }
    free(mine);
    free(all);
    free(counts);
}

void optim_exchange_params(const Optimizer *opt, float *params) {
    if (opt->dist.world == 1) return;
    if (opt->dist.zero) dist_allgatherv_inplace(params, opt->dist.counts);
    else exchange_owned(opt, params);
}

// Which rank's copy of tensor i's state is the real one: its ZeRO range owners, its
// per-tensor owner, or rank 0 for element-wise state that every rank holds alike.
void optim_state_to_global(const Optimizer *opt, const float *local, float *global) {
    const OptimDist *d = &opt->dist;
    memset(global, 0, opt->state_floats * sizeof(float));
    for (int i = 0; i < opt->n_tensors; i++) {
        const ParamTensor *t = &opt->tensors[i];
        const OptimGroup *g = &opt->groups[opt->group_of[i]];
        const size_t end = i + 1 < opt->n_tensors ? opt->state_offset[i + 1] : opt->state_floats;
        if (d->zero) {
            float *slots[OPTIM_MAX_SLOTS];
            size_t start, len;
            if (!optim_elementwise_part(opt, i, (float *)local, slots, &start, &len)) continue;
            for (int s = 0; s < g->def->slots(g->hyper); s++)
                memcpy(global + opt->state_offset[i] + (size_t)s * t->numel + (start - t->offset), slots[s], len * sizeof(float));
        } else if (d->owner[i] == d->rank || (d->owner[i] < 0 && d->rank == 0)) {
            memcpy(global + opt->state_offset[i], local + opt->state_offset[i], (end - opt->state_offset[i]) * sizeof(float));
        }
    }
    dist_allreduce_sum(global, opt->state_floats);
}

void optim_state_from_global(const Optimizer *opt, const float *global, float *local) {
    if (!opt->dist.zero) {
        memcpy(local, global, opt->state_floats * sizeof(float));
        return;
    }
    for (int i = 0; i < opt->n_tensors; i++) {
        const ParamTensor *t = &opt->tensors[i];
        const OptimGroup *g = &opt->groups[opt->group_of[i]];
        float *slots[OPTIM_MAX_SLOTS];
        size_t start, len;
        if (!optim_elementwise_part(opt, i, local, slots, &start, &len)) continue;
        for (int s = 0; s < g->def->slots(g->hyper); s++)
            memcpy(slots[s], global + opt->state_offset[i] + (size_t)s * t->numel + (start - t->offset), len * sizeof(float));
    }
}
