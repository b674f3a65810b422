// Bias corrections of AdamW, Sophia and Shampoo (optim/microstats.h, docs/crossfit.md;
// Nayak et al. 2026): the delta-method term against a known distribution, cross-fitting
// with identical groups against the plain optimizers, each estimator against a direct
// double-precision loop over stored micro-batch gradients written here, the main gradient
// the trainer sees, resume equality, the memory plan and the config errors.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../model/cpu_backend.h"
#include "../optim/adamw.h"
#include "../optim/linalg.h"
#include "../optim/microstats.h"
#include "../optim/shampoo.h"
#include "../optim/sophia.h"
#include "../runtime/checkpoint.h"
#include "../runtime/common.h"
#include "../runtime/rng.h"
#include "harness.h"
#include "test_util.h"

// ---------------------------------------------------------------------------------------
// A rig: an optimizer on the tiny model of tiny_optimizer with its statistics, stepped on
// given micro-batch gradients exactly as runtime/trainer.c and model/cpu_backend.c do.

typedef struct {
    Optimizer opt;
    ModelLayout L;
    JsonConfig *c;
    MicroStats ms;
    float *params, *grads;
    size_t n;
    int accum;
} Rig;

static void rig_init(Rig *r, const char *optimizer_json, int accum) {
    memset(r, 0, sizeof *r);
    tiny_optimizer(&r->opt, &r->L, &r->c, optimizer_json);
    optim_alloc_state(&r->opt);
    microstats_init(&r->ms, &r->opt, 0, 1, accum);
    r->n = r->L.num_params;
    r->accum = accum;
    r->params = xmalloc_floats(r->n);
    fill_normal(r->params, r->n, 11, 0.5f);
    r->grads = xmalloc_floats(r->n);
}

static void rig_free(Rig *r) {
    microstats_free(&r->ms);
    optim_free(&r->opt);
    model_layout_free(&r->L);
    json_config_free(r->c);
    free(r->params);
    free(r->grads);
}

static float **new_grads(size_t n, int m, uint64_t seed, float std) {
    float **g = (float **)xmalloc((size_t)m * sizeof(float *));
    for (int j = 0; j < m; j++) {
        g[j] = xmalloc_floats(n);
        fill_normal(g[j], n, seed * 101 + (uint64_t)j, std);
    }
    return g;
}

static void free_grads(float **g, int m) {
    for (int j = 0; j < m; j++) free(g[j]);
    free(g);
}

// A pass as the trainer runs it: the plan's order and roles, each backward adding
// scale * g_j where microstats_target says, then the fold.
static void rig_pass(Rig *r, int pass, float *const *g, const StepInfo *info) {
    MicroStats *ms = &r->ms;
    int order[64], role[64];
    const int count = microstats_schedule(&ms->plan, pass, order, role);
    const float gs = 1.0f / (float)r->accum;
    microstats_begin(ms, pass, info);
    for (int k = 0; k < count; k++) {
        float scale;
        float *t = microstats_target(ms, role[k], r->grads, gs, &scale);
        for (size_t i = 0; i < r->n; i++) t[i] += scale * g[order[k]][i];
        microstats_fold(ms, &r->opt, r->grads, pass, role[k], gs);
    }
    microstats_end(ms, &r->opt, r->grads, pass, gs);
}

static StepInfo info_at(long step) {
    StepInfo s = {step, 100, 0.0f, 1.0f, 768.0};
    return s;
}

// One optimizer step on micro-batch gradients g[0..accum), the main gradient clipped by c.
static void rig_step(Rig *r, float *const *g, float c, long step) {
    const StepInfo info = info_at(step);
    memset(r->grads, 0, r->n * sizeof(float));
    if (r->ms.plan.main) {
        rig_pass(r, MS_PASS_MAIN, g, &info);
    } else {
        for (int j = 0; j < r->accum; j++)
            for (size_t i = 0; i < r->n; i++) r->grads[i] += (1.0f / (float)r->accum) * g[j][i];
    }
    if (c != 1.0f) {
        for (size_t i = 0; i < r->n; i++) r->grads[i] *= c;
        microstats_scale(&r->ms, c);
    }
    if (r->ms.plan.loo) rig_pass(r, MS_PASS_LOO, g, &info);
    optim_step_cpu(&r->opt, &r->ms, r->params, r->grads, &info);
}

// The curvature hook on sampled-label micro-batch gradients gh[0..accum).
static void rig_curvature(Rig *r, float *const *gh, long step) {
    const StepInfo info = info_at(step);
    memset(r->grads, 0, r->n * sizeof(float));
    if (r->ms.plan.curvature) {
        rig_pass(r, MS_PASS_CURVATURE, gh, &info);
        optim_curvature_cpu(&r->opt, &r->ms, r->grads, &info);
    } else {
        for (int j = 0; j < r->accum; j++)
            for (size_t i = 0; i < r->n; i++) r->grads[i] += (1.0f / (float)r->accum) * gh[j][i];
        optim_curvature_cpu(&r->opt, NULL, r->grads, &info);
    }
}

static int in_a(int split, int j, int m) { return split == CF_SPLIT_HALVES ? j < m / 2 : j % 2 == 0; }

// ---------------------------------------------------------------------------------------
// The delta-method term.

// x_hat = mean of k Exp(1) draws: Gamma(k, 1/k), mean 1, variance 1/k, and E[x_hat^-e] =
// k^e Gamma(k - e) / Gamma(k) exactly. The plain estimator x_hat^-e is biased upwards by
// about e (e + 1) / 2 Var; the corrected one (known Var, the correction evaluated at x_hat as
// the optimizers do) must be much closer to f(E x_hat) = 1: what is left is O(Var^2).
TEST(crossfit_delta_method_reduces_inverse_power_bias) {
    enum { K = 64, N = 200000 };
    const double var = 1.0 / K, es[] = {0.5, 0.25, 1.0};
    for (int ei = 0; ei < 3; ei++) {
        const double e = es[ei];
        Rng r;
        rng_seed(&r, 1234 + (uint64_t)ei);
        double sp = 0, sp2 = 0, sc = 0, sc2 = 0;
        for (int s = 0; s < N; s++) {
            double x = 0;
            for (int k = 0; k < K; k++) x -= log(1.0 - rng_uniform_double(&r));
            x /= K;
            const double plain = pow(x, -e);
            const double corr = e == 1.0 ? (double)cf_corrected_inverse((float)x, (float)var) : cf_delta_inverse_power(x, e, var);
            sp += plain, sp2 += plain * plain, sc += corr, sc2 += corr * corr;
        }
        const double mp = sp / N, mc = sc / N;
        const double se_p = sqrt((sp2 / N - mp * mp) / N), se_c = sqrt((sc2 / N - mc * mc) / N);
        const double exact = exp(e * log((double)K) + lgamma(K - e) - lgamma(K));
        // The sampler is right: the plain mean matches the exact expectation.
        CHECKF(fabs(mp - exact) < 5 * se_p, "e %g: plain mean %.6f vs exact %.6f (se %.2g)", e, mp, exact, se_p);
        // The plain bias is the delta-method term to leading order.
        const double predicted = 0.5 * e * (e + 1) * var;
        CHECKF(fabs((mp - 1) / predicted - 1) < 0.3, "e %g: plain bias %.5f vs delta-method %.5f", e, mp - 1, predicted);
        // The corrected estimator is closer to f(E x) = 1 by far more than the noise.
        CHECKF(fabs(mc - 1) + 10 * se_c < fabs(mp - 1) - 10 * se_p,
               "e %g: corrected bias %.5f (se %.2g) is not clearly below the plain bias %.5f (se %.2g)", e, mc - 1, se_c,
               mp - 1, se_p);
        CHECKF(fabs(mc - 1) < 0.25 * fabs(mp - 1), "e %g: corrected bias %.5f vs plain %.5f", e, mc - 1, mp - 1);
    }
}

// ---------------------------------------------------------------------------------------
// correction "none" and cross-fitting with identical groups against the plain optimizers.

static const char *const opt_tail[][2] = {
    {"adamw", "\"name\": \"adamw\", \"weight_decay\": 0.1"},
    {"sophia", "\"name\": \"sophia\", \"hessian_interval\": 2"},
    {"shampoo", "\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"name\": \"shampoo\", "
                "\"precondition_frequency\": 2%s}, {\"params\": [\"embeddings\", \"norms\", \"biases\"]}]"},
};

// The optimizer section of optimizer `which` with `extra` (", \"key\": value" or "") added to
// the corrected group.
static void opt_json(char *out, size_t size, int which, const char *extra) {
    if (which == 2) {
        char tail[512];
        snprintf(tail, sizeof tail, opt_tail[2][1], extra);
        snprintf(out, size, "{%s}", tail);
    } else {
        snprintf(out, size, "{%s%s}", opt_tail[which][1], extra);
    }
}

TEST(crossfit_none_is_bit_identical_to_absent) {
    for (int which = 0; which < 3; which++) {
        double loss[2][7], val[2][7];
        for (int v = 0; v < 2; v++) {
            char opt[1024], out[600];
            opt_json(opt, sizeof opt, which, v ? ", \"correction\": \"none\"" : "");
            RunConfig rc;
            tiny_config(&rc, "gpt2", 6, 0, opt);
            if (v) {  // no statistics are planned for "none"
                Backend *b = cpu_backend_create(&rc);
                CHECKF(b->stats_plan == NULL && b->stats_micro == NULL, "%s: statistics planned for none", opt_tail[which][0]);
                cpu_backend_free(b);
            }
            snprintf(out, sizeof out, "%s/none_%s_%d", test_tmpdir(), opt_tail[which][0], v);
            run_training(&rc, out, NULL);
            run_config_free(&rc);
            read_losses(out, loss[v], 6);
            char path[700];
            snprintf(path, sizeof path, "%s/log.jsonl", out);
            char *text = read_file(path, NULL);
            for (int s = 0; s <= 6; s++) val[v][s] = NAN;
            for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
                cJSON *rec = cJSON_Parse(line);
                const cJSON *st = cJSON_GetObjectItem(rec, "step"), *vl = cJSON_GetObjectItem(rec, "val_loss");
                if (cJSON_IsNumber(vl) && st->valueint <= 6) val[v][st->valueint] = vl->valuedouble;
                cJSON_Delete(rec);
            }
            free(text);
        }
        for (int s = 1; s <= 6; s++)
            CHECKF(loss[0][s] == loss[1][s] && !isnan(loss[0][s]), "%s step %d: %.9g (absent) vs %.9g (none)",
                   opt_tail[which][0], s, loss[0][s], loss[1][s]);
        CHECKF(val[0][6] == val[1][6] && !isnan(val[0][6]), "%s: val %.9g vs %.9g", opt_tail[which][0], val[0][6], val[1][6]);
    }
}

// Two micro-batches, one in A and one in B, with the same gradient: cross-fitting feeds the
// numerator and the preconditioner exactly what the plain optimizer gets. AdamW: the same
// bits. Sophia (curvature_scale micro) and Shampoo: to float rounding, because the plain
// rules square inside another product ((1 - beta2) g g, or the BLAS Gram's alpha) and the
// statistics square first.
TEST(crossfit_identical_groups_reduce_to_plain) {
    const char *const corrected[3] = {
        "{\"name\": \"adamw\", \"weight_decay\": 0.1, \"correction\": \"crossfit\"}",
        "{\"name\": \"sophia\", \"hessian_interval\": 2, \"correction\": \"crossfit\", \"curvature_scale\": \"micro\", "
        "\"rho\": 0.5}",
        "{\"name\": \"adamw\", \"groups\": [{\"params\": [\"q\", \"k\", \"v\", \"o\"], \"name\": \"shampoo\", "
        "\"precondition_frequency\": 2, \"correction\": \"crossfit\"}, {\"params\": [\"embeddings\", \"norms\", \"biases\", "
        "\"mlp_in\", \"mlp_out\"]}]}",
    };
    const char *const plain[3] = {
        "{\"name\": \"adamw\", \"weight_decay\": 0.1}",
        "{\"name\": \"sophia\", \"hessian_interval\": 2, \"rho\": 0.5}",
        "{\"name\": \"adamw\", \"groups\": [{\"params\": [\"q\", \"k\", \"v\", \"o\"], \"name\": \"shampoo\", "
        "\"precondition_frequency\": 2}, {\"params\": [\"embeddings\", \"norms\", \"biases\", \"mlp_in\", \"mlp_out\"]}]}",
    };
    for (int which = 0; which < 3; which++) {
        Rig a, b;
        rig_init(&a, corrected[which], 2);
        rig_init(&b, plain[which], 2);
        CHECK(a.ms.plan.active && a.ms.plan.n_a == 1 && a.ms.plan.n_b == 1 && !b.ms.plan.active);
        for (long step = 1; step <= 4; step++) {
            float **g = new_grads(a.n, 1, 500 + (uint64_t)step, 0.05f);
            float *pair[2] = {g[0], g[0]};
            rig_step(&a, pair, 1.0f, step);
            rig_step(&b, pair, 1.0f, step);
            if (optim_needs_curvature(&a.opt, step)) {
                float **gh = new_grads(a.n, 1, 900 + (uint64_t)step, 0.05f);
                float *hp[2] = {gh[0], gh[0]};
                rig_curvature(&a, hp, step);
                rig_curvature(&b, hp, step);
                free_grads(gh, 1);
            }
            free_grads(g, 1);
        }
        if (which == 0) {
            CHECKF(memcmp(a.params, b.params, a.n * sizeof(float)) == 0, "adamw: parameters differ");
            CHECKF(memcmp(a.opt.state, b.opt.state, a.opt.state_floats * sizeof(float)) == 0, "adamw: state differs");
        } else {
            CHECK_REL(a.params, b.params, a.n, 1e-6);
            CHECK_REL(a.opt.state, b.opt.state, a.opt.state_floats, 1e-5);
        }
        // ... and the update was not zero.
        Rig fresh;
        rig_init(&fresh, plain[which], 2);
        CHECKF(rel_error(a.params, fresh.params, a.n) > 1e-4, "%s: the parameters did not move", opt_tail[which][0]);
        rig_free(&fresh);
        rig_free(&a);
        rig_free(&b);
    }
}

// ---------------------------------------------------------------------------------------
// AdamW against a direct double-precision implementation of docs/crossfit.md.

typedef struct {
    double *m, *v, *p;
} DState;

static DState dstate_new(const float *params, size_t n) {
    DState d = {(double *)xcalloc(n, sizeof(double)), (double *)xcalloc(n, sizeof(double)), (double *)xmalloc(n * sizeof(double))};
    for (size_t i = 0; i < n; i++) d.p[i] = params[i];
    return d;
}

static void dstate_free(DState *d) {
    free(d->m);
    free(d->v);
    free(d->p);
}

// Var(g_j^2) over the micro-batches in `set` (x = c g), Gaussian or empirical.
static double direct_var_sq(const double *x, const int *set, int m, int empirical) {
    double n = 0, s1 = 0, s2 = 0, s4 = 0;
    for (int j = 0; j < m; j++)
        if (set[j]) n++, s1 += x[j], s2 += x[j] * x[j], s4 += x[j] * x[j] * x[j] * x[j];
    if (empirical) {
        const double mean = s2 / n;
        double ss = 0;
        for (int j = 0; j < m; j++)
            if (set[j]) ss += (x[j] * x[j] - mean) * (x[j] * x[j] - mean);
        return ss / (n - 1);
    }
    const double mu = s1 / n, s2v = fmax(n / (n - 1) * (s2 / n - mu * mu), 0.0);
    return 2 * s2v * s2v + 4 * mu * mu * s2v;
}

// One AdamW step (beta1 .9, beta2 .95, eps 1e-8, wd .1, lr 1e-2, bias correction) with a
// correction, on micro-batch gradients g (clipped by c), for every element.
static void direct_adamw(DState *d, float *const *g, int m, double c, long t, int correction, int split, int empirical,
                         size_t n) {
    const double b1 = 0.9, b2 = 0.95, eps = 1e-8, lr = 1e-2, wd = 0.1;
    const double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    const int cross = cf_crossfits(correction), variance = cf_corrects_variance(correction), loo = split == CF_SPLIT_LOO;
    int A[64], B[64], all[64];
    for (int j = 0; j < m; j++) A[j] = !loo && in_a(split, j, m), B[j] = !A[j], all[j] = 1;
    double x[64];
    for (size_t i = 0; i < n; i++) {
        double na = 0, nb = 0, sa = 0, sb2 = 0, sall = 0, sall2 = 0;
        for (int j = 0; j < m; j++) {
            x[j] = c * g[j][i];
            sall += x[j], sall2 += x[j] * x[j];
            if (A[j]) na++, sa += x[j];
            else nb++, sb2 += x[j] * x[j];
        }
        const double gbar = sall / m, v_prev = d->v[i];
        const int *V = (cross && !loo) ? B : all;
        const double nv = (cross && !loo) ? nb : m, xbar = (cross && !loo) ? sb2 / nb : sall2 / m;
        double var_p = 0;
        if (variance) {
            const double w = (b2 * v_prev + (1 - b2) * xbar) / bc2;
            var_p = (1 - b2) * (1 - b2) / (bc2 * bc2) * direct_var_sq(x, V, m, empirical) / (4 * w * nv);
        }
        double u;
        if (loo) {
            double u1 = 0, u3 = 0;
            for (int r = 0; r < m; r++) {
                const double s_minus = (sall2 - x[r] * x[r]) / (m - 1);
                const double mh = (b1 * d->m[i] + (1 - b1) * x[r]) / bc1;
                const double D = sqrt((b2 * v_prev + (1 - b2) * s_minus) / bc2) + eps;
                u1 += mh / D / m, u3 += mh / (D * D * D) / m;
            }
            u = u1;
            if (variance) {
                u = u1 - var_p * u3;
                if (!(u * u1 > 0)) u = 0;
            }
            d->m[i] = b1 * d->m[i] + (1 - b1) * gbar;
            d->v[i] = b2 * v_prev + (1 - b2) * xbar;
        } else {
            const double gm = cross ? sa / na : gbar, xin = cross ? sb2 / nb : gbar * gbar;
            d->m[i] = b1 * d->m[i] + (1 - b1) * gm;
            d->v[i] = b2 * v_prev + (1 - b2) * xin;
            const double D = sqrt(d->v[i] / bc2) + eps;
            u = d->m[i] / bc1 * fmax(1 / D - var_p / (D * D * D), 0.0);
        }
        d->p[i] = (1 - lr * wd) * d->p[i] - lr * u;
    }
}

static void check_adamw_direct(const char *mode, int correction, int split, int empirical, int m, float c) {
    static const char *const cnames[] = {"none", "crossfit", "variance", "full"};
    static const char *const snames[] = {"alternating", "halves", "ranks", "leave_one_out"};
    char json[512];
    snprintf(json, sizeof json,
             "{\"name\": \"adamw\", \"beta2\": 0.95, \"weight_decay\": 0.1, \"groups\": [{\"params\": \"all\", \"lr\": 0.01, "
             "\"correction\": \"%s\", \"crossfit_split\": \"%s\", \"variance_moments\": \"%s\"}]}",
             cnames[correction], snames[split], empirical ? "empirical" : "gaussian");
    Rig r;
    rig_init(&r, json, m);
    DState d = dstate_new(r.params, r.n);
    for (long t = 1; t <= 3; t++) {
        float **g = new_grads(r.n, m, 40 + (uint64_t)t, 0.02f);
        for (int j = 0; j < m; j++) g[j][1] = 0.0f;  // an element without gradient: m = v = 0, no update
        rig_step(&r, g, c, t);
        direct_adamw(&d, g, m, c, t, correction, split, empirical, r.n);
        free_grads(g, m);
    }
    float *p = xmalloc_floats(r.n), *mm = xmalloc_floats(r.n), *vv = xmalloc_floats(r.n);
    for (size_t i = 0; i < r.n; i++) p[i] = (float)d.p[i];
    // The state is slot-major per tensor: gather m and v in parameter order.
    for (int ti = 0; ti < r.opt.n_tensors; ti++) {
        const ParamTensor *t = &r.opt.tensors[ti];
        const float *s = r.opt.state + r.opt.state_offset[ti];
        for (size_t i = 0; i < t->numel; i++) mm[t->offset + i] = s[i], vv[t->offset + i] = s[t->numel + i];
    }
    double *dm = d.m, *dv = d.v;
    float *fm = xmalloc_floats(r.n), *fv = xmalloc_floats(r.n);
    for (size_t i = 0; i < r.n; i++) fm[i] = (float)dm[i], fv[i] = (float)dv[i];
    const double ep = rel_error(r.params, p, r.n), em = rel_error(mm, fm, r.n), ev = rel_error(vv, fv, r.n);
    CHECKF(ep < 1e-5 && em < 1e-5 && ev < 1e-5, "adamw %s: relative errors params %.3g, m %.3g, v %.3g", mode, ep, em, ev);
    free(p), free(mm), free(vv), free(fm), free(fv);
    dstate_free(&d);
    rig_free(&r);
}

TEST(crossfit_adamw_matches_direct_loop) {
    check_adamw_direct("crossfit alternating", CORRECTION_CROSSFIT, CF_SPLIT_ALTERNATING, 0, 4, 0.7f);
    check_adamw_direct("crossfit halves odd", CORRECTION_CROSSFIT, CF_SPLIT_HALVES, 0, 5, 1.0f);
    check_adamw_direct("variance gaussian", CORRECTION_VARIANCE, CF_SPLIT_ALTERNATING, 0, 4, 0.6f);
    check_adamw_direct("variance empirical", CORRECTION_VARIANCE, CF_SPLIT_ALTERNATING, 1, 3, 1.0f);
    check_adamw_direct("full gaussian", CORRECTION_FULL, CF_SPLIT_ALTERNATING, 0, 4, 0.6f);
    check_adamw_direct("full empirical halves", CORRECTION_FULL, CF_SPLIT_HALVES, 1, 6, 0.8f);
}

TEST(crossfit_leave_one_out_matches_direct_loop) {
    check_adamw_direct("leave-one-out crossfit", CORRECTION_CROSSFIT, CF_SPLIT_LOO, 0, 4, 0.6f);
    check_adamw_direct("leave-one-out full gaussian", CORRECTION_FULL, CF_SPLIT_LOO, 0, 4, 0.6f);
    check_adamw_direct("leave-one-out full empirical", CORRECTION_FULL, CF_SPLIT_LOO, 1, 3, 1.0f);
}

// ---------------------------------------------------------------------------------------
// Sophia against a direct loop: the momentum from A, h from B's per-micro-batch estimates,
// W, and the corrected inverse in the next steps.

static void check_sophia_direct(const char *mode, int correction, int empirical, int scale_step) {
    static const char *const cnames[] = {"none", "crossfit", "variance", "full"};
    enum { M = 4 };
    char json[512];
    snprintf(json, sizeof json,
             "{\"name\": \"sophia\", \"groups\": [{\"params\": \"all\", \"lr\": 0.01, \"rho\": 0.002, \"beta2\": 0.9, "
             "\"weight_decay\": 0.1, \"hessian_interval\": 1, \"correction\": \"%s\", \"variance_moments\": \"%s\", "
             "\"curvature_scale\": \"%s\"}]}",
             cnames[correction], empirical ? "empirical" : "gaussian", scale_step ? "step" : "micro");
    Rig r;
    rig_init(&r, json, M);
    const size_t n = r.n;
    const double b1 = 0.965, b2 = 0.9, rho_bs = 0.002 * 768.0, eps = 1e-15, lr = 0.01, wd = 0.1, c = 0.7;
    const double kappa = scale_step ? 1.0 / M : 1.0;
    const int cross = cf_crossfits(correction), variance = cf_corrects_variance(correction);
    double *m = (double *)xcalloc(n, sizeof(double)), *h = (double *)xcalloc(n, sizeof(double));
    double *W = (double *)xcalloc(n, sizeof(double)), *p = (double *)xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) p[i] = r.params[i];
    int clipped = 0, unclipped = 0;
    for (long t = 1; t <= 3; t++) {
        float **g = new_grads(n, M, 60 + (uint64_t)t, 0.02f), **gh = new_grads(n, M, 70 + (uint64_t)t, 0.02f);
        rig_step(&r, g, (float)c, t);
        rig_curvature(&r, gh, t);
        for (size_t i = 0; i < n; i++) {
            double sa = 0, sall = 0;
            for (int j = 0; j < M; j++) {
                sall += c * g[j][i];
                if (j % 2 == 0) sa += c * g[j][i];
            }
            const double gm = cross ? sa / (M / 2) : sall / M;
            m[i] = b1 * m[i] + (1 - b1) * gm;
            const double P = rho_bs * h[i] + eps, var_p = rho_bs * rho_bs * W[i];
            const double raw = fabs(m[i]) * (variance && var_p > 0 ? fmax(1 / P - var_p / (P * P * P), 0.0) : 1 / P);
            clipped += raw > 1, unclipped += raw < 1;
            p[i] = (1 - lr * wd) * p[i] - lr * (m[i] > 0 ? 1 : m[i] < 0 ? -1 : 0) * fmin(raw, 1.0);
            // The curvature update after the step.
            double x[M], ghall = 0;
            int set[M];
            for (int j = 0; j < M; j++) {
                x[j] = gh[j][i];
                ghall += x[j] / M;
                set[j] = cross ? j % 2 == 1 : 1;
            }
            double nv = 0, xbar = 0;
            for (int j = 0; j < M; j++)
                if (set[j]) nv++, xbar += x[j] * x[j];
            xbar /= nv;
            h[i] = b2 * h[i] + (1 - b2) * (cross ? kappa * xbar : ghall * ghall);
            if (variance) {
                double var_x;
                if (empirical) var_x = direct_var_sq(x, set, M, 1);
                else var_x = 2 * xbar * xbar * nv / (nv + 2);
                W[i] = (1 - b2) * (1 - b2) * kappa * kappa * var_x / nv;
            }
        }
        free_grads(g, M);
        free_grads(gh, M);
    }
    float *fp = xmalloc_floats(n), *fh = xmalloc_floats(n), *gotten_h = xmalloc_floats(n);
    for (size_t i = 0; i < n; i++) fp[i] = (float)p[i], fh[i] = (float)h[i];
    for (int ti = 0; ti < r.opt.n_tensors; ti++) {
        const ParamTensor *t = &r.opt.tensors[ti];
        memcpy(gotten_h + t->offset, r.opt.state + r.opt.state_offset[ti] + t->numel, t->numel * sizeof(float));
    }
    const double ep = rel_error(r.params, fp, n), eh = rel_error(gotten_h, fh, n);
    CHECKF(ep < 1e-5 && eh < 1e-5, "sophia %s: relative errors params %.3g, h %.3g", mode, ep, eh);
    CHECKF(clipped > 10 && unclipped > 10, "sophia %s: both branches exercised (%d clipped, %d not)", mode, clipped, unclipped);
    free(fp), free(fh), free(gotten_h), free(m), free(h), free(W), free(p);
    rig_free(&r);
}

TEST(crossfit_sophia_matches_direct_loop) {
    check_sophia_direct("crossfit", CORRECTION_CROSSFIT, 0, 1);
    check_sophia_direct("variance gaussian", CORRECTION_VARIANCE, 0, 1);
    check_sophia_direct("full empirical", CORRECTION_FULL, 1, 1);
    check_sophia_direct("full gaussian micro", CORRECTION_FULL, 0, 0);
}

// ---------------------------------------------------------------------------------------
// Shampoo against a direct loop on one 8 x 8 block: M from A, L and R from B's Grams, the
// corrected inverse fourth roots with Var_k projected on the previous basis.

static void jacobi_eigh(int n, const double *A, double *w, double *V) {
    double *a = (double *)xmalloc((size_t)n * n * sizeof(double));
    memcpy(a, A, (size_t)n * n * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) V[i * n + j] = i == j;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) off += a[i * n + j] * a[i * n + j];
        if (off < 1e-40) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                if (fabs(a[p * n + q]) < 1e-300) continue;
                const double theta = (a[q * n + q] - a[p * n + p]) / (2 * a[p * n + q]);
                const double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                const double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < n; k++) {
                    const double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = cs * akp - sn * akq, a[k * n + q] = sn * akp + cs * akq;
                }
                for (int k = 0; k < n; k++) {
                    const double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = cs * apk - sn * aqk, a[q * n + k] = sn * apk + cs * aqk;
                }
                for (int k = 0; k < n; k++) {
                    const double vkp = V[k * n + p], vkq = V[k * n + q];
                    V[k * n + p] = cs * vkp - sn * vkq, V[k * n + q] = sn * vkp + cs * vkq;
                }
            }
    }
    for (int i = 0; i < n; i++) w[i] = a[i * n + i];
    free(a);
}

enum { SN = 8 };

// The corrected root of F/bc2 + shift: var_old along the columns of Q (updated to the new basis).
static void direct_root(const double *F, double bc2, double eps, const double *var_old, double *Q, double *root) {
    double B[SN * SN], w[SN], V[SN * SN];
    for (int i = 0; i < SN * SN; i++) B[i] = F[i] / bc2;
    jacobi_eigh(SN, B, w, V);
    double wmin = w[0];
    for (int i = 1; i < SN; i++) wmin = fmin(wmin, w[i]);
    const double shift = -fmin(wmin, 0.0) + eps;
    double d[SN];
    for (int k = 0; k < SN; k++) {
        double var = 0;
        for (int i = 0; i < SN; i++) {
            double o = 0;
            for (int a = 0; a < SN; a++) o += Q[a * SN + i] * V[a * SN + k];
            var += o * o * var_old[i];
        }
        const double lam = w[k] + shift;
        d[k] = fmax(pow(lam, -0.25) - 5.0 / 32.0 * pow(lam, -2.25) * var, 0.0);
    }
    for (int i = 0; i < SN; i++)
        for (int j = 0; j < SN; j++) {
            double s = 0;
            for (int k = 0; k < SN; k++) s += V[i * SN + k] * d[k] * V[j * SN + k];
            root[i * SN + j] = s;
        }
    memcpy(Q, V, sizeof V);
}

// The direct loop on tensor TI's block over `steps` steps of micro-batch gradients seeded
// 80 + step; with_var = 0 drops the variance term (to show that it matters). Returns the
// final weights in W.
enum { SHAMPOO_M = 4 };
static void direct_shampoo(const float *w0, size_t offset, size_t n, int steps, int with_var, double *W) {
    enum { M = SHAMPOO_M };
    const double b1 = 0.9, b2 = 0.9, eps = 1e-6, lr = 0.01, wd = 0.1, c = 0.8;
    double Mm[SN * SN] = {0}, L[SN * SN] = {0}, R[SN * SN] = {0}, Li[SN * SN], Ri[SN * SN], QL[SN * SN], QR[SN * SN];
    for (int i = 0; i < SN * SN; i++) Li[i] = Ri[i] = QL[i] = QR[i] = (i % (SN + 1)) == 0, W[i] = w0[i];
    for (long step = 1; step <= steps; step++) {
        float **g = new_grads(n, M, 80 + (uint64_t)step, 0.05f);
        const double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        double G[M][SN * SN];
        for (int j = 0; j < M; j++)
            for (int i = 0; i < SN * SN; i++) G[j][i] = c * g[j][offset + i];
        // M from A (even j); L, R from B (odd j), as means of the Grams.
        for (int i = 0; i < SN * SN; i++) Mm[i] = b1 * Mm[i] + (1 - b1) * (G[0][i] + G[2][i]) / 2;
        const int due = step % 2 == 0;
        double varL[SN] = {0}, varR[SN] = {0};
        if (due && with_var) {  // the spread over B of the projected diagonals on the previous bases
            double dl[2][SN], dr[2][SN];
            for (int jb = 0; jb < 2; jb++) {
                const double *Gj = G[2 * jb + 1];
                for (int k = 0; k < SN; k++) {
                    double sl = 0, sr = 0;
                    for (int b = 0; b < SN; b++) {
                        double tl = 0, tr = 0;
                        for (int a = 0; a < SN; a++) tl += QL[a * SN + k] * Gj[a * SN + b], tr += Gj[b * SN + a] * QR[a * SN + k];
                        sl += tl * tl, sr += tr * tr;
                    }
                    dl[jb][k] = sl, dr[jb][k] = sr;
                }
            }
            // Sample variance over the 2 B micro-batches (n - 1 = 1), over 2 for the mean's.
            const double scale = (1 - b2) / bc2 * (1 - b2) / bc2;
            for (int k = 0; k < SN; k++) {
                const double ml = (dl[0][k] + dl[1][k]) / 2, mr = (dr[0][k] + dr[1][k]) / 2;
                varL[k] = scale * ((dl[0][k] - ml) * (dl[0][k] - ml) + (dl[1][k] - ml) * (dl[1][k] - ml)) / 2;
                varR[k] = scale * ((dr[0][k] - mr) * (dr[0][k] - mr) + (dr[1][k] - mr) * (dr[1][k] - mr)) / 2;
            }
        }
        for (int a = 0; a < SN; a++)
            for (int b = 0; b < SN; b++) {
                double gl = 0, gr = 0;
                for (int jb = 1; jb < M; jb += 2)
                    for (int k = 0; k < SN; k++)
                        gl += G[jb][a * SN + k] * G[jb][b * SN + k], gr += G[jb][k * SN + a] * G[jb][k * SN + b];
                L[a * SN + b] = b2 * L[a * SN + b] + (1 - b2) * gl / 2;
                R[a * SN + b] = b2 * R[a * SN + b] + (1 - b2) * gr / 2;
            }
        if (due) {
            direct_root(L, bc2, eps, varL, QL, Li);
            direct_root(R, bc2, eps, varR, QR, Ri);
        }
        double T[SN * SN], P[SN * SN];
        for (int a = 0; a < SN; a++)
            for (int b = 0; b < SN; b++) {
                double s = 0;
                for (int k = 0; k < SN; k++) s += Li[a * SN + k] * Mm[k * SN + b] / bc1;
                T[a * SN + b] = s;
            }
        for (int a = 0; a < SN; a++)
            for (int b = 0; b < SN; b++) {
                double s = 0;
                for (int k = 0; k < SN; k++) s += T[a * SN + k] * Ri[k * SN + b];
                P[a * SN + b] = s;
            }
        for (int i = 0; i < SN * SN; i++) W[i] = (1 - lr * wd) * W[i] - lr * P[i];
        free_grads(g, M);
    }
}

TEST(crossfit_shampoo_matches_direct_loop) {
    enum { TI = 4, STEPS = 4 };  // tensor 4: h.0.attn.q, 8 x 8; roots at steps 2 and 4
    Rig r;
    rig_init(&r,
             "{\"name\": \"adamw\", \"groups\": [{\"params\": [\"q\"], \"name\": \"shampoo\", \"lr\": 0.01, \"beta2\": 0.9, "
             "\"epsilon\": 1e-6, \"weight_decay\": 0.1, \"grafting\": \"none\", \"precondition_frequency\": 2, "
             "\"correction\": \"full\"}, {\"params\": [\"embeddings\", \"norms\", \"biases\", \"k\", \"v\", \"o\", \"mlp_in\", "
             "\"mlp_out\"]}]}",
             SHAMPOO_M);
    const ParamTensor *t = &r.opt.tensors[TI];
    CHECK(t->rows == SN && t->cols == SN && strcmp(r.opt.groups[r.opt.group_of[TI]].def->name, "shampoo") == 0);
    float w0[SN * SN];
    memcpy(w0, r.params + t->offset, sizeof w0);
    for (long step = 1; step <= STEPS; step++) {
        float **g = new_grads(r.n, SHAMPOO_M, 80 + (uint64_t)step, 0.05f);
        rig_step(&r, g, 0.8f, step);
        free_grads(g, SHAMPOO_M);
    }
    // Compare the updates (W - W0), with and without the variance term.
    double Wc[SN * SN], Wp[SN * SN];
    direct_shampoo(w0, t->offset, r.n, STEPS, 1, Wc);
    direct_shampoo(w0, t->offset, r.n, STEPS, 0, Wp);
    float got[SN * SN], want[SN * SN], plain[SN * SN];
    for (int i = 0; i < SN * SN; i++)
        got[i] = r.params[t->offset + i] - w0[i], want[i] = (float)(Wc[i] - w0[i]), plain[i] = (float)(Wp[i] - w0[i]);
    const double err = rel_error(got, want, SN * SN), effect = rel_error(plain, want, SN * SN);
    CHECKF(err < 1e-3, "shampoo full: update relative error %.3g", err);
    CHECKF(effect > 20 * err && effect > 1e-2, "the variance term changed the update by only %.3g (error %.3g)", effect, err);
    rig_free(&r);
}

// ---------------------------------------------------------------------------------------
// Through the CPU backend: after a statistics pass the gradients are the usual mean, S is
// A's sum and Q2 the sum of B's squares, each against micro-batches run one at a time.

TEST(crossfit_backend_statistics_and_mean_gradient) {
    enum { M = 4 };
    RunConfig rc;
    tiny_config(&rc, "gpt2", 2, 0, "{\"name\": \"adamw\", \"correction\": \"full\"}");
    rc.train.grad_accum = M;
    Backend *b = cpu_backend_create(&rc);
    const MicroStats *ms = cpu_backend_stats(b);
    const size_t n = b->layout->num_params;
    CHECK(b->stats_plan && b->stats_plan->main && b->stats_plan->n_a == 2 && b->stats_plan->n_b == 2);
    const int B = rc.train.batch_size, T = rc.train.seq_len;
    int *in = (int *)xmalloc((size_t)M * B * T * sizeof(int)), *tg = (int *)xmalloc((size_t)M * B * T * sizeof(int));
    Rng rr;
    rng_seed(&rr, 3);
    for (int i = 0; i < M * B * T; i++) in[i] = (int)rng_below(&rr, 13), tg[i] = (int)rng_below(&rr, 13);
    GPTCpu *model = cpu_backend_model(b);
    float *gj[M], *mean = xmalloc_floats(n), *sa = xmalloc_floats(n), *qb = xmalloc_floats(n);
    memset(mean, 0, n * sizeof(float));
    memset(sa, 0, n * sizeof(float));
    memset(qb, 0, n * sizeof(float));
    Rng unused;
    rng_seed(&unused, 1);
    for (int j = 0; j < M; j++) {
        b->zero_grad(b);
        b->train_micro(b, in + j * B * T, tg + j * B * T, B, T, 1.0f, &unused);
        b->sync_grads(b);
        gj[j] = xmalloc_floats(n);
        memcpy(gj[j], model->grads, n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            mean[i] += gj[j][i] / M;
            if (j % 2 == 0) sa[i] += gj[j][i];
            else qb[i] += gj[j][i] * gj[j][i];
        }
    }
    b->zero_grad(b);
    int order[M], role[M];
    const int count = microstats_schedule(b->stats_plan, MS_PASS_MAIN, order, role);
    CHECK(count == M && role[0] == MS_ROLE_B && role[1] == MS_ROLE_B && role[2] == MS_ROLE_A && order[0] == 1);
    StepInfo info = {1, 2, 0.0f, 1.0f, 96.0};
    b->stats_begin(b, MS_PASS_MAIN, &info);
    for (int k = 0; k < count; k++)
        b->stats_micro(b, in + order[k] * B * T, tg + order[k] * B * T, B, T, 1.0f / M, role[k], &unused);
    b->stats_end(b, MS_PASS_MAIN, 1.0f / M);
    b->sync_grads(b);
    CHECK_REL(model->grads, mean, n, 1e-5);
    CHECK_REL(ms->scratch, sa, n, 1e-5);
    CHECK_REL(ms->sq, qb, n, 1e-5);
    for (int j = 0; j < M; j++) free(gj[j]);
    free(mean), free(sa), free(qb), free(in), free(tg);
    cpu_backend_free(b);
    run_config_free(&rc);
}

// ---------------------------------------------------------------------------------------
// Resume: a run with corrections resumed from a checkpoint equals the unbroken run.

TEST(crossfit_resume_identical) {
    check_resume_identical("gpt2", "{\"name\": \"adamw\", \"correction\": \"crossfit\"}", "cf_adamw_crossfit");
    check_resume_identical("gpt2", "{\"name\": \"adamw\", \"correction\": \"variance\", \"variance_moments\": \"empirical\"}",
                           "cf_adamw_variance");
    check_resume_identical_accum("gpt2", "{\"name\": \"adamw\", \"correction\": \"full\"}", 4, "cf_adamw_full");
    check_resume_identical_accum("gpt2", "{\"name\": \"adamw\", \"correction\": \"full\", \"crossfit_split\": \"leave_one_out\"}", 3,
                           "cf_adamw_loo");
    check_resume_identical_accum("gpt2", "{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"name\": \"sophia\", \"rho\": 0.05, "
                           "\"hessian_interval\": 3, \"correction\": \"full\"}, {\"params\": [\"embeddings\", \"head\", "
                           "\"norms\", \"biases\"]}]}",
                           4, "cf_sophia_full");
    check_resume_identical_accum("gpt2", "{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"name\": \"shampoo\", "
                           "\"precondition_frequency\": 3, \"correction\": \"full\", \"crossfit_split\": \"halves\"}, "
                           "{\"params\": [\"embeddings\", \"head\", \"norms\", \"biases\"]}]}",
                           4, "cf_shampoo_full");
}

// ---------------------------------------------------------------------------------------
// Memory: at most 2 extra gradient-sized buffers for AdamW and Sophia with the Gaussian
// moments; the fourth moments and leave-one-out cost more, as documented.

TEST(crossfit_memory_plan) {
    static const struct {
        const char *json;
        int accum, buffers;
    } cases[] = {
        {"{\"name\": \"adamw\", \"correction\": \"crossfit\"}", 4, 2},
        {"{\"name\": \"adamw\", \"correction\": \"variance\"}", 4, 2},
        {"{\"name\": \"adamw\", \"correction\": \"full\"}", 4, 2},
        {"{\"name\": \"adamw\", \"correction\": \"full\", \"variance_moments\": \"empirical\"}", 4, 3},
        {"{\"name\": \"adamw\", \"correction\": \"full\", \"crossfit_split\": \"leave_one_out\"}", 4, 4},
        {"{\"name\": \"sophia\", \"correction\": \"crossfit\"}", 4, 2},
        {"{\"name\": \"sophia\", \"correction\": \"variance\"}", 4, 2},
        {"{\"name\": \"sophia\", \"correction\": \"full\"}", 4, 2},
        {"{\"name\": \"sophia\", \"correction\": \"full\", \"variance_moments\": \"empirical\"}", 4, 3},
        {"{\"name\": \"shampoo\", \"correction\": \"variance\", \"grafting\": \"adam\"}", 4, 1},
        {"{\"name\": \"shampoo\", \"correction\": \"full\", \"grafting\": \"adam\"}", 4, 2},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        Rig r;
        rig_init(&r, cases[k].json, cases[k].accum);
        CHECKF(r.ms.plan.active && r.ms.plan.grad_buffers == cases[k].buffers, "%s: %d gradient-sized buffers, want %d",
               cases[k].json, r.ms.plan.grad_buffers, cases[k].buffers);
        rig_free(&r);
    }
}

// ---------------------------------------------------------------------------------------
// Config errors name the key or the group and say why.

static void plan_with_accum(void *arg) {
    const char *const *a = (const char *const *)arg;
    Rig r;
    rig_init(&r, a[0], atoi(a[1]));
    rig_free(&r);
}

TEST(crossfit_config_errors) {
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"sophia\", \"correction\": \"full\", \"crossfit_split\": \"leave_one_out\"}",
                 "sophia has no leave-one-out form");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"adamw\", \"update_clip\": 1}", "optimizer.groups[0].update_clip");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"adamw\", \"support_clip\": 1}", "needs a correction");
    EXPECT_FATAL(build_tiny_optimizer,
                 (void *)"{\"name\": \"adamw\", \"correction\": \"variance\", \"crossfit_split\": \"leave_one_out\"}",
                 "cross-fit form");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"adamw\", \"correction\": \"full\", \"variant\": \"nested\"}",
                 "standard AdamW rule");
    EXPECT_FATAL(build_tiny_optimizer,
                 (void *)"{\"name\": \"shampoo\", \"correction\": \"full\", \"variant\": \"eigenvalue_corrected\"}",
                 "standard variant");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"adamw\", \"correction\": \"fully\"}", "correction");
    static const char *const ranks[] = {"{\"name\": \"adamw\", \"correction\": \"full\", \"crossfit_split\": \"ranks\"}", "4"};
    EXPECT_FATAL(plan_with_accum, (void *)ranks, "at least 2 ranks");
    static const char *const few[] = {"{\"name\": \"adamw\", \"correction\": \"full\"}", "2"};
    EXPECT_FATAL(plan_with_accum, (void *)few, "at least 2 micro-batches in group B");
    static const char *const one[] = {"{\"name\": \"adamw\", \"correction\": \"crossfit\"}", "1"};
    EXPECT_FATAL(plan_with_accum, (void *)one, "leaves group B empty");
    static const char *const mixed[] = {
        "{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"correction\": \"crossfit\"}, "
        "{\"params\": [\"embeddings\", \"norms\", \"biases\"], \"correction\": \"variance\"}]}", "4"};
    EXPECT_FATAL(plan_with_accum, (void *)mixed, "not both");
    static const char *const splits[] = {
        "{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"correction\": \"crossfit\"}, "
        "{\"params\": [\"embeddings\", \"norms\", \"biases\"], \"correction\": \"full\", \"crossfit_split\": \"halves\"}]}",
        "4"};
    EXPECT_FATAL(plan_with_accum, (void *)splits, "must agree");
}
