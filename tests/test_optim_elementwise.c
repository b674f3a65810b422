// The element-wise optimizer family (adamw and its switches, sgd, lion, adopt, ademamix)
// and adafactor, each run through its registered OptimizerDef on random tensors and held
// to a plain double-precision implementation of its published equations written here.
// Also: nested vs LaProp, group errors, checkpoint round trips, diagnostics in log.jsonl.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../optim/optimizer.h"
#include "../runtime/common.h"
#include "../runtime/run_config.h"
#include "harness.h"
#include "test_util.h"

#define F(x) ((double)(float)(x))  // a hyperparameter as the optimizer sees it (read as float)
#define LR_PEAK 1e-2
#define TOL 2e-6                   // relative error of the parameter displacement

// Per-step gradient scales: v rises and falls, so amsgrad and the clipping matter.
static const double GSCALE[] = {1.0, 0.3, 2.0, 0.1, 1.0, 0.5, 3.0, 0.2, 1.0, 0.7, 1.5, 0.4};

// ---------------------------------------------------------------------------------------
// An optimizer from JSON through its key table and check, as optim_build reads a group.

typedef struct {
    const OptimizerDef *def;
    JsonConfig *cfg;  // KEY_JSON hyperparameters point into it
    void *hyper;
} Opt;

static Opt opt_make(const char *name, const char *json) {
    Opt o;
    o.def = optimizer_find(name);
    if (!o.def) fatal("optimizer %s is not registered", name);
    char text[2048];
    snprintf(text, sizeof text, "{\"optimizer\": %s}", json);
    o.cfg = config_from_text(text);
    o.hyper = xcalloc(1, o.def->hyper_size);
    config_read_keys(o.cfg, json_config_section(o.cfg, "optimizer"), "optimizer", o.def->keys, o.hyper, NULL);
    if (o.def->check) o.def->check(o.hyper, o.cfg, "optimizer");
    return o;
}

static void opt_free(Opt *o) {
    free(o->hyper);
    json_config_free(o->cfg);
}

// ---------------------------------------------------------------------------------------
// References: one step of each optimizer's published equations, in double, on n entries.
// `state` holds the reference's own moments (zeros at the start).

typedef struct {
    long t, T;
    double lr, lr_scale;
} RefInfo;

typedef void (*RefStep)(const void *h, const RefInfo *s, double *p, const double *g, double *state, size_t n,
                        int rows, int cols);

// The cautious mask over the tensor: u <- u [u g > 0] / max(mean [u g > 0], 1e-3).
static void ref_cautious(double *u, const double *g, size_t n) {
    size_t agree = 0;
    for (size_t i = 0; i < n; i++) agree += u[i] * g[i] > 0;
    const double scale = 1.0 / fmax((double)agree / (double)n, 1e-3);
    for (size_t i = 0; i < n; i++) u[i] = u[i] * g[i] > 0 ? u[i] * scale : 0.0;
}

// --- AdamW (Loshchilov & Hutter 2019) with the ablation switches.
typedef struct {
    double beta1, beta2, eps, wd;
    int bc_m, bc_v, zero_init, eps_inside, variant, wd_mode, amsgrad, cautious;  // variant 0 std, 1 nested, 2 laprop
    int eps_type;                                                                 // wd_mode 0 decoupled, 1 l2, 2 independent
    double eps_max, w, E, kappa;                                                  // eps_type 0 constant, 1 warmup_exp, 2 log_linear
} AdamRef;

static AdamRef adam_defaults(void) {
    AdamRef h;
    memset(&h, 0, sizeof h);
    h.beta1 = F(0.9);
    h.beta2 = F(0.999);
    h.eps = F(1e-6);
    h.bc_m = h.bc_v = h.zero_init = 1;
    return h;
}

static double ref_eps(const AdamRef *h, long t, long T) {
    if (h->eps_type == 0 || t <= h->w * T) return h->eps;
    if (t >= h->E * T) return h->eps_max;
    const double x = t - h->w * T, span = (h->E - h->w) * T;
    if (h->eps_type == 2) return h->eps * pow(h->eps_max / h->eps, x / span);
    const double k = h->kappa / (T * (h->E - h->w));
    const double A = (h->eps_max - h->eps) / (exp(h->kappa) - 1.0), B = h->eps - A;
    return A * exp(k * x) + B;
}

static void adam_ref(const void *hv, const RefInfo *s, double *p, const double *g0, double *st, size_t n, int rows, int cols) {
    const AdamRef *h = (const AdamRef *)hv;
    double *m = st, *v = st + n, *vmax = st + 2 * n;
    const double eps = ref_eps(h, s->t, s->T);
    const double c1 = h->bc_m ? 1.0 - pow(h->beta1, (double)s->t) : 1.0;
    const double c2 = h->bc_v ? 1.0 - pow(h->beta2, (double)s->t) : 1.0;
    double *u = (double *)xmalloc(n * sizeof(double)), *g = (double *)xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        g[i] = g0[i] + (h->wd_mode == 1 ? h->wd * p[i] : 0.0);
        const int init = s->t == 1 && !h->zero_init;  // m0 = g1 (or its preconditioned form), v0 = g1^2
        const double v_prev = init ? g[i] * g[i] : v[i];
        v[i] = h->beta2 * v_prev + (1 - h->beta2) * g[i] * g[i];
        const double vmax_prev = init ? g[i] * g[i] : vmax[i];
        vmax[i] = fmax(vmax_prev, v[i]);
        const double vhat = (h->amsgrad ? vmax[i] : v[i]) / c2;
        const double denom = h->eps_inside ? sqrt(vhat + eps) : sqrt(vhat) + eps;
        const double x = h->variant == 0 ? g[i] : h->variant == 1 ? g[i] / denom : s->lr * g[i] / denom;
        const double m_prev = init ? x : m[i];
        m[i] = h->beta1 * m_prev + (1 - h->beta1) * x;
        u[i] = h->variant == 0 ? (m[i] / c1) / denom : m[i] / c1;
    }
    if (h->cautious) ref_cautious(u, g, n);
    const double lr_u = h->variant == 2 ? 1.0 : s->lr;
    for (size_t i = 0; i < n; i++) {
        const double decay = h->wd_mode == 0 ? s->lr * h->wd * p[i] : h->wd_mode == 2 ? s->lr_scale * h->wd * p[i] : 0.0;
        p[i] = p[i] - decay - lr_u * u[i];
    }
    free(u);
    free(g);
}

// --- SGD as torch.optim.SGD, with decoupled or L2 decay.
typedef struct {
    double mu, dampening, wd;
    int nesterov, l2, cautious;
} SgdRef;

static void sgd_ref(const void *hv, const RefInfo *s, double *p, const double *g0, double *buf, size_t n, int rows, int cols) {
    const SgdRef *h = (const SgdRef *)hv;
    double *u = (double *)xmalloc(n * sizeof(double)), *g = (double *)xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        g[i] = g0[i] + (h->l2 ? h->wd * p[i] : 0.0);
        if (h->mu == 0) {
            u[i] = g[i];
            continue;
        }
        buf[i] = s->t == 1 ? g[i] : h->mu * buf[i] + (1 - h->dampening) * g[i];
        u[i] = h->nesterov ? g[i] + h->mu * buf[i] : buf[i];
    }
    if (h->cautious) ref_cautious(u, g, n);
    for (size_t i = 0; i < n; i++) p[i] = p[i] - (h->l2 ? 0.0 : s->lr * h->wd * p[i]) - s->lr * u[i];
    free(u);
    free(g);
}

// --- Lion (Chen et al. 2023, Algorithm 2).
typedef struct {
    double beta1, beta2, wd;
    int cautious;
} LionRef;

static void lion_ref(const void *hv, const RefInfo *s, double *p, const double *g, double *m, size_t n, int rows, int cols) {
    const LionRef *h = (const LionRef *)hv;
    double *u = (double *)xmalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        const double c = h->beta1 * m[i] + (1 - h->beta1) * g[i];
        u[i] = c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0;
        m[i] = h->beta2 * m[i] + (1 - h->beta2) * g[i];
    }
    if (h->cautious) ref_cautious(u, g, n);
    for (size_t i = 0; i < n; i++) p[i] = p[i] - s->lr * (u[i] + h->wd * p[i]);
    free(u);
}

// --- ADOPT (Taniguchi et al. 2024, Algorithm 1 with the official clipping).
typedef struct {
    double beta1, beta2, eps, wd, clip_exp;
    int l2, clip;
} AdoptRef;

static void adopt_ref(const void *hv, const RefInfo *s, double *p, const double *g0, double *st, size_t n, int rows, int cols) {
    const AdoptRef *h = (const AdoptRef *)hv;
    double *m = st, *v = st + n;
    for (size_t i = 0; i < n; i++) {
        const double g = g0[i] + (h->l2 ? h->wd * p[i] : 0.0);
        if (s->t == 1) {  // v0 = g0^2; no update
            v[i] = g * g;
            continue;
        }
        double x = g / fmax(sqrt(v[i]), h->eps);
        if (h->clip) {
            const double c = pow((double)(s->t - 1), h->clip_exp);  // the official step counter: earlier calls
            x = fmin(fmax(x, -c), c);
        }
        m[i] = h->beta1 * m[i] + (1 - h->beta1) * x;
        p[i] = p[i] - (h->l2 ? 0.0 : s->lr * h->wd * p[i]) - s->lr * m[i];
        v[i] = h->beta2 * v[i] + (1 - h->beta2) * g * g;
    }
}

// --- AdEMAMix (Pagliardini et al. 2024, Algorithm 1 with both warmups).
typedef struct {
    double beta1, beta2, beta3, alpha, eps, wd;
    long t_alpha, t_beta3;  // 0: the horizon T
} AdemamixRef;

static double ref_halflife(double beta) { return log(0.5) / log(beta + 1e-8) - 1.0; }

static void ademamix_ref(const void *hv, const RefInfo *s, double *p, const double *g, double *st, size_t n, int rows, int cols) {
    const AdemamixRef *h = (const AdemamixRef *)hv;
    double *m1 = st, *m2 = st + n, *v = st + 2 * n;
    const long ta = h->t_alpha ? h->t_alpha : s->T, tb = h->t_beta3 ? h->t_beta3 : s->T;
    const double alpha = s->t < ta ? h->alpha * (double)s->t / (double)ta : h->alpha;
    double beta3 = h->beta3;
    if (s->t < tb) {
        const double a = (double)s->t / (double)tb;
        beta3 = pow(0.5, 1.0 / ((1 - a) * ref_halflife(h->beta1) + a * ref_halflife(h->beta3) + 1.0));
    }
    const double c1 = 1 - pow(h->beta1, (double)s->t), c2 = 1 - pow(h->beta2, (double)s->t);
    for (size_t i = 0; i < n; i++) {
        m1[i] = h->beta1 * m1[i] + (1 - h->beta1) * g[i];
        m2[i] = beta3 * m2[i] + (1 - beta3) * g[i];
        v[i] = h->beta2 * v[i] + (1 - h->beta2) * g[i] * g[i];
        const double u = (m1[i] / c1 + alpha * m2[i]) / (sqrt(v[i]) / sqrt(c2) + h->eps);
        p[i] = p[i] - s->lr * (u + h->wd * p[i]);
    }
}

// --- Adafactor (Shazeer & Stern 2018, Algorithms 4/5 with row and column sums, update
// clipping; momentum on lr U as in the HF/fairseq implementation).
typedef struct {
    double beta1, decay_rate, d, eps1, wd;
} AdafactorRef;

static void adafactor_ref(const void *hv, const RefInfo *s, double *p, const double *g, double *st, size_t n, int rows, int cols) {
    const AdafactorRef *h = (const AdafactorRef *)hv;
    const double b2 = 1.0 - pow((double)s->t, h->decay_rate);
    const int factored = rows > 1 && cols > 1;
    double *u = (double *)xmalloc(n * sizeof(double));
    double *m = st + (factored ? rows + cols : (int)n);
    if (factored) {
        // The paper's row and column sums: R = EMA of rowsum(G2), C = EMA of colsum(G2),
        // V = R C / sum(R).
        double *R = st, *C = st + rows;
        for (int i = 0; i < rows; i++) {
            double rs = 0;
            for (int j = 0; j < cols; j++) rs += g[i * cols + j] * g[i * cols + j] + h->eps1;
            R[i] = b2 * R[i] + (1 - b2) * rs;
        }
        for (int j = 0; j < cols; j++) {
            double cs = 0;
            for (int i = 0; i < rows; i++) cs += g[i * cols + j] * g[i * cols + j] + h->eps1;
            C[j] = b2 * C[j] + (1 - b2) * cs;
        }
        double Rsum = 0;
        for (int i = 0; i < rows; i++) Rsum += R[i];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) u[i * cols + j] = g[i * cols + j] / sqrt(R[i] * C[j] / Rsum);
    } else {
        double *V = st;
        for (size_t k = 0; k < n; k++) {
            V[k] = b2 * V[k] + (1 - b2) * (g[k] * g[k] + h->eps1);
            u[k] = g[k] / sqrt(V[k]);
        }
    }
    double ss = 0;
    for (size_t k = 0; k < n; k++) ss += u[k] * u[k];
    const double rms = sqrt(ss / (double)n), div = fmax(1.0, rms / h->d);
    for (size_t k = 0; k < n; k++) {
        double step = s->lr * u[k] / div;
        if (h->beta1 > 0) {
            m[k] = h->beta1 * m[k] + (1 - h->beta1) * step;
            step = m[k];
        }
        p[k] = p[k] - s->lr * h->wd * p[k] - step;
    }
    free(u);
}

// ---------------------------------------------------------------------------------------
// The runner: `steps` steps of the optimizer (public path) and of the reference on the
// same random parameters and gradients. After every step, the displacement of the
// parameters from their start must match the reference's. Returns the worst error.

typedef struct {
    int rows, cols;    // the tensor's shape (1 x n for vectors)
    int steps;         // steps taken
    long T;            // the horizon (train.steps)
    int decaying_lr;   // lr_scale 1 - 0.08 (t-1); else constant
    uint64_t seed;
} RunSpec;

static RefInfo ref_info(const RunSpec *r, long t) {
    RefInfo s;
    s.t = t;
    s.T = r->T;
    s.lr_scale = F(r->decaying_lr ? 1.0 - 0.08 * (double)(t - 1) : 1.0);
    s.lr = F(LR_PEAK * s.lr_scale);
    return s;
}

// Runs the optimizer alone; p (n floats) starts from `p0` and ends updated.
static void run_code(const Opt *o, const RunSpec *r, float *p, const float *p0) {
    const size_t n = (size_t)r->rows * r->cols;
    ParamTensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "test");
    t.rows = r->rows;
    t.cols = r->cols;
    t.numel = n;
    const size_t state_n = o->def->step_elements ? (size_t)o->def->slots(o->hyper) * n : o->def->tensor_state(o->hyper, &t);
    float *state = (float *)xcalloc(state_n + 1, sizeof(float));
    if (!o->def->step_elements && o->def->init_tensor_state) o->def->init_tensor_state(o->hyper, &t, state);
    float *g = (float *)xmalloc(n * sizeof(float));
    memcpy(p, p0, n * sizeof(float));
    for (int k = 1; k <= r->steps; k++) {
        const RefInfo ri = ref_info(r, k);
        const StepInfo si = {k, r->T, (float)ri.lr, (float)ri.lr_scale, 1000.0};
        fill_normal(g, n, r->seed * 1000 + (uint64_t)k, (float)GSCALE[(k - 1) % 12]);
        if (o->def->step_elements) {
            float *slots[OPTIM_MAX_SLOTS];
            optim_slot_pointers(state, n, o->def->slots(o->hyper), slots);
            o->def->step_elements(o->hyper, &si, p, g, slots, n);
        } else {
            o->def->step_tensor(o->hyper, &si, &t, p, g, state);
        }
    }
    free(g);
    free(state);
}

static double run_vs_ref(const char *name, const char *json, RefStep ref, const void *refh, const RunSpec *r) {
    const size_t n = (size_t)r->rows * r->cols;
    Opt o = opt_make(name, json);
    ParamTensor t;
    memset(&t, 0, sizeof t);
    t.rows = r->rows;
    t.cols = r->cols;
    t.numel = n;
    const size_t state_n = o.def->step_elements ? (size_t)o.def->slots(o.hyper) * n : o.def->tensor_state(o.hyper, &t);
    float *state = (float *)xcalloc(state_n + 1, sizeof(float));
    float *p = (float *)xmalloc(n * sizeof(float)), *p0 = (float *)xmalloc(n * sizeof(float));
    float *g = (float *)xmalloc(n * sizeof(float));
    double *pr = (double *)xmalloc(n * sizeof(double)), *gr = (double *)xmalloc(n * sizeof(double));
    double *dc = (double *)xmalloc(n * sizeof(double)), *dr = (double *)xmalloc(n * sizeof(double));
    double *sr = (double *)xcalloc(4 * n + 64, sizeof(double));
    // Small parameters: their float rounding (half an ulp of |p|) stays far below the
    // smallest displacement measured (ADOPT's and Adafactor's first moves are ~1e-3 lr).
    fill_normal(p0, n, r->seed, 0.01f);
    memcpy(p, p0, n * sizeof(float));
    for (size_t i = 0; i < n; i++) pr[i] = p0[i];
    double worst = 0;
    for (int k = 1; k <= r->steps; k++) {
        const RefInfo ri = ref_info(r, k);
        const StepInfo si = {k, r->T, (float)ri.lr, (float)ri.lr_scale, 1000.0};
        fill_normal(g, n, r->seed * 1000 + (uint64_t)k, (float)GSCALE[(k - 1) % 12]);
        for (size_t i = 0; i < n; i++) gr[i] = g[i];
        if (o.def->step_elements) {
            float *slots[OPTIM_MAX_SLOTS];
            optim_slot_pointers(state, n, o.def->slots(o.hyper), slots);
            o.def->step_elements(o.hyper, &si, p, g, slots, n);
        } else {
            o.def->step_tensor(o.hyper, &si, &t, p, g, state);
        }
        ref(refh, &ri, pr, gr, sr, n, r->rows, r->cols);
        for (size_t i = 0; i < n; i++) {
            dc[i] = (double)p[i] - p0[i];
            dr[i] = pr[i] - p0[i];
        }
        double e = rel_error_d(dc, dr, n);
        // ADOPT's first step moves nothing: then both displacements must be zero.
        double ref_norm = 0;
        for (size_t i = 0; i < n; i++) ref_norm += dr[i] * dr[i];
        if (ref_norm == 0) {
            double code_norm = 0;
            for (size_t i = 0; i < n; i++) code_norm += dc[i] * dc[i];
            e = code_norm == 0 ? 0 : INFINITY;
        }
        if (!(e <= TOL)) test_fail(__FILE__, __LINE__, "%s %s: step %d: relative error %.3g", name, json, k, e);
        if (!(e <= worst)) worst = e;
    }
    if (getenv("OPTIM_TEST_VERBOSE")) fprintf(stderr, "    %-10s %-100s worst %.2g\n", name, json, worst);
    free(state);
    free(p);
    free(p0);
    free(g);
    free(pr);
    free(gr);
    free(dc);
    free(dr);
    free(sr);
    opt_free(&o);
    return worst;
}

static RunSpec spec(int rows, int cols, int steps, long T, int decaying_lr, uint64_t seed) {
    RunSpec r = {rows, cols, steps, T, decaying_lr, seed};
    return r;
}

// ---------------------------------------------------------------------------------------
// AdamW

TEST(optim_adamw_bias_correction_x_zero_init) {
    for (int bc = 0; bc < 2; bc++)
        for (int zi = 0; zi < 2; zi++) {
            AdamRef h = adam_defaults();
            h.bc_m = h.bc_v = bc;
            h.zero_init = zi;
            h.wd = F(0.1);
            char json[256];
            snprintf(json, sizeof json, "{\"bias_correction\": %s, \"zero_init\": %s, \"eps\": 1e-6, \"weight_decay\": 0.1}",
                     bc ? "true" : "false", zi ? "true" : "false");
            const RunSpec r = spec(1, 257, 5, 20, 1, 11 + 2 * bc + zi);
            run_vs_ref("adamw", json, adam_ref, &h, &r);
        }
}

TEST(optim_adamw_switches) {
    const RunSpec r = spec(1, 257, 6, 20, 1, 5);
    AdamRef h = adam_defaults();
    // bias correction of one moment only, either way round.
    h.bc_m = 1, h.bc_v = 0;
    run_vs_ref("adamw", "{\"bias_correction\": false, \"bias_correction_m\": true, \"eps\": 1e-6}", adam_ref, &h, &r);
    h.bc_m = 0, h.bc_v = 1;
    run_vs_ref("adamw", "{\"bias_correction_m\": false, \"eps\": 1e-6}", adam_ref, &h, &r);
    // eps inside the square root (large enough to matter against g^2 ~ 1).
    h = adam_defaults();
    h.eps = F(1e-2), h.eps_inside = 1;
    run_vs_ref("adamw", "{\"eps\": 1e-2, \"eps_inside_sqrt\": true}", adam_ref, &h, &r);
    h.eps_inside = 0;
    run_vs_ref("adamw", "{\"eps\": 1e-2}", adam_ref, &h, &r);
    // amsgrad, with a short beta2 so that v falls and the maximum differs from it.
    h = adam_defaults();
    h.beta2 = F(0.5), h.amsgrad = 1;
    run_vs_ref("adamw", "{\"beta2\": 0.5, \"amsgrad\": true, \"eps\": 1e-6}", adam_ref, &h, &r);
    h.zero_init = 0;
    run_vs_ref("adamw", "{\"beta2\": 0.5, \"amsgrad\": true, \"zero_init\": false, \"eps\": 1e-6}", adam_ref, &h, &r);
    // The three weight-decay modes, with a decaying lr so that lr and lr_scale differ.
    const char *modes[] = {"decoupled", "l2", "independent"};
    for (int mode = 0; mode < 3; mode++) {
        h = adam_defaults();
        h.wd = F(0.5), h.wd_mode = mode;
        char json[200];
        snprintf(json, sizeof json, "{\"weight_decay\": 0.5, \"weight_decay_mode\": \"%s\", \"eps\": 1e-6}", modes[mode]);
        run_vs_ref("adamw", json, adam_ref, &h, &r);
    }
    // The nested and LaProp variants on their own (decaying lr, decay, no bias correction on v).
    for (int variant = 1; variant <= 2; variant++) {
        h = adam_defaults();
        h.variant = variant, h.wd = F(0.1), h.bc_v = 0;
        char json[200];
        snprintf(json, sizeof json, "{\"variant\": \"%s\", \"weight_decay\": 0.1, \"bias_correction_v\": false, \"eps\": 1e-6}",
                 variant == 1 ? "nested" : "laprop");
        run_vs_ref("adamw", json, adam_ref, &h, &r);
    }
}

TEST(optim_adamw_cautious) {
    // Over 4096 entries, so the OpenMP paths and their reduction run too.
    const RunSpec r = spec(1, 5003, 4, 20, 1, 6);
    AdamRef h = adam_defaults();
    h.cautious = 1, h.wd = F(0.1);
    run_vs_ref("adamw", "{\"cautious\": true, \"weight_decay\": 0.1, \"eps\": 1e-6}", adam_ref, &h, &r);
    h.wd_mode = 1;  // the mask compares with the L2-augmented gradient
    run_vs_ref("adamw", "{\"cautious\": true, \"weight_decay\": 0.1, \"weight_decay_mode\": \"l2\", \"eps\": 1e-6}", adam_ref, &h, &r);
    h = adam_defaults();
    h.cautious = 1, h.variant = 1;
    run_vs_ref("adamw", "{\"cautious\": true, \"variant\": \"nested\", \"eps\": 1e-6}", adam_ref, &h, &r);
}

TEST(optim_adamw_eps_schedules) {
    // T = 10 steps, growth between w T = 3 and E T = 7: every step is checked, the
    // boundaries included. eps is large enough against g^2 ~ 1 to change the updates.
    const RunSpec r = spec(1, 129, 10, 10, 1, 8);
    const char *types[] = {"warmup_exp", "log_linear"};
    for (int k = 0; k < 2; k++) {
        AdamRef h = adam_defaults();
        h.eps = F(1e-4), h.eps_type = k + 1, h.eps_max = F(0.5), h.w = F(0.3), h.E = F(0.7), h.kappa = F(3);
        char json[300];
        snprintf(json, sizeof json,
                 "{\"eps\": 1e-4, \"eps_schedule\": {\"type\": \"%s\", \"eps_max\": 0.5, \"w\": 0.3, \"E\": 0.7, \"kappa\": 3}}",
                 types[k]);
        run_vs_ref("adamw", json, adam_ref, &h, &r);
        // The scheduled eps is logged, and equals the formula at the boundaries.
        Opt o = opt_make("adamw", json);
        const long ts[] = {3, 4, 7};
        for (int i = 0; i < 3; i++) {
            const StepInfo si = {ts[i], 10, 1e-3f, 1.0f, 0};
            const char *names[4];
            double values[4];
            CHECK(o.def->log_scalars(o.hyper, &si, names, values, 4) == 1 && strcmp(names[0], "eps") == 0);
            CHECK_NEAR(values[0] / ref_eps(&h, ts[i], 10), 1.0, 1e-6);
        }
        opt_free(&o);
    }
    CHECK_NEAR(ref_eps(&(AdamRef){.eps = 1e-4, .eps_type = 1, .eps_max = 0.5, .w = 0.3, .E = 0.7, .kappa = 3}, 7, 10), 0.5, 1e-12);
}

// Nested: m = EMA(g / (sqrt(v_hat) + eps)), p -= lr m_hat; LaProp: m = EMA(lr g / ...), p -= m_hat.
// With a constant lr the two are the same; with a decaying lr LaProp keeps the old, larger
// lr inside its momentum, so its steps are larger.
TEST(optim_adamw_nested_equals_laprop_at_constant_lr) {
    for (int decaying = 0; decaying < 2; decaying++) {
        const RunSpec r = spec(1, 513, 6, 20, decaying, 21);
        Opt nested = opt_make("adamw", "{\"variant\": \"nested\", \"weight_decay\": 0.1}");
        Opt laprop = opt_make("adamw", "{\"variant\": \"laprop\", \"weight_decay\": 0.1}");
        const size_t n = 513;
        float *p0 = (float *)xmalloc(n * sizeof(float)), *a = (float *)xmalloc(n * sizeof(float)), *b = (float *)xmalloc(n * sizeof(float));
        fill_normal(p0, n, 3, 0.1f);
        run_code(&nested, &r, a, p0);
        run_code(&laprop, &r, b, p0);
        double *da = (double *)xmalloc(n * sizeof(double)), *db = (double *)xmalloc(n * sizeof(double));
        double na = 0, nb = 0;
        for (size_t i = 0; i < n; i++) {
            da[i] = (double)a[i] - p0[i];
            db[i] = (double)b[i] - p0[i];
            na += da[i] * da[i];
            nb += db[i] * db[i];
        }
        const double e = rel_error_d(da, db, n);
        if (!decaying) CHECKF(e < 1e-6, "constant lr: nested and LaProp differ by %.3g", e);
        else CHECKF(e > 1e-2 && nb > na, "decaying lr: nested and LaProp should differ (%.3g), LaProp moving further (%g vs %g)", e, sqrt(nb), sqrt(na));
        free(p0), free(a), free(b), free(da), free(db);
        opt_free(&nested);
        opt_free(&laprop);
    }
}

// ---------------------------------------------------------------------------------------
// The other element-wise optimizers

TEST(optim_sgd_matches_reference) {
    const RunSpec r = spec(1, 257, 5, 20, 1, 31);
    SgdRef h = {F(0.9), 0, 0, 0, 0, 0};
    run_vs_ref("sgd", "{}", sgd_ref, &h, &r);
    h.nesterov = 1;
    run_vs_ref("sgd", "{\"nesterov\": true}", sgd_ref, &h, &r);
    h = (SgdRef){F(0.8), F(0.5), 0, 0, 0, 0};  // dampening: the buffer starts as g, as torch
    run_vs_ref("sgd", "{\"momentum\": 0.8, \"dampening\": 0.5}", sgd_ref, &h, &r);
    h = (SgdRef){0, 0, F(0.3), 0, 0, 0};  // plain SGD
    run_vs_ref("sgd", "{\"momentum\": 0, \"weight_decay\": 0.3}", sgd_ref, &h, &r);
    h = (SgdRef){F(0.9), 0, F(0.3), 0, 0, 0};
    run_vs_ref("sgd", "{\"weight_decay\": 0.3}", sgd_ref, &h, &r);
    h.l2 = 1;
    run_vs_ref("sgd", "{\"weight_decay\": 0.3, \"weight_decay_mode\": \"l2\"}", sgd_ref, &h, &r);
    h = (SgdRef){F(0.9), 0, F(0.3), 1, 0, 1};
    const RunSpec big = spec(1, 5003, 4, 20, 1, 32);
    run_vs_ref("sgd", "{\"weight_decay\": 0.3, \"nesterov\": true, \"cautious\": true}", sgd_ref, &h, &big);
    Opt o = opt_make("sgd", "{\"momentum\": 0}");
    CHECK(o.def->slots(o.hyper) == 0);
    opt_free(&o);
}

TEST(optim_lion_matches_reference) {
    const RunSpec r = spec(1, 257, 5, 20, 1, 41);
    LionRef h = {F(0.9), F(0.99), F(0.5), 0};
    run_vs_ref("lion", "{\"weight_decay\": 0.5}", lion_ref, &h, &r);
    h = (LionRef){F(0.5), F(0.9), 0, 0};
    run_vs_ref("lion", "{\"beta1\": 0.5, \"beta2\": 0.9}", lion_ref, &h, &r);
    h = (LionRef){F(0.9), F(0.99), F(0.5), 1};
    const RunSpec big = spec(1, 5003, 4, 20, 1, 42);
    run_vs_ref("lion", "{\"weight_decay\": 0.5, \"cautious\": true}", lion_ref, &h, &big);
}

TEST(optim_adopt_matches_reference) {
    const RunSpec r = spec(1, 257, 6, 20, 1, 51);
    AdoptRef h = {F(0.9), F(0.9999), F(1e-6), F(0.1), F(0.25), 0, 1};
    run_vs_ref("adopt", "{\"weight_decay\": 0.1}", adopt_ref, &h, &r);
    h.clip = 0;
    run_vs_ref("adopt", "{\"weight_decay\": 0.1, \"clip\": false}", adopt_ref, &h, &r);
    h = (AdoptRef){F(0.8), F(0.9), F(1e-2), F(0.3), F(0.5), 1, 1};
    run_vs_ref("adopt", "{\"beta1\": 0.8, \"beta2\": 0.9, \"eps\": 1e-2, \"weight_decay\": 0.3, \"weight_decay_mode\": \"l2\", "
               "\"clip_exponent\": 0.5}", adopt_ref, &h, &r);
}

TEST(optim_ademamix_matches_reference) {
    // Warmups over the whole run (T = 10 steps, both ending at the last step).
    const RunSpec r = spec(1, 257, 10, 10, 1, 61);
    AdemamixRef h = {F(0.9), F(0.999), F(0.9999), F(5), F(1e-8), 0, 0, 0};
    run_vs_ref("ademamix", "{}", ademamix_ref, &h, &r);
    // Warmups ending inside the run, decay, a shorter beta3.
    const RunSpec r2 = spec(1, 257, 8, 40, 1, 62);
    h = (AdemamixRef){F(0.9), F(0.99), F(0.99), F(3), F(1e-6), F(0.2), 3, 6};
    run_vs_ref("ademamix", "{\"beta2\": 0.99, \"beta3\": 0.99, \"alpha\": 3, \"eps\": 1e-6, \"weight_decay\": 0.2, "
               "\"alpha_warmup\": 3, \"beta3_warmup\": 6}", ademamix_ref, &h, &r2);
    // Warmups off.
    h = (AdemamixRef){F(0.9), F(0.999), F(0.999), F(5), F(1e-8), 0, 1, 1};
    run_vs_ref("ademamix", "{\"beta3\": 0.999, \"alpha_warmup\": 1, \"beta3_warmup\": 1}", ademamix_ref, &h, &r2);
    // alpha and beta3 are logged.
    Opt o = opt_make("ademamix", "{\"alpha_warmup\": 4}");
    const StepInfo si = {2, 100, 1e-3f, 1.0f, 0};
    const char *names[4];
    double values[4];
    CHECK(o.def->log_scalars(o.hyper, &si, names, values, 4) == 2);
    CHECK(strcmp(names[0], "alpha") == 0 && values[0] == 2.5);
    CHECK(strcmp(names[1], "beta3") == 0 && values[1] > F(0.9) && values[1] < F(0.9999));
    opt_free(&o);
}

TEST(optim_adafactor_matches_reference) {
    AdafactorRef h = {0, F(-0.8), F(1), F(1e-30), 0};
    const RunSpec mat = spec(7, 5, 5, 20, 1, 71);
    run_vs_ref("adafactor", "{}", adafactor_ref, &h, &mat);
    const RunSpec vec = spec(1, 37, 5, 20, 1, 72);
    run_vs_ref("adafactor", "{}", adafactor_ref, &h, &vec);
    const RunSpec col = spec(37, 1, 5, 20, 1, 73);
    run_vs_ref("adafactor", "{}", adafactor_ref, &h, &col);
    // Momentum, decay, a tighter clip (active), another decay rate.
    h = (AdafactorRef){F(0.9), F(-0.5), F(0.5), F(1e-30), F(0.1)};
    const char *json = "{\"beta1\": 0.9, \"decay_rate\": -0.5, \"clip_threshold\": 0.5, \"weight_decay\": 0.1}";
    run_vs_ref("adafactor", json, adafactor_ref, &h, &mat);
    run_vs_ref("adafactor", json, adafactor_ref, &h, &vec);
    const RunSpec big = spec(96, 64, 4, 20, 1, 74);  // over 4096 entries: the OpenMP paths
    run_vs_ref("adafactor", json, adafactor_ref, &h, &big);
    // State: rows + cols for a matrix, numel for a vector, plus numel with momentum.
    Opt o = opt_make("adafactor", "{}"), om = opt_make("adafactor", "{\"beta1\": 0.9}");
    ParamTensor t = {.rows = 7, .cols = 5, .numel = 35};
    CHECK(o.def->tensor_state(o.hyper, &t) == 12 && om.def->tensor_state(om.hyper, &t) == 47);
    t = (ParamTensor){.rows = 1, .cols = 9, .numel = 9};
    CHECK(o.def->tensor_state(o.hyper, &t) == 9 && om.def->tensor_state(om.hyper, &t) == 18);
    opt_free(&o);
    opt_free(&om);
}

TEST(optim_registry_keys_documented) {
    const char *mine[] = {"adamw", "sgd", "lion", "adopt", "ademamix", "adafactor"};
    for (size_t i = 0; i < sizeof mine / sizeof mine[0]; i++) {
        const OptimizerDef *d = optimizer_find(mine[i]);
        CHECKF(d != NULL, "%s is not registered", mine[i]);
        if (!d) continue;
        CHECKF(d->summary && strlen(d->summary) > 20, "%s has no summary", mine[i]);
        CHECKF(d->step_elements ? d->slots != NULL : d->step_tensor && d->tensor_state, "%s has no step", mine[i]);
        int wd = 0;
        for (const ConfigKey *k = d->keys; k->name; k++) {
            wd |= strcmp(k->name, "weight_decay") == 0;
            CHECKF(k->doc && k->doc[0], "%s.%s has no doc", mine[i], k->name);
            CHECKF(k->def || k->type == KEY_JSON, "%s.%s has no default", mine[i], k->name);
        }
        CHECKF(wd, "%s has no weight_decay key (the default groups set it)", mine[i]);
        // Defaults alone make a valid optimizer.
        Opt o = opt_make(mine[i], "{}");
        opt_free(&o);
    }
}

// ---------------------------------------------------------------------------------------
// Groups and errors specific to these optimizers.


TEST(optim_elementwise_group_errors) {
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"all\", \"name\": \"lion\", \"beta3\": 0.9}]}",
                 "optimizer.groups[0].beta3: unknown key");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"sgd\", \"momentum\": 0, \"nesterov\": true}",
                 "optimizer.groups[0].nesterov: Nesterov momentum needs momentum > 0");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"ademamix\", \"alpha\": -1}", "optimizer.alpha: -1 is out of range");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"adafactor\", \"decay_rate\": 0.8}", "optimizer.decay_rate: 0.8 is out of range");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"adopt\", \"weight_decay_mode\": \"independent\"}",
                 "optimizer.weight_decay_mode: must be one of decoupled|l2");
}

// A mixed model: each group's optimizer takes its tensors with its own state size, and
// top-level keys of another optimizer do not leak into a group.
TEST(optim_elementwise_mixed_groups) {
    Optimizer opt;
    ModelLayout L;
    JsonConfig *c;
    tiny_optimizer(&opt, &L, &c,
                   "{\"name\": \"adamw\", \"eps\": 1e-7, \"amsgrad\": true, \"groups\": ["
                   "{\"params\": \"matrices\", \"name\": \"adafactor\", \"beta1\": 0.9},"
                   "{\"params\": [\"embeddings\", \"head\"], \"name\": \"ademamix\"},"
                   "{\"params\": \"norms\", \"name\": \"lion\", \"lr_mult\": 0.3},"
                   "{\"params\": \"biases\", \"name\": \"sgd\", \"momentum\": 0}]}");
    CHECK(opt.n_groups == 4 && !opt.elementwise_only);
    size_t expect = 0;
    for (int i = 0; i < L.num_tensors; i++) {
        const ParamTensor *t = &L.tensors[i];
        const char *name = opt.groups[opt.group_of[i]].def->name;
        if (role_is_matrix(t->role)) {
            CHECKF(strcmp(name, "adafactor") == 0, "%s in %s", t->name, name);
            expect += (size_t)t->rows + t->cols + t->numel;
        } else if (t->role == ROLE_EMBEDDING || t->role == ROLE_HEAD) {
            CHECKF(strcmp(name, "ademamix") == 0, "%s in %s", t->name, name);
            expect += 3 * t->numel;
        } else if (t->role == ROLE_NORM) {
            CHECKF(strcmp(name, "lion") == 0, "%s in %s", t->name, name);
            expect += t->numel;
        } else {
            CHECKF(strcmp(name, "sgd") == 0, "%s in %s", t->name, name);
        }
    }
    CHECKF(opt.state_floats == expect, "state %zu floats, expected %zu", opt.state_floats, expect);
    CHECK(fabsf(opt.groups[2].lr_peak - 3e-4f) < 1e-10f);
    // One step through optim_step_cpu moves every tensor.
    optim_alloc_state(&opt);
    float *p = xmalloc_floats(L.num_params), *p0 = xmalloc_floats(L.num_params), *g = xmalloc_floats(L.num_params);
    fill_normal(p, L.num_params, 1, 0.1f);
    fill_normal(g, L.num_params, 2, 1.0f);
    memcpy(p0, p, L.num_params * sizeof(float));
    const StepInfo si = {1, 10, 1e-3f, 1.0f, 100};
    optim_step_cpu(&opt, NULL, p, g, &si);
    for (int i = 0; i < L.num_tensors; i++) {
        const ParamTensor *t = &L.tensors[i];
        double d = 0;
        for (size_t k = 0; k < t->numel; k++) d += fabs((double)p[t->offset + k] - p0[t->offset + k]);
        CHECKF(d > 0, "%s did not move", t->name);
    }
    free(p), free(p0), free(g);
    optim_free(&opt);
    model_layout_free(&L);
    json_config_free(c);
}

// ---------------------------------------------------------------------------------------
// Checkpoint round trips: a resumed run equals the unbroken run, step for step.

TEST(optim_resume_sgd) { check_resume_identical("gpt2", "{\"name\": \"sgd\", \"nesterov\": true, \"groups\": [{\"params\": \"all\", \"lr\": 0.3}]}", "sgd"); }
TEST(optim_resume_lion) { check_resume_identical("gpt2", "{\"name\": \"lion\", \"weight_decay\": 0.3, \"cautious\": true}", "lion"); }
TEST(optim_resume_adopt) { check_resume_identical("llama", "{\"name\": \"adopt\", \"weight_decay\": 0.1}", "adopt"); }
TEST(optim_resume_ademamix) { check_resume_identical("gpt2", "{\"name\": \"ademamix\", \"weight_decay\": 0.1}", "ademamix"); }
TEST(optim_resume_adafactor) { check_resume_identical("gpt2", "{\"name\": \"adafactor\", \"beta1\": 0.9, \"weight_decay\": 0.1}", "adafactor"); }
TEST(optim_resume_adamw_amsgrad_zero_init) {
    check_resume_identical("gpt2", "{\"amsgrad\": true, \"zero_init\": false, \"cautious\": true, \"weight_decay\": 0.1}", "adamw_ams");
}
TEST(optim_resume_adamw_nested_eps_schedule) {
    check_resume_identical("gpt2", "{\"variant\": \"nested\", \"eps_schedule\": {\"type\": \"warmup_exp\", \"eps_max\": 1e-4, "
                           "\"w\": 0.25, \"E\": 0.75}}", "adamw_nested");
}
TEST(optim_resume_mixed_groups) {
    check_resume_identical("gpt2", "{\"groups\": [{\"params\": \"matrices\", \"name\": \"adafactor\"},"
                           " {\"params\": [\"embeddings\", \"head\"], \"name\": \"ademamix\"},"
                           " {\"params\": [\"norms\", \"biases\"], \"name\": \"lion\", \"lr_mult\": 0.3, \"weight_decay\": 0}]}",
                           "mixed");
}

// ---------------------------------------------------------------------------------------
// Diagnostics: log.diagnostics writes per-group update and gradient RMS.

TEST(optim_diagnostics_in_log) {
    RunConfig rc;
    tiny_config(&rc, "gpt2", 3, 0, "{}");
    rc.log.diagnostics = 1;
    const char *out = tmp_path("diag");
    run_training(&rc, out, NULL);
    run_config_free(&rc);
    char path[600];
    snprintf(path, sizeof path, "%s/log.jsonl", out);
    char *text = read_file(path, NULL);
    int train_lines = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *rec = cJSON_Parse(line);
        const cJSON *step = cJSON_GetObjectItem(rec, "step"), *lr = cJSON_GetObjectItem(rec, "lr");
        if (!cJSON_IsNumber(cJSON_GetObjectItem(rec, "loss"))) {
            cJSON_Delete(rec);
            continue;
        }
        train_lines++;
        const cJSON *ud = cJSON_GetObjectItem(rec, "update_rms/decay"), *un = cJSON_GetObjectItem(rec, "update_rms/no_decay");
        const cJSON *gd = cJSON_GetObjectItem(rec, "grad_rms/decay"), *gn = cJSON_GetObjectItem(rec, "grad_rms/no_decay");
        CHECKF(cJSON_IsNumber(ud) && cJSON_IsNumber(un) && cJSON_IsNumber(gd) && cJSON_IsNumber(gn), "missing fields: %s", line);
        if (cJSON_IsNumber(ud) && cJSON_IsNumber(un) && cJSON_IsNumber(gd) && cJSON_IsNumber(gn) && cJSON_IsNumber(lr)) {
            CHECKF(gd->valuedouble > 0 && gn->valuedouble > 0 && isfinite(gd->valuedouble), "grad_rms: %s", line);
            // AdamW without weight decay moves each entry by at most lr (|m_hat| <= sqrt(v_hat)
            // for beta1^2 <= beta2); it moves when lr > 0 (the cosine reaches 0 at the end).
            const double l = lr->valuedouble;
            CHECKF((ud->valuedouble > 0 || l == 0) && ud->valuedouble <= l * 1.0001, "update_rms/decay: %s", line);
            CHECKF((un->valuedouble > 0 || l == 0) && un->valuedouble <= l * 1.0001, "update_rms/no_decay: %s", line);
            // Step 1: m_hat = g and v_hat = g^2, so every entry moves by lr |g| / (|g| + eps) = lr,
            // except the attention key biases, whose gradient is zero up to rounding (softmax
            // ignores a shift shared by all keys): about 6% of this group.
            if (step->valueint == 1)
                CHECKF(un->valuedouble > 0.9 * l && un->valuedouble <= l * 1.0001, "step 1: update_rms %g, lr %g",
                       un->valuedouble, l);
        }
        cJSON_Delete(rec);
    }
    CHECKF(train_lines == 3, "%d training lines in the log", train_lines);
    free(text);
}
