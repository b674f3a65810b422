// The per-micro-batch statistics engine (see microstats.h and docs/crossfit.md).
#define _GNU_SOURCE
#include "microstats.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"
#include "../runtime/dist.h"

static const char *const split_names[] = {"alternating", "halves", "ranks", "leave_one_out"};

void cf_check(const CorrectionConfig *cc, const JsonConfig *c, const char *path, int allow_loo, const char *optimizer) {
    char sub[200];
    if (cc->correction == CORRECTION_NONE && cc->update_clip > 0) {
        snprintf(sub, sizeof sub, "%s.update_clip", path);
        config_key_error(c, sub, "is a safeguard of the bias corrections; it needs a correction other than \"none\"");
    }
    if (cc->correction != CORRECTION_NONE && cc->split == CF_SPLIT_LOO) {
        snprintf(sub, sizeof sub, "%s.crossfit_split", path);
        if (!allow_loo)
            config_key_error(c, sub, "%s has no leave-one-out form (adamw has); use alternating, halves or ranks", optimizer);
        if (cc->correction == CORRECTION_VARIANCE)
            config_key_error(c, sub, "leave_one_out is a cross-fit form: use correction crossfit or full");
    }
}

static MicroStatsNeed group_need(const OptimGroup *g) {
    MicroStatsNeed need;
    memset(&need, 0, sizeof need);
    if (g->def->stats_need) g->def->stats_need(g->hyper, &need);
    return need;
}

int microstats_required(const Optimizer *opt) {
    for (int gi = 0; gi < opt->n_groups; gi++)
        if (group_need(&opt->groups[gi]).active) return 1;
    return 0;
}

// Which local micro-batches are in group A.
static int in_a(const MicroStatsPlan *p, int a) {
    switch (p->split) {
    case CF_SPLIT_ALTERNATING: return a % 2 == 0;
    case CF_SPLIT_HALVES: return a < p->accum / 2;
    case CF_SPLIT_RANKS: return p->rank % 2 == 0;
    default: return 0;
    }
}

// A pass's kind of statistics: none yet, over every micro-batch, over B, leave-one-out.
enum { KIND_UNSET, KIND_ALL, KIND_SPLIT, KIND_LOO };
static const char *const kind_names[] = {"", "over every micro-batch (correction variance)",
                                         "over group B (correction crossfit or full)", "leave-one-out"};

static void agree(int *kind, int *owner, int want, int gi, const Optimizer *opt, const char *pass) {
    if (*kind == KIND_UNSET) {
        *kind = want;
        *owner = gi;
    } else if (*kind != want) {
        fatal("optimizer groups %s and %s: the %s statistics of one step are either %s or %s, not both; give the "
              "groups compatible corrections (docs/crossfit.md)", opt->groups[*owner].label, opt->groups[gi].label, pass,
              kind_names[*kind], kind_names[want]);
    }
}

void microstats_init(MicroStats *ms, const Optimizer *opt, int rank, int world, int accum) {
    memset(ms, 0, sizeof *ms);
    MicroStatsPlan *p = &ms->plan;
    p->rank = rank;
    p->world = world;
    p->accum = accum;
    p->split = -1;
    p->n_total = accum * world;
    for (int i = 0; i < opt->n_tensors; i++)
        if (opt->tensors[i].offset + opt->tensors[i].numel > p->num_params)
            p->num_params = opt->tensors[i].offset + opt->tensors[i].numel;
    ms->need = (MicroStatsNeed *)xcalloc((size_t)opt->n_groups, sizeof(MicroStatsNeed));
    ms->clip = 1.0f;

    int main_kind = KIND_UNSET, curv_kind = KIND_UNSET, main_owner = -1, curv_owner = -1, split_owner = -1;
    int any_plain_curvature = 0;
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        MicroStatsNeed *n = &ms->need[gi];
        *n = group_need(g);
        if (!n->active) {
            if (g->def->curvature_due) any_plain_curvature = 1;
            continue;
        }
        p->active = 1;
        const OptimizerDef *d = g->def;
        if ((d->step_elements && !d->step_elements_stats) || (d->step_tensor && !d->step_tensor_stats) ||
            (n->curvature && !d->curvature_elements_stats) || (n->loo && !d->loo_fold_elements) ||
            (n->tensor_fold && !(d->stats_fold_tensor && d->stats_tensor_floats)))
            fatal("internal: optimizer %s asks for statistics it has no step for", d->name);
        const int has_main = n->a_sum || n->sq || n->quartic || n->tensor_fold || n->loo;
        const int splits = n->loo || (has_main && n->main_split) || (n->curvature && n->curv_split);
        if (splits) {
            if (p->split < 0) {
                p->split = n->split;
                split_owner = gi;
            } else if (p->split != n->split) {
                fatal("optimizer groups %s and %s: crossfit_split %s and %s; one step's micro-batches have one "
                      "assignment to A and B, so the corrected groups must agree", opt->groups[split_owner].label,
                      g->label, split_names[p->split], split_names[n->split]);
            }
        }
        if (has_main) {
            agree(&main_kind, &main_owner, n->loo ? KIND_LOO : n->main_split ? KIND_SPLIT : KIND_ALL, gi, opt, "main-pass");
            p->main_a_sum |= n->a_sum;
            p->main_sq |= n->sq || n->loo;
            p->main_quartic |= n->quartic;
            p->main_tensor_fold |= n->tensor_fold;
        }
        if (n->curvature) {
            agree(&curv_kind, &curv_owner, n->curv_split ? KIND_SPLIT : KIND_ALL, gi, opt, "curvature-pass");
            p->curv_quartic |= n->curv_quartic;
        }
        if (n->fold_reads_state && world > 1)
            for (int k = 0; k < g->n_tensors; k++)
                if (opt->dist.owner[g->tensors[k]] >= 0)
                    fatal("optimizer group %s (%s, correction %s): its per-micro-batch statistics project onto the "
                          "optimizer's eigenbases, which with data parallelism only the rank that steps a tensor holds; "
                          "set train.spread_matrix_optimizers=false so that every rank steps (and holds) every tensor",
                          g->label, d->name, "variance or full");
        if (n->loo && opt->dist.zero)
            fatal("optimizer group %s: crossfit_split leave_one_out folds every micro-batch against the whole "
                  "optimizer state, which ZeRO-1 shards over ranks; use train.zero=0", g->label);
    }
    if (!p->active) return;

    p->main = main_kind != KIND_UNSET;
    p->loo = main_kind == KIND_LOO;
    p->main_split = main_kind == KIND_SPLIT;
    p->main_isolate = p->main_sq || p->main_quartic || p->main_tensor_fold || p->loo;
    p->curvature = curv_kind != KIND_UNSET;
    p->curv_split = curv_kind == KIND_SPLIT;
    p->curv_isolate = p->curvature;
    p->curv_sq = p->curvature;
    p->curv_plain = p->curvature && any_plain_curvature;

    // Micro-batch counts over all ranks.
    int n_a = 0, n_b = 0;
    switch (p->split) {
    case CF_SPLIT_ALTERNATING: n_a = (accum + 1) / 2 * world, n_b = accum / 2 * world; break;
    case CF_SPLIT_HALVES: n_a = accum / 2 * world, n_b = (accum - accum / 2) * world; break;
    case CF_SPLIT_RANKS:
        if (world < 2)
            fatal("optimizer group %s: crossfit_split ranks puts even ranks in A and odd ranks in B; it needs at least "
                  "2 ranks (mpirun -np 2 ...); on one rank use alternating or halves", opt->groups[split_owner].label);
        n_a = accum * ((world + 1) / 2), n_b = accum * (world / 2);
        break;
    default: break;
    }
    p->n_a = n_a;
    p->n_b = n_b;
    if ((p->main_split || p->curv_split) && (n_a < 1 || n_b < 1))
        fatal("optimizer group %s: crossfit_split %s with %d micro-batch%s per step (train.grad_accum %d x %d rank%s) "
              "leaves group %s empty; cross-fitting needs grad_accum x ranks >= 2", opt->groups[split_owner].label,
              split_names[p->split], p->n_total, p->n_total == 1 ? "" : "es", accum, world, world == 1 ? "" : "s",
              n_a < 1 ? "A" : "B");
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const MicroStatsNeed *n = &ms->need[gi];
        int have = 2;
        if (n->loo) have = p->n_total;
        if (n->main_variance) have = n->main_split ? p->n_b : p->n_total;
        if (n->curv_variance && (n->curv_split ? p->n_b : p->n_total) < have) have = n->curv_split ? p->n_b : p->n_total;
        if (have < 2)
            fatal("optimizer group %s: its correction needs at least 2 micro-batches in %s per step, and has %d "
                  "(train.grad_accum %d x %d rank%s, crossfit_split %s); use more micro-batches per step",
                  opt->groups[gi].label, n->loo ? "all" : (n->main_split || n->curv_split) ? "group B" : "all", have,
                  accum, world, world == 1 ? "" : "s", p->split >= 0 ? split_names[p->split] : "alternating");
    }

    // Buffers.
    const size_t n = p->num_params;
    char *desc = p->buffers;
    size_t left = sizeof p->buffers;
    if (p->main_a_sum || p->main_isolate || p->curv_isolate) {
        ms->scratch = xmalloc_floats(n);
        p->grad_buffers++;
        const int w = snprintf(desc, left, "%s", p->main_a_sum ? "S (scratch, then A's sum)" : "S (scratch)");
        desc += w, left -= (size_t)w;
    }
    if (p->main_sq || p->curv_sq) {
        ms->sq = xmalloc_floats(n);
        p->grad_buffers++;
        const int w = snprintf(desc, left, ", Q2 (sum of g_j^2)");
        desc += w, left -= (size_t)w;
    }
    if (p->main_quartic || p->curv_quartic) {
        ms->quartic = xmalloc_floats(n);
        p->grad_buffers++;
        const int w = snprintf(desc, left, ", Q4 (sum of g_j^4)");
        desc += w, left -= (size_t)w;
    }
    if (p->loo) {
        ms->u1 = xmalloc_floats(n);
        ms->u3 = xmalloc_floats(n);
        p->grad_buffers += 2;
        snprintf(desc, left, ", U1, U3 (leave-one-out sums)");
    }
    ms->tensor_offset = (size_t *)xmalloc((size_t)opt->n_tensors * sizeof(size_t));
    for (int i = 0; i < opt->n_tensors; i++) {
        const OptimGroup *g = &opt->groups[opt->group_of[i]];
        const MicroStatsNeed *nd = &ms->need[opt->group_of[i]];
        ms->tensor_offset[i] = SIZE_MAX;
        if (!nd->tensor_fold) continue;
        ms->tensor_offset[i] = p->tensor_stats_floats;
        p->tensor_stats_floats += g->def->stats_tensor_floats(g->hyper, &opt->tensors[i]);
    }
    if (p->tensor_stats_floats) ms->tensor_stats = xmalloc_floats(p->tensor_stats_floats);
}

void microstats_free(MicroStats *ms) {
    free(ms->need);
    free(ms->scratch);
    free(ms->sq);
    free(ms->quartic);
    free(ms->u1);
    free(ms->u3);
    free(ms->tensor_stats);
    free(ms->tensor_offset);
    memset(ms, 0, sizeof *ms);
}

void microstats_print(const MicroStatsPlan *p, FILE *out) {
    if (!p->active) return;
    fprintf(out, "bias corrections: %d micro-batches per step", p->n_total);
    if (p->split >= 0 && p->split != CF_SPLIT_LOO)
        fprintf(out, ", crossfit_split %s (A %d, B %d)", split_names[p->split], p->n_a, p->n_b);
    if (p->loo) fprintf(out, ", leave-one-out (a second forward and backward of every micro-batch)");
    fprintf(out, "; statistics:");
    const char *sep = " ";
    if (p->main_a_sum) fprintf(out, "%sA's gradient sum", sep), sep = ", ";
    if (p->main_sq) fprintf(out, "%ssquares over %s", sep, p->main_split ? "B" : "all"), sep = ", ";
    if (p->main_quartic) fprintf(out, "%sfourth powers", sep), sep = ", ";
    if (p->main_tensor_fold) fprintf(out, "%sper-tensor folds over %s", sep, p->main_split ? "B" : "all"), sep = ", ";
    if (p->loo) fprintf(out, "%sleave-one-out folds", sep), sep = ", ";
    if (p->curvature)
        fprintf(out, "%scurvature-pass squares over %s%s", sep, p->curv_split ? "B (A's sampled-label backward skipped)" : "all",
                p->curv_quartic ? " and fourth powers" : "");
    fprintf(out, "\n");
    const double mib = (double)p->num_params * 4.0 / (1 << 20);
    fprintf(out, "bias corrections: extra memory %d gradient-sized buffer%s x %.2f MiB = %.2f MiB: %s",
            p->grad_buffers, p->grad_buffers == 1 ? "" : "s", mib, mib * p->grad_buffers, p->buffers);
    if (p->tensor_stats_floats)
        fprintf(out, "; per-tensor statistics %.2f MiB", (double)p->tensor_stats_floats * 4.0 / (1 << 20));
    fprintf(out, " (extra optimizer state, if any, is in the group lines above)\n");
}

int microstats_schedule(const MicroStatsPlan *p, int pass, int *order, int *role) {
    int count = 0;
    for (int sweep = 0; sweep < 2; sweep++)
        for (int a = 0; a < p->accum; a++) {
            int r;
            if (pass == MS_PASS_MAIN) {
                if (p->main_split && in_a(p, a)) r = p->main_a_sum ? MS_ROLE_A : MS_ROLE_PLAIN;
                else r = p->main_isolate ? MS_ROLE_B : MS_ROLE_PLAIN;
            } else if (pass == MS_PASS_LOO) {
                r = MS_ROLE_LOO;
            } else {
                if (p->curv_split && in_a(p, a)) {
                    if (!p->curv_plain) continue;  // A's sampled-label gradients are not needed
                    r = MS_ROLE_PLAIN;
                } else {
                    r = MS_ROLE_B;
                }
            }
            if ((r == MS_ROLE_A) != sweep) continue;  // A's (summing into S) after B's (using S as scratch)
            order[count] = a;
            role[count] = r;
            count++;
        }
    return count;
}

static void zero(float *x, size_t n) {
    if (x) memset(x, 0, n * sizeof(float));
}

void microstats_begin(MicroStats *ms, int pass, const StepInfo *info) {
    const MicroStatsPlan *p = &ms->plan;
    ms->info = *info;
    ms->a_started = 0;
    if (pass == MS_PASS_MAIN) {
        ms->clip = 1.0f;
        if (p->main_sq) zero(ms->sq, p->num_params);
        if (p->main_quartic) zero(ms->quartic, p->num_params);
        if (p->main_tensor_fold) zero(ms->tensor_stats, p->tensor_stats_floats);
    } else if (pass == MS_PASS_LOO) {
        zero(ms->u1, p->num_params);
        zero(ms->u3, p->num_params);
    } else {
        zero(ms->sq, p->num_params);
        if (p->curv_quartic) zero(ms->quartic, p->num_params);
    }
}

float *microstats_target(MicroStats *ms, int role, float *grads, float grad_scale, float *scale) {
    if (role == MS_ROLE_PLAIN) {
        *scale = grad_scale;
        return grads;
    }
    *scale = 1.0f;
    if (role == MS_ROLE_A) {
        if (!ms->a_started) zero(ms->scratch, ms->plan.num_params);
        ms->a_started = 1;
        return ms->scratch;
    }
    if (ms->a_started) fatal("internal: a micro-batch that needs S alone after A's sum started in S");
    zero(ms->scratch, ms->plan.num_params);
    return ms->scratch;
}

MicroStatsView microstats_view(const MicroStats *ms, int pass, size_t start) {
    const MicroStatsPlan *p = &ms->plan;
    const int curv = pass == MS_PASS_CURVATURE;
    MicroStatsView v;
    memset(&v, 0, sizeof v);
    v.a_sum = !curv && p->main_a_sum ? ms->scratch + start : NULL;
    v.sq_sum = (curv ? p->curv_sq : p->main_sq) ? ms->sq + start : NULL;
    v.quartic_sum = (curv ? p->curv_quartic : p->main_quartic) ? ms->quartic + start : NULL;
    v.u1 = ms->u1 ? ms->u1 + start : NULL;
    v.u3 = ms->u3 ? ms->u3 + start : NULL;
    v.clip = curv ? 1.0f : ms->clip;
    v.n_a = p->n_a;
    v.n_total = p->n_total;
    v.v_is_b = curv ? p->curv_split : p->main_split;
    v.n_v = v.v_is_b ? p->n_b : p->n_total;
    return v;
}

// main += scale * S, and the squares and fourth powers of S into Q2 and Q4.
static void fold_elements(float *restrict G, const float *restrict S, float *restrict Q2, float *restrict Q4, size_t n,
                          float scale) {
    if (Q2 && Q4) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) {
            const float s = S[i], s2 = s * s;
            G[i] += scale * s;
            Q2[i] += s2;
            Q4[i] += s2 * s2;
        }
    } else if (Q2) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) {
            const float s = S[i];
            G[i] += scale * s;
            Q2[i] += s * s;
        }
    } else {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) G[i] += scale * S[i];
    }
}

void microstats_fold(MicroStats *ms, Optimizer *opt, float *grads, int pass, int role, float grad_scale) {
    const MicroStatsPlan *p = &ms->plan;
    if (role == MS_ROLE_PLAIN || role == MS_ROLE_A) return;
    if (role == MS_ROLE_B) {
        const int main = pass == MS_PASS_MAIN;
        fold_elements(grads, ms->scratch, (main ? p->main_sq : p->curv_sq) ? ms->sq : NULL,
                      (main ? p->main_quartic : p->curv_quartic) ? ms->quartic : NULL, p->num_params, grad_scale);
        if (!main || !p->main_tensor_fold) return;
        for (int gi = 0; gi < opt->n_groups; gi++) {
            const OptimGroup *g = &opt->groups[gi];
            if (!ms->need[gi].tensor_fold) continue;
            const StepInfo s = optim_group_step_info(g, &ms->info);
            for (int k = 0; k < g->n_tensors; k++) {
                const int i = g->tensors[k];
                const ParamTensor *t = &opt->tensors[i];
                g->def->stats_fold_tensor(g->hyper, &s, t, ms->scratch + t->offset, opt->state + opt->state_offset[i],
                                          ms->tensor_stats + ms->tensor_offset[i]);
            }
        }
        return;
    }
    // Leave-one-out: fold micro-batch r (in S) into U1, U3 of each leave-one-out group.
    for (int gi = 0; gi < opt->n_groups; gi++) {
        const OptimGroup *g = &opt->groups[gi];
        if (!ms->need[gi].loo) continue;
        const StepInfo s = optim_group_step_info(g, &ms->info);
        for (int k = 0; k < g->n_tensors; k++) {
            float *slots[OPTIM_MAX_SLOTS];
            size_t start, len;
            if (!optim_elementwise_part(opt, g->tensors[k], opt->state, slots, &start, &len)) continue;
            const MicroStatsView v = microstats_view(ms, MS_PASS_LOO, start);
            g->def->loo_fold_elements(g->hyper, &s, &v, ms->scratch + start, slots, len);
        }
    }
}

void microstats_end(MicroStats *ms, Optimizer *opt, float *grads, int pass, float grad_scale) {
    const MicroStatsPlan *p = &ms->plan;
    const size_t n = p->num_params;
    if (pass == MS_PASS_MAIN) {
        if (ms->a_started) fold_elements(grads, ms->scratch, NULL, NULL, n, grad_scale);  // A's into the mean
        else if (p->main_a_sum) zero(ms->scratch, n);  // this rank has no A micro-batch (crossfit_split ranks)
        if (p->world > 1) {
            if (p->main_a_sum) dist_allreduce_sum(ms->scratch, n);
            if (p->main_sq) dist_allreduce_sum(ms->sq, n);
            if (p->main_quartic) dist_allreduce_sum(ms->quartic, n);
            if (p->main_tensor_fold) dist_allreduce_sum(ms->tensor_stats, p->tensor_stats_floats);
        }
    } else if (pass == MS_PASS_LOO) {
        if (p->world > 1) {
            dist_allreduce_sum(ms->u1, n);
            dist_allreduce_sum(ms->u3, n);
        }
    } else if (p->world > 1) {
        dist_allreduce_sum(ms->sq, n);
        if (p->curv_quartic) dist_allreduce_sum(ms->quartic, n);
    }
    ms->a_started = 0;
    (void)opt;
}

void microstats_scale(MicroStats *ms, float s) {
    if (ms->plan.main) ms->clip *= s;
}


