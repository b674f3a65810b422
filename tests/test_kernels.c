// Tests of the CPU layer kernels (kernels/*.h): every backward against finite differences of
// its forward, forwards against double-precision references written here from the math, and
// the properties the trainer relies on (backward accumulates, attention is causal, results do
// not depend on the thread count, NaN propagates).
//
// Gradient checks. L = sum(out * w) with random w, summed in double; each input is moved by
// +-h and +-2h and the 5-point central difference (8(L(+h) - L(-h)) - (L(+2h) - L(-2h))) / 12h
// is compared with the analytic gradient by norm-wise relative error. Why the tolerance holds:
//  - the forward runs in float, so every output carries ~1e-7 relative rounding that changes
//    as the input moves; in L that is ~1e-7 * sqrt(#outputs) of order-1 terms, and divided by
//    h it is the FD error on each component, against gradients of order 0.1 to 1. This noise
//    dominates, hence a large step, h = 0.05 (inputs are of order 1);
//  - the 5-point stencil's truncation error, h^4 f^(5) / 30, is still only ~1e-7 f^(5) there.
// Observed errors are 1e-6 to 1e-4 (KTEST_VERBOSE=1 prints them), the largest for attention
// with ~10^4 outputs; GRAD_TOL = 1e-3 leaves a 10x margin, while a dropped term or a wrong
// factor in a backward gives errors of 0.1 or more (each kind was tried by breaking a kernel).
// Gradient buffers start from random values, not zeros. Most gradients accumulate: the check
// compares (after - before), which fails if a backward overwrites instead, and a second call
// must then double (after - before). The input gradients of matmul, GELU and SwiGLU are
// overwritten (the model never needs them summed, and writing saves zeroing a buffer): for
// those the check compares the buffer itself, and a second call must leave it unchanged.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/activations.h"
#include "../kernels/attention.h"
#include "../kernels/crossentropy.h"
#include "../kernels/encoder.h"
#include "../kernels/gelu.h"
#include "../kernels/layernorm.h"
#include "../kernels/matmul.h"
#include "../kernels/residual.h"
#include "../kernels/rmsnorm.h"
#include "../kernels/rope.h"
#include "../kernels/swiglu.h"
#include "../runtime/common.h"
#include "harness.h"

#define FD_STEP 5e-2f
#define GRAD_TOL 1e-3
#define ACCUM_TOL 1e-4  // (after2 - before) vs 2 (after1 - before): only float rounding of the sums

// ---------------------------------------------------------------- helpers

static int verbose(void) {
    const char *v = getenv("KTEST_VERBOSE");
    return v && v[0] && v[0] != '0';
}

static float *rand_floats(size_t n, uint64_t seed, float lo, float hi) {
    float *x = xmalloc_floats(n);
    fill_uniform(x, n, seed, lo, hi);
    return x;
}

static float *copy_floats(const float *src, size_t n) {
    float *x = xmalloc_floats(n);
    memcpy(x, src, n * sizeof(float));
    return x;
}

static double dot_d(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

// Norm-wise relative error of a float result against a double reference; NaN gives +inf.
static double ref_error(const float *x, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)x[i] - ref[i]) * ((double)x[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    if (isnan(num) || isnan(den)) return INFINITY;
    return sqrt(num) / fmax(sqrt(den), 1e-300);
}

#define CHECK_REF(x, ref, n, tol)                                                                   \
    do {                                                                                            \
        double e_ = ref_error((x), (ref), (n));                                                     \
        if (verbose()) printf("\n      %-28s ref error %.2e", #x, e_);                              \
        if (!(e_ <= (tol))) test_fail(__FILE__, __LINE__, "%s vs reference: error %.3g > %g", #x, e_, (double)(tol)); \
    } while (0)

typedef double (*LossFn)(void *ctx);
typedef void (*BackwardFn)(void *ctx);

// One differentiable input of a layer: its values x and the gradient buffer g that the
// backward accumulates into. sample > 0 checks only that many coordinates (spread over x by a
// stride coprime with n) against finite differences, for inputs too big to check whole.
typedef struct {
    const char *name;
    float *x;
    float *g;
    size_t n;
    size_t sample;
    int overwrite;  // the backward writes g instead of adding to it
} Param;

static size_t param_checked(const Param *p) { return p->sample && p->sample < p->n ? p->sample : p->n; }
static size_t param_index(const Param *p, size_t k) {
    if (param_checked(p) == p->n) return k;
    size_t step = 7919;  // prime
    while (p->n % step == 0) step += 2;
    return (k * step) % p->n;
}

// Central differences of the loss w.r.t. x[idx[k]], k < m. The forwards run on one thread:
// their results do not depend on the thread count (kernels_same_bits_for_any_thread_count),
// and thousands of tiny parallel regions crawl on a machine whose other core is busy.
static void fd_gradient(LossFn loss, void *ctx, float *x, const Param *p, float h, float *g) {
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    for (size_t k = 0; k < param_checked(p); k++) {
        const size_t i = param_index(p, k);
        const float x0 = x[i];
        x[i] = x0 + h;
        double lp1 = loss(ctx);
        x[i] = x0 - h;
        double lm1 = loss(ctx);
        x[i] = x0 + 2 * h;
        double lp2 = loss(ctx);
        x[i] = x0 - 2 * h;
        double lm2 = loss(ctx);
        x[i] = x0;
        g[k] = (float)((8.0 * (lp1 - lm1) - (lp2 - lm2)) / (12.0 * (double)h));
    }
    omp_set_num_threads(threads);
    loss(ctx);  // leave the forward state (saved means, att...) at the unperturbed inputs
}

// Prefills every gradient with random values, runs backward, checks (g - prefill) against
// finite differences, runs backward again and checks that the increment doubled.
static void gradcheck_(const char *file, int line, const char *layer, LossFn loss, BackwardFn backward, void *ctx,
                       Param *ps, int np, float h, double tol) {
    float *g0[16], *d1[16];
    if (np > 16) fatal("gradcheck: too many params");
    for (int p = 0; p < np; p++) {
        fill_uniform(ps[p].g, ps[p].n, 1000 + p, -1.0f, 1.0f);
        g0[p] = copy_floats(ps[p].g, ps[p].n);
        d1[p] = xmalloc_floats(ps[p].n);
    }
    backward(ctx);
    for (int p = 0; p < np; p++) {
        for (size_t i = 0; i < ps[p].n; i++) d1[p][i] = ps[p].g[i] - (ps[p].overwrite ? 0.0f : g0[p][i]);
        const size_t m = param_checked(&ps[p]);
        float *fd = xmalloc_floats(m), *an = xmalloc_floats(m);
        fd_gradient(loss, ctx, ps[p].x, &ps[p], h, fd);
        for (size_t k = 0; k < m; k++) an[k] = d1[p][param_index(&ps[p], k)];
        double err = rel_error(an, fd, m);
        if (verbose()) printf("\n      %s d%-20s FD error %.2e", layer, ps[p].name, err);
        if (!(err <= tol)) test_fail(file, line, "%s: d%s vs finite differences: relative error %.3g > %g", layer,
                                     ps[p].name, err, tol);
        free(fd), free(an);
    }
    backward(ctx);
    for (int p = 0; p < np; p++) {
        float *d2 = xmalloc_floats(ps[p].n), *twice = xmalloc_floats(ps[p].n);
        for (size_t i = 0; i < ps[p].n; i++) {
            d2[i] = ps[p].g[i] - (ps[p].overwrite ? 0.0f : g0[p][i]);
            twice[i] = (ps[p].overwrite ? 1.0f : 2.0f) * d1[p][i];
        }
        double err = rel_error(d2, twice, ps[p].n);
        if (!(err <= ACCUM_TOL))
            test_fail(file, line, "%s: d%s does not %s: second call gives %.3g relative error", layer, ps[p].name,
                      ps[p].overwrite ? "overwrite" : "accumulate", err);
        free(d2);
        free(twice);
        free(g0[p]);
        free(d1[p]);
    }
}
#define GRADCHECK(layer, loss, backward, ctx, ps, tol) \
    gradcheck_(__FILE__, __LINE__, layer, loss, backward, ctx, ps, (int)(sizeof(ps) / sizeof(ps[0])), FD_STEP, tol)

// ---------------------------------------------------------------- activations

static double gelu_ref(double x) { return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }
static double silu_ref(double x) { return x / (1.0 + exp(-x)); }

TEST(activations_gelu_silu_values_and_derivatives) {
    // Values against the double formulas (GELU in its tanh form, so this also checks the
    // sigmoid identity); derivatives against central differences of the double formulas,
    // whose error (h^2 f''' / 6 ~ 1e-9) is far below float resolution.
    double worst_g = 0, worst_dg = 0, worst_s = 0, worst_ds = 0;
    const double h = 1e-4;
    for (int i = -1000; i <= 1000; i++) {
        const float x = (float)i * 0.008f;  // [-8, 8], 0 included
        const double xd = x;
        double dg = (gelu_ref(xd + h) - gelu_ref(xd - h)) / (2 * h);
        double ds = (silu_ref(xd + h) - silu_ref(xd - h)) / (2 * h);
        worst_g = fmax(worst_g, fabs(act_gelu(x) - gelu_ref(xd)) / fmax(1.0, fabs(xd)));
        worst_s = fmax(worst_s, fabs(act_silu(x) - silu_ref(xd)) / fmax(1.0, fabs(xd)));
        worst_dg = fmax(worst_dg, fabs(act_gelu_grad(x) - dg));
        worst_ds = fmax(worst_ds, fabs(act_silu_grad(x) - ds));
        float grad;
        float s = act_silu_with_grad(x, &grad);
        CHECK_NEAR(s, act_silu(x), 1e-6 * fmax(1.0, fabs(xd)));
        CHECK_NEAR(grad, act_silu_grad(x), 1e-6);
    }
    if (verbose()) printf("\n      gelu %.2e gelu' %.2e silu %.2e silu' %.2e", worst_g, worst_dg, worst_s, worst_ds);
    CHECKF(worst_g <= 1e-6, "gelu value error %.3g", worst_g);
    CHECKF(worst_s <= 1e-6, "silu value error %.3g", worst_s);
    CHECKF(worst_dg <= 1e-5, "gelu derivative error %.3g", worst_dg);
    CHECKF(worst_ds <= 1e-5, "silu derivative error %.3g", worst_ds);
    // Tails: exp overflows there, which must give the limits, not NaN.
    CHECK_NEAR(act_gelu(-100.0f), 0.0, 1e-30);
    CHECK_NEAR(act_gelu(100.0f), 100.0, 0.0);
    CHECK_NEAR(act_gelu_grad(-100.0f), 0.0, 1e-20);  // exp's argument is capped: ~1e-30, not 0
    CHECK_NEAR(act_gelu_grad(100.0f), 1.0, 0.0);
    CHECK_NEAR(act_silu(-200.0f), 0.0, 1e-30);
    CHECK_NEAR(act_silu_grad(-200.0f), 0.0, 1e-20);
    CHECK_NEAR(act_silu_grad(200.0f), 1.0, 0.0);
    // NaN in, NaN out: the trainer's NaN checks rely on it.
    CHECK(isnan(act_gelu(NAN)) && isnan(act_gelu_grad(NAN)));
    CHECK(isnan(act_silu(NAN)) && isnan(act_silu_grad(NAN)));
}

// ---------------------------------------------------------------- gelu, residual

typedef struct {
    int n;
    float *inp, *out, *w, *dinp;
} Elem;

static double gelu_loss(void *p) {
    Elem *c = p;
    gelu_forward(c->out, c->inp, c->n);
    return dot_d(c->out, c->w, c->n);
}
static void gelu_bwd(void *p) {
    Elem *c = p;
    gelu_backward(c->dinp, c->inp, c->w, c->n);
}

TEST(gelu_forward_backward) {
    const int n = 101;
    Elem c = {n, rand_floats(n, 1, -4, 4), xmalloc_floats(n), rand_floats(n, 2, -1, 1), xmalloc_floats(n)};
    gelu_forward(c.out, c.inp, n);
    double *ref = xmalloc(n * sizeof(double));
    for (int i = 0; i < n; i++) ref[i] = gelu_ref(c.inp[i]);
    CHECK_REF(c.out, ref, n, 1e-6);
    Param ps[] = {{"inp", c.inp, c.dinp, n, 0, 1}};
    GRADCHECK("gelu", gelu_loss, gelu_bwd, &c, ps, GRAD_TOL);
    free(c.inp), free(c.out), free(c.w), free(c.dinp), free(ref);
}

typedef struct {
    int n;
    float *a, *b, *out, *w, *da, *db;
} Resid;

static double residual_loss(void *p) {
    Resid *c = p;
    residual_forward(c->out, c->a, c->b, c->n);
    return dot_d(c->out, c->w, c->n);
}
static void residual_bwd(void *p) {
    Resid *c = p;
    residual_backward(c->da, c->db, c->w, c->n);
}

TEST(residual_forward_backward) {
    const int n = 37;
    Resid c = {n, rand_floats(n, 1, -1, 1), rand_floats(n, 2, -1, 1), xmalloc_floats(n), rand_floats(n, 3, -1, 1),
               xmalloc_floats(n), xmalloc_floats(n)};
    residual_forward(c.out, c.a, c.b, n);
    for (int i = 0; i < n; i++) CHECK(c.out[i] == c.a[i] + c.b[i]);
    Param ps[] = {{"a", c.a, c.da, n, 0, 0}, {"b", c.b, c.db, n, 0, 0}};
    GRADCHECK("residual", residual_loss, residual_bwd, &c, ps, GRAD_TOL);
    free(c.a), free(c.b), free(c.out), free(c.w), free(c.da), free(c.db);
}

// ---------------------------------------------------------------- encoder

typedef struct {
    int N, T, C, V;
    int *tokens;
    float *wte, *wpe, *out, *w, *dwte, *dwpe;
} Enc;

static double encoder_loss(void *p) {
    Enc *c = p;
    encoder_forward(c->out, c->tokens, c->wte, c->wpe, c->N, c->T, c->C);
    return dot_d(c->out, c->w, (size_t)c->N * c->C);
}
static void encoder_bwd(void *p) {
    Enc *c = p;
    encoder_backward(c->dwte, c->dwpe, c->w, c->tokens, c->N, c->T, c->C);
}

TEST(encoder_forward_backward) {
    const int B = 3, T = 5, C = 37, V = 7, N = B * T;  // V < N: tokens repeat
    Enc c = {N, T, C, V, xmalloc(N * sizeof(int)), rand_floats(V * C, 1, -1, 1), rand_floats(T * C, 2, -1, 1),
             xmalloc_floats(N * C), rand_floats(N * C, 3, -1, 1), xmalloc_floats(V * C), xmalloc_floats(T * C)};
    for (int n = 0; n < N; n++) c.tokens[n] = (n * 5 + 3) % V;
    encoder_forward(c.out, c.tokens, c.wte, c.wpe, N, T, C);
    int exact = 1;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < C; k++)
            exact &= c.out[n * C + k] == c.wte[c.tokens[n] * C + k] + c.wpe[(n % T) * C + k];
    CHECK(exact);
    Param ps[] = {{"wte", c.wte, c.dwte, (size_t)V * C, 0, 0}, {"wpe", c.wpe, c.dwpe, (size_t)T * C, 0, 0}};
    GRADCHECK("encoder", encoder_loss, encoder_bwd, &c, ps, GRAD_TOL);

    // Without position embeddings: forward copies wte rows, backward leaves dwpe alone.
    encoder_forward(c.out, c.tokens, c.wte, NULL, N, T, C);
    exact = 1;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < C; k++) exact &= c.out[n * C + k] == c.wte[c.tokens[n] * C + k];
    CHECK(exact);
    float *dwte_full = copy_floats(c.dwte, V * C);
    memset(dwte_full, 0, V * C * sizeof(float));
    encoder_backward(dwte_full, c.dwpe, c.w, c.tokens, N, T, C);
    float *dwte_only = xmalloc_floats(V * C);
    memset(dwte_only, 0, V * C * sizeof(float));
    encoder_backward(dwte_only, NULL, c.w, c.tokens, N, T, C);
    CHECK(memcmp(dwte_full, dwte_only, V * C * sizeof(float)) == 0);
    free(dwte_full), free(dwte_only);
    free(c.tokens), free(c.wte), free(c.wpe), free(c.out), free(c.w), free(c.dwte), free(c.dwpe);
}

// ---------------------------------------------------------------- layernorm, rmsnorm

typedef struct {
    int N, C;
    float *inp, *weight, *bias, *out, *mean, *rstd, *w, *dinp, *dweight, *dbias;
} Norm;

static Norm norm_new(int N, int C) {
    Norm c = {.N = N, .C = C};
    c.inp = rand_floats(N * C, 1, -1, 1);
    for (int n = 0; n < N; n++)  // rows with a mean far from 0 exercise the mean subtraction
        for (int k = 0; k < C; k++) c.inp[n * C + k] += 0.5f * (float)(n % 3);
    c.weight = rand_floats(C, 2, 0.5f, 1.5f);
    c.bias = rand_floats(C, 3, -1, 1);
    c.out = xmalloc_floats(N * C);
    c.mean = xmalloc_floats(N);
    c.rstd = xmalloc_floats(N);
    c.w = rand_floats(N * C, 4, -1, 1);
    c.dinp = xmalloc_floats(N * C);
    c.dweight = xmalloc_floats(C);
    c.dbias = xmalloc_floats(C);
    return c;
}
static void norm_free(Norm *c) {
    free(c->inp), free(c->weight), free(c->bias), free(c->out), free(c->mean), free(c->rstd), free(c->w);
    free(c->dinp), free(c->dweight), free(c->dbias);
}

static double layernorm_loss(void *p) {
    Norm *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->weight, c->bias, c->N, c->C, 1e-5f);
    return dot_d(c->out, c->w, (size_t)c->N * c->C);
}
static void layernorm_bwd(void *p) {
    Norm *c = p;
    layernorm_loss(c);
    layernorm_backward(c->dinp, c->dweight, c->dbias, c->w, c->inp, c->weight, c->mean, c->rstd, c->N, c->C);
}

TEST(layernorm_forward_backward) {
    const int N = 5, C = 7;
    Norm c = norm_new(N, C);
    layernorm_loss(&c);
    double ref[N * C], mean[N], rstd[N];
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int k = 0; k < C; k++) m += c.inp[n * C + k];
        m /= C;
        for (int k = 0; k < C; k++) v += (c.inp[n * C + k] - m) * (c.inp[n * C + k] - m);
        v /= C;
        mean[n] = m;
        rstd[n] = 1.0 / sqrt(v + 1e-5);
        for (int k = 0; k < C; k++) ref[n * C + k] = (c.inp[n * C + k] - m) * rstd[n] * c.weight[k] + c.bias[k];
    }
    CHECK_REF(c.out, ref, N * C, 1e-6);
    CHECK_REF(c.mean, mean, N, 1e-6);
    CHECK_REF(c.rstd, rstd, N, 1e-6);
    Param ps[] = {{"inp", c.inp, c.dinp, N * C, 0, 0}, {"weight", c.weight, c.dweight, C, 0, 0}, {"bias", c.bias, c.dbias, C, 0, 0}};
    GRADCHECK("layernorm", layernorm_loss, layernorm_bwd, &c, ps, GRAD_TOL);
    norm_free(&c);
}

static double rmsnorm_loss(void *p) {
    Norm *c = p;
    rmsnorm_forward(c->out, c->rstd, c->inp, c->weight, c->N, c->C, 1e-5f);
    return dot_d(c->out, c->w, (size_t)c->N * c->C);
}
static void rmsnorm_bwd(void *p) {
    Norm *c = p;
    rmsnorm_loss(c);
    rmsnorm_backward(c->dinp, c->dweight, c->w, c->inp, c->weight, c->rstd, c->N, c->C);
}

TEST(rmsnorm_forward_backward) {
    const int N = 5, C = 7;
    Norm c = norm_new(N, C);
    rmsnorm_loss(&c);
    double ref[N * C], rstd[N];
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int k = 0; k < C; k++) ss += (double)c.inp[n * C + k] * c.inp[n * C + k];
        rstd[n] = 1.0 / sqrt(ss / C + 1e-5);
        for (int k = 0; k < C; k++) ref[n * C + k] = c.inp[n * C + k] * rstd[n] * c.weight[k];
    }
    CHECK_REF(c.out, ref, N * C, 1e-6);
    CHECK_REF(c.rstd, rstd, N, 1e-6);
    Param ps[] = {{"inp", c.inp, c.dinp, N * C, 0, 0}, {"weight", c.weight, c.dweight, C, 0, 0}};
    GRADCHECK("rmsnorm", rmsnorm_loss, rmsnorm_bwd, &c, ps, GRAD_TOL);
    norm_free(&c);
}

// ---------------------------------------------------------------- matmul

typedef struct {
    int N, IC, OC;
    float *inp, *weight, *bias, *out, *w, *dinp, *dweight, *dbias;
} Mm;

static double matmul_loss(void *p) {
    Mm *c = p;
    matmul_forward(c->out, c->inp, c->weight, c->bias, c->N, c->IC, c->OC);
    return dot_d(c->out, c->w, (size_t)c->N * c->OC);
}
static void matmul_bwd(void *p) {
    Mm *c = p;
    matmul_backward(c->dinp, c->dweight, c->dbias, c->w, c->inp, c->weight, c->N, c->IC, c->OC);
}

static void matmul_ref(double *out, const float *inp, const float *weight, const float *bias, int N, int IC, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int i = 0; i < IC; i++) s += (double)inp[n * IC + i] * weight[o * IC + i];
            out[n * OC + o] = s;
        }
}

TEST(matmul_forward_against_naive) {
    // Sizes past OpenBLAS's small-matrix paths, none a multiple of 4.
    const int N = 53, IC = 67, OC = 29;
    float *inp = rand_floats(N * IC, 1, -1, 1), *weight = rand_floats(OC * IC, 2, -1, 1);
    float *bias = rand_floats(OC, 3, -1, 1), *out = rand_floats(N * OC, 4, -1, 1);  // garbage: must be overwritten
    double *ref = xmalloc(sizeof(double) * N * OC);
    matmul_forward(out, inp, weight, bias, N, IC, OC);
    matmul_ref(ref, inp, weight, bias, N, IC, OC);
    CHECK_REF(out, ref, N * OC, 1e-6);
    matmul_forward(out, inp, weight, NULL, N, IC, OC);
    matmul_ref(ref, inp, weight, NULL, N, IC, OC);
    CHECK_REF(out, ref, N * OC, 1e-6);
    // The residual form adds the projection to a residual stream.
    float *res = rand_floats(N * OC, 5, -1, 1);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        matmul_forward_residual(out, res, inp, weight, with_bias ? bias : NULL, N, IC, OC);
        matmul_ref(ref, inp, weight, with_bias ? bias : NULL, N, IC, OC);
        for (int i = 0; i < N * OC; i++) ref[i] += res[i];
        CHECK_REF(out, ref, N * OC, 1e-6);
    }
    free(inp), free(weight), free(bias), free(out), free(ref), free(res);
}

TEST(matmul_backward_fd) {
    const int N = 5, IC = 7, OC = 9;
    Mm c = {N, IC, OC, rand_floats(N * IC, 1, -1, 1), rand_floats(OC * IC, 2, -1, 1), rand_floats(OC, 3, -1, 1),
            xmalloc_floats(N * OC), rand_floats(N * OC, 4, -1, 1), xmalloc_floats(N * IC), xmalloc_floats(OC * IC),
            xmalloc_floats(OC)};
    Param ps[] = {{"inp", c.inp, c.dinp, N * IC, 0, 1}, {"weight", c.weight, c.dweight, OC * IC, 0, 0}, {"bias", c.bias, c.dbias, OC, 0, 0}};
    GRADCHECK("matmul", matmul_loss, matmul_bwd, &c, ps, GRAD_TOL);

    // NULL dinp / dbias: dweight is unchanged, nothing else is touched.
    float *dw_all = xmalloc_floats(OC * IC), *dw_only = xmalloc_floats(OC * IC);
    memset(dw_all, 0, OC * IC * sizeof(float));
    memset(dw_only, 0, OC * IC * sizeof(float));
    matmul_backward(c.dinp, dw_all, c.dbias, c.w, c.inp, c.weight, N, IC, OC);
    matmul_backward(NULL, dw_only, NULL, c.w, c.inp, c.weight, N, IC, OC);
    CHECK(memcmp(dw_all, dw_only, OC * IC * sizeof(float)) == 0);
    free(dw_all), free(dw_only);
    free(c.inp), free(c.weight), free(c.bias), free(c.out), free(c.w), free(c.dinp), free(c.dweight), free(c.dbias);
}

// ---------------------------------------------------------------- attention

typedef struct {
    int B, T, H, KVH, hd;
    float *qkv, *out, *att, *w, *dqkv;
} Att;

static size_t att_qkv_size(const Att *c) { return (size_t)c->B * c->T * (c->H + 2 * c->KVH) * c->hd; }
static size_t att_out_size(const Att *c) { return (size_t)c->B * c->T * c->H * c->hd; }

static Att att_new(int B, int T, int H, int KVH, int hd) {
    Att c = {.B = B, .T = T, .H = H, .KVH = KVH, .hd = hd};
    c.qkv = rand_floats(att_qkv_size(&c), 11, -1.5f, 1.5f);
    c.out = xmalloc_floats(att_out_size(&c));
    c.att = rand_floats((size_t)B * H * T * T, 13, -1, 1);  // garbage: the forward must write every entry
    c.w = rand_floats(att_out_size(&c), 12, -1, 1);
    c.dqkv = xmalloc_floats(att_qkv_size(&c));
    return c;
}
static void att_free(Att *c) { free(c->qkv), free(c->out), free(c->att), free(c->w), free(c->dqkv); }

static double attention_loss(void *p) {
    Att *c = p;
    attention_forward(c->out, c->att, c->qkv, c->B, c->T, c->H, c->KVH, c->hd);
    return dot_d(c->out, c->w, att_out_size(c));
}
static void attention_bwd(void *p) {
    Att *c = p;
    attention_loss(c);
    attention_backward(c->dqkv, c->w, c->qkv, c->att, c->B, c->T, c->H, c->KVH, c->hd);
}

// Straight from the definition, in double: softmax over t2 <= t of q.k / sqrt(hd), times v.
static void attention_ref(double *out, double *att, const float *qkv, int B, int T, int H, int KVH, int hd) {
    const int stride = (H + 2 * KVH) * hd;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int kvh = h / (H / KVH);
            for (int t = 0; t < T; t++) {
                const float *q = qkv + (b * T + t) * stride + h * hd;
                double *s = xmalloc((size_t)T * sizeof(double)), mx = -INFINITY, sum = 0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *k = qkv + (b * T + t2) * stride + (H + kvh) * hd;
                    s[t2] = 0;
                    for (int d = 0; d < hd; d++) s[t2] += (double)q[d] * k[d];
                    s[t2] /= sqrt((double)hd);
                    mx = fmax(mx, s[t2]);
                }
                for (int t2 = 0; t2 <= t; t2++) sum += s[t2] = exp(s[t2] - mx);
                double *a = att + ((b * H + h) * T + t) * T;
                for (int t2 = 0; t2 < T; t2++) a[t2] = t2 <= t ? s[t2] / sum : 0.0;
                for (int d = 0; d < hd; d++) {
                    double o = 0;
                    for (int t2 = 0; t2 <= t; t2++) o += a[t2] * qkv[(b * T + t2) * stride + (H + KVH + kvh) * hd + d];
                    out[(b * T + t) * H * hd + h * hd + d] = o;
                }
                free(s);
            }
        }
}

// sample = 0 checks every coordinate of dqkv against finite differences, else that many.
static void attention_case(int B, int T, int H, int KVH, int hd, size_t sample) {
    Att c = att_new(B, T, H, KVH, hd);
    attention_loss(&c);
    double *out = xmalloc(att_out_size(&c) * sizeof(double)), *att = xmalloc((size_t)B * H * T * T * sizeof(double));
    attention_ref(out, att, c.qkv, B, T, H, KVH, hd);
    CHECK_REF(c.out, out, att_out_size(&c), 1e-6);
    CHECK_REF(c.att, att, (size_t)B * H * T * T, 1e-6);
    int zeros = 1;
    for (int r = 0; r < B * H * T; r++)
        for (int t2 = r % T + 1; t2 < T; t2++) zeros &= c.att[(size_t)r * T + t2] == 0.0f;
    CHECKF(zeros, "att is not 0 above the diagonal (H=%d KVH=%d)", H, KVH);

    char name[64];
    snprintf(name, sizeof name, "attention T=%d H=%d KVH=%d hd=%d", T, H, KVH, hd);
    Param ps[] = {{"qkv", c.qkv, c.dqkv, att_qkv_size(&c), sample, 0}};
    GRADCHECK(name, attention_loss, attention_bwd, &c, ps, GRAD_TOL);
    free(out), free(att);
    att_free(&c);
}

// Small heads take the kernels' plain loops; hd >= 32 their 32-wide register blocks (40 =
// one block and a tail); T > 64 spans several key tiles (ATTENTION_TILE) and ends in a partial
// 4-query block.
TEST(attention_gqa_forward_backward) { attention_case(2, 5, 4, 2, 6, 0); }
TEST(attention_mha_forward_backward) { attention_case(2, 5, 3, 3, 6, 0); }
TEST(attention_mqa_forward_backward) { attention_case(1, 7, 4, 1, 5, 0); }
TEST(attention_wide_heads_forward_backward) { attention_case(2, 7, 2, 1, 40, 0); }
TEST(attention_long_sequence_forward_backward) { attention_case(1, 137, 2, 1, 5, 400); }
TEST(attention_long_wide_forward_backward) { attention_case(1, 101, 2, 1, 64, 300); }

static void attention_causal_case(int B, int T, int H, int KVH, int hd, int t0) {
    const int stride = (H + 2 * KVH) * hd;
    Att c = att_new(B, T, H, KVH, hd);
    attention_loss(&c);
    float *before = copy_floats(c.out, att_out_size(&c));
    // Change the keys and values of token t0 of the last batch row.
    for (int i = H * hd; i < stride; i++) c.qkv[((size_t)(B - 1) * T + t0) * stride + i] += 0.5f;
    attention_loss(&c);
    int leaks = 0, stuck = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *x = before + ((size_t)b * T + t) * H * hd, *y = c.out + ((size_t)b * T + t) * H * hd;
            int same = memcmp(x, y, H * hd * sizeof(float)) == 0;
            if (b == B - 1 && t >= t0)
                stuck += same;
            else
                leaks += !same;
        }
    CHECKF(leaks == 0, "T=%d: %d earlier outputs changed with the key/value of token %d", T, leaks, t0);
    CHECKF(stuck == 0, "T=%d: %d later outputs did not change with the key/value of token %d", T, stuck, t0);
    free(before);
    att_free(&c);
}

TEST(attention_is_causal) {
    attention_causal_case(2, 6, 4, 2, 6, 3);
    attention_causal_case(1, 137, 2, 1, 33, 70);  // a later key tile, a token inside a 4-query block
}

// ---------------------------------------------------------------- swiglu

typedef struct {
    int N, Hd;
    float *inp, *out, *w, *dinp;
} Swi;

static double swiglu_loss(void *p) {
    Swi *c = p;
    swiglu_forward(c->out, c->inp, c->N, c->Hd);
    return dot_d(c->out, c->w, (size_t)c->N * c->Hd);
}
static void swiglu_bwd(void *p) {
    Swi *c = p;
    swiglu_backward(c->dinp, c->w, c->inp, c->N, c->Hd);
}

TEST(swiglu_forward_backward) {
    const int N = 5, Hd = 9;
    Swi c = {N, Hd, rand_floats(N * 2 * Hd, 1, -3, 3), xmalloc_floats(N * Hd), rand_floats(N * Hd, 2, -1, 1),
             xmalloc_floats(N * 2 * Hd)};
    swiglu_forward(c.out, c.inp, N, Hd);
    double ref[N * Hd];
    for (int n = 0; n < N; n++)
        for (int j = 0; j < Hd; j++) ref[n * Hd + j] = silu_ref(c.inp[n * 2 * Hd + j]) * c.inp[n * 2 * Hd + Hd + j];
    CHECK_REF(c.out, ref, N * Hd, 1e-6);
    Param ps[] = {{"inp", c.inp, c.dinp, N * 2 * Hd, 0, 1}};
    GRADCHECK("swiglu", swiglu_loss, swiglu_bwd, &c, ps, GRAD_TOL);
    free(c.inp), free(c.out), free(c.w), free(c.dinp);
}

// ---------------------------------------------------------------- rope

typedef struct {
    int B, T, H, KVH, hd;
    float *table, *qkv, *work, *w, *dqkv, *tmp;
} Rope;

static size_t rope_size(const Rope *c) { return (size_t)c->B * c->T * (c->H + 2 * c->KVH) * c->hd; }

static double rope_loss(void *p) {
    Rope *c = p;
    memcpy(c->work, c->qkv, rope_size(c) * sizeof(float));
    rope_forward(c->work, c->table, c->B, c->T, c->H, c->KVH, c->hd);
    return dot_d(c->work, c->w, rope_size(c));
}
// rope_backward transforms a gradient in place; the test adds the result to dqkv.
static void rope_bwd(void *p) {
    Rope *c = p;
    memcpy(c->tmp, c->w, rope_size(c) * sizeof(float));
    rope_backward(c->tmp, c->table, c->B, c->T, c->H, c->KVH, c->hd);
    for (size_t i = 0; i < rope_size(c); i++) c->dqkv[i] += c->tmp[i];
}

TEST(rope_closed_form_inverse_and_backward) {
    const int B = 2, T = 5, H = 4, KVH = 2, hd = 6, half = hd / 2, stride = (H + 2 * KVH) * hd;
    const double theta = 10000.0;
    Rope c = {.B = B, .T = T, .H = H, .KVH = KVH, .hd = hd, .table = xmalloc_floats(T * hd)};
    const size_t n = rope_size(&c);
    c.qkv = rand_floats(n, 1, -1, 1);
    c.work = xmalloc_floats(n);
    c.w = rand_floats(n, 2, -1, 1);
    c.dqkv = xmalloc_floats(n);
    c.tmp = xmalloc_floats(n);
    rope_table(c.table, T, hd, (float)theta);

    // Forward against the closed form: pair (x_i, x_{i+hd/2}) of every q and k head rotated by
    // t * theta^(-2i/hd); v heads unchanged.
    rope_loss(&c);
    double *ref = xmalloc(n * sizeof(double));
    for (int tok = 0; tok < B * T; tok++) {
        const int t = tok % T;
        for (int h = 0; h < H + 2 * KVH; h++)
            for (int i = 0; i < half; i++) {
                const size_t i1 = (size_t)tok * stride + h * hd + i, i2 = i1 + half;
                const double a = c.qkv[i1], b = c.qkv[i2], ang = t * pow(theta, -2.0 * i / hd);
                if (h < H + KVH) {
                    ref[i1] = a * cos(ang) - b * sin(ang);
                    ref[i2] = a * sin(ang) + b * cos(ang);
                } else {
                    ref[i1] = a;
                    ref[i2] = b;
                }
            }
    }
    CHECK_REF(c.work, ref, n, 1e-6);
    int v_same = 1;
    for (int tok = 0; tok < B * T; tok++)
        v_same &= memcmp(c.work + tok * stride + (H + KVH) * hd, c.qkv + tok * stride + (H + KVH) * hd,
                         KVH * hd * sizeof(float)) == 0;
    CHECK(v_same);

    // Rotating back undoes the rotation.
    rope_backward(c.work, c.table, B, T, H, KVH, hd);
    CHECK_REL(c.work, c.qkv, n, 1e-6);

    Param ps[] = {{"qkv", c.qkv, c.dqkv, n, 0, 0}};
    GRADCHECK("rope", rope_loss, rope_bwd, &c, ps, GRAD_TOL);
    free(c.table), free(c.qkv), free(c.work), free(c.w), free(c.dqkv), free(c.tmp), free(ref);
}

TEST(rope_table_long_positions) {
    // Angles reach thousands of radians at long positions; the table must still match.
    const int T = 4096, hd = 10;
    float *table = xmalloc_floats((size_t)T * hd);
    rope_table(table, T, hd, 500000.0f);
    double worst = 0;
    for (int t = 0; t < T; t += 97)
        for (int i = 0; i < hd / 2; i++) {
            double ang = t * pow(500000.0, -2.0 * i / hd);
            worst = fmax(worst, fabs(table[(t * hd / 2 + i) * 2] - cos(ang)));
            worst = fmax(worst, fabs(table[(t * hd / 2 + i) * 2 + 1] - sin(ang)));
        }
    CHECKF(worst <= 1e-7, "rope table error %.3g", worst);
    free(table);
}

// ---------------------------------------------------------------- cross-entropy, softmax

static void crossentropy_ref(double *losses, const float *logits, const int *targets, int N, int V) {
    for (int n = 0; n < N; n++) {
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < V; i++) mx = fmax(mx, logits[n * V + i]);
        for (int i = 0; i < V; i++) sum += exp(logits[n * V + i] - mx);
        losses[n] = log(sum) + mx - logits[n * V + targets[n]];
    }
}

typedef struct {
    int N, V;
    int *targets;
    float *logits, *losses, *dlogits;
} Ce;

static double crossentropy_mean_loss(void *p) {
    Ce *c = p;
    crossentropy_forward(c->losses, c->logits, c->targets, c->N, c->V);
    double s = 0;
    for (int n = 0; n < c->N; n++) s += c->losses[n];
    return s / c->N;
}
// The fused call overwrites dlogits; the test adds its result to the accumulated gradient.
static void crossentropy_bwd(void *p) {
    Ce *c = p;
    float *tmp = xmalloc_floats((size_t)c->N * c->V), *losses = xmalloc_floats(c->N);
    crossentropy_forward_backward(losses, tmp, c->logits, c->targets, 1.0f / c->N, c->N, c->V);
    for (size_t i = 0; i < (size_t)c->N * c->V; i++) c->dlogits[i] += tmp[i];
    free(tmp), free(losses);
}

TEST(crossentropy_fused_and_in_place) {
    const int N = 5, V = 11;
    Ce c = {N, V, xmalloc(N * sizeof(int)), rand_floats(N * V, 1, -3, 3), xmalloc_floats(N), xmalloc_floats(N * V)};
    for (int n = 0; n < N; n++) c.targets[n] = (n * 7 + 2) % V;

    // dlogits against finite differences of the mean loss (dloss = 1/N).
    Param ps[] = {{"logits", c.logits, c.dlogits, N * V, 0, 0}};
    GRADCHECK("crossentropy", crossentropy_mean_loss, crossentropy_bwd, &c, ps, GRAD_TOL);

    // From here on one row has logits whose exp overflows float unless the max is subtracted
    // (they would also make the FD above noisy, being ~100x the others).
    c.logits[3 * V + 5] = 100.0f;
    c.logits[3 * V + 6] = 99.5f;
    double ref[N], dref[N * V];
    crossentropy_ref(ref, c.logits, c.targets, N, V);
    crossentropy_forward(c.losses, c.logits, c.targets, N, V);
    CHECK_REF(c.losses, ref, N, 1e-6);

    // The fused path: same losses, their sum, dlogits = (softmax - onehot) * dloss; the same
    // bits in place.
    const float dloss = 0.25f;
    float *losses2 = xmalloc_floats(N), *dlogits = xmalloc_floats(N * V);
    double total = crossentropy_forward_backward(losses2, dlogits, c.logits, c.targets, dloss, N, V);
    CHECK_REF(losses2, ref, N, 1e-6);
    double sum = 0;
    for (int n = 0; n < N; n++) sum += losses2[n];
    CHECK_NEAR(total, sum, 1e-12 * fabs(sum));
    for (int n = 0; n < N; n++) {
        double lse = ref[n] + c.logits[n * V + c.targets[n]];  // log sum exp of the row
        for (int i = 0; i < V; i++) dref[n * V + i] = (exp(c.logits[n * V + i] - lse) - (i == c.targets[n])) * dloss;
    }
    CHECK_REF(dlogits, dref, N * V, 1e-6);
    float *inplace = copy_floats(c.logits, N * V), *losses3 = xmalloc_floats(N);
    double total3 = crossentropy_forward_backward(losses3, inplace, inplace, c.targets, dloss, N, V);
    CHECK(memcmp(inplace, dlogits, N * V * sizeof(float)) == 0);
    CHECK(memcmp(losses3, losses2, N * sizeof(float)) == 0);
    CHECK(total3 == total);
    free(losses2), free(dlogits), free(inplace), free(losses3);
    free(c.targets), free(c.logits), free(c.losses), free(c.dlogits);
}

TEST(softmax_row_temperature) {
    const int V = 23;
    float *logits = rand_floats(V, 5, -4, 4), *probs = xmalloc_floats(V);
    const float temps[] = {1.0f, 0.7f, 2.5f};
    for (int k = 0; k < 3; k++) {
        softmax_row(probs, logits, V, temps[k]);
        double ref[V], mx = -INFINITY, sum = 0, psum = 0;
        for (int i = 0; i < V; i++) mx = fmax(mx, logits[i] / (double)temps[k]);
        for (int i = 0; i < V; i++) sum += ref[i] = exp(logits[i] / (double)temps[k] - mx);
        for (int i = 0; i < V; i++) ref[i] /= sum, psum += probs[i];
        CHECK_REF(probs, ref, V, 1e-6);
        CHECK_NEAR(psum, 1.0, 1e-6);
    }
    free(logits), free(probs);
}

// ---------------------------------------------------------------- whole-kernel properties

TEST(kernels_propagate_nan) {
    const int N = 4, C = 20, V = 20;
    float *x = rand_floats(N * C, 1, -1, 1), *y = xmalloc_floats(N * C), *w = rand_floats(C, 2, 0.5f, 1.5f);
    float *b = rand_floats(C, 3, -1, 1), *m = xmalloc_floats(N), *r = xmalloc_floats(N);
    x[1 * C + 13] = NAN;  // row 1 only
    layernorm_forward(y, m, r, x, w, b, N, C, 1e-5f);
    CHECK(isnan(y[1 * C]) && !isnan(y[0]));
    rmsnorm_forward(y, r, x, w, N, C, 1e-5f);
    CHECK(isnan(y[1 * C]) && !isnan(y[0]));
    gelu_forward(y, x, N * C);
    CHECK(isnan(y[1 * C + 13]) && !isnan(y[1 * C + 12]));
    int targets[4] = {0, 1, 2, 3};
    crossentropy_forward(r, x, targets, N, V);
    CHECK(isnan(r[1]) && !isnan(r[0]));
    double total = crossentropy_forward_backward(r, y, x, targets, 1.0f, N, V);
    CHECK(isnan(total) && isnan(y[1 * V]));
    free(x), free(y), free(w), free(b), free(m), free(r);
}

// Every kernel splits work so that each output is summed in a fixed order by one thread: the
// bits must not depend on the thread count.
TEST(kernels_same_bits_for_any_thread_count) {
    const int B = 4, T = 24, C = 100, H = 4, KVH = 2, hd = 10, N = B * T, V = 9;
    const int nqkv = N * (H + 2 * KVH) * hd;
    float *inp = rand_floats(N * C, 1, -1, 1), *dout = rand_floats(N * C, 2, -1, 1), *w = rand_floats(C, 3, 0.5f, 1.5f);
    float *mean = xmalloc_floats(N), *rstd = xmalloc_floats(N), *out = xmalloc_floats(N * C);
    float *qkv = rand_floats(nqkv, 4, -1, 1), *att = xmalloc_floats(B * H * T * T);
    float *wte = rand_floats(V * C, 5, -1, 1);
    int *tokens = xmalloc(N * sizeof(int));
    for (int n = 0; n < N; n++) tokens[n] = (n * 5) % V;
    layernorm_forward(out, mean, rstd, inp, w, w, N, C, 1e-5f);

    float *res[2];
    const size_t sizes[] = {N * C, C, C, C, V * C, T * C, nqkv, N * H * hd, C};
    size_t total = 0;
    for (int i = 0; i < 9; i++) total += sizes[i];
    const int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k == 0 ? 1 : 2);
        float *o = res[k] = xmalloc_floats(total);
        memset(o, 0, total * sizeof(float));
        float *dinp = o, *dw = dinp + N * C, *db = dw + C, *dw2 = db + C, *dwte = dw2 + C, *dwpe = dwte + V * C;
        float *dqkv = dwpe + T * C, *aout = dqkv + nqkv, *dbias = aout + N * H * hd;
        layernorm_backward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
        rmsnorm_forward(out, rstd, inp, w, N, C, 1e-5f);
        rmsnorm_backward(dinp, dw2, dout, inp, w, rstd, N, C);
        encoder_backward(dwte, dwpe, dout, tokens, N, T, C);
        attention_forward(aout, att, qkv, B, T, H, KVH, hd);
        attention_backward(dqkv, aout, qkv, att, B, T, H, KVH, hd);
        // Only matmul's dbias is this file's: the GEMMs run on OpenBLAS's own threads.
        float *dwm = xmalloc_floats(C * C), *wm = rand_floats(C * C, 6, -1, 1);
        memset(dwm, 0, C * C * sizeof(float));
        matmul_backward(NULL, dwm, dbias, dout, inp, wm, N, C, C);
        free(dwm), free(wm);
        layernorm_forward(out, mean, rstd, inp, w, w, N, C, 1e-5f);  // restore the saved stats for k = 1
    }
    omp_set_num_threads(saved);
    CHECK(memcmp(res[0], res[1], total * sizeof(float)) == 0);
    free(res[0]), free(res[1]);
    free(inp), free(dout), free(w), free(mean), free(rstd), free(out), free(qkv), free(att), free(wte), free(tokens);
}
