// SOAP: Adam in the eigenbasis of Shampoo's factors (Vyas et al. 2024, "SOAP: Improving
// and Stabilizing Shampoo using Adam", official code github.com/nikhilvyas/SOAP, soap.py).
// For a 2-D gradient G (m x n), with gb = shampoo_beta (or beta2 when negative):
//   first step only: L = (1-gb) G G^T, R = (1-gb) G^T G, Q_L, Q_R = their eigenvectors by
//     eigenvalue, descending (eigh); the weights do not move
//   then, with s counting the steps after the first:
//     G' = Q_L^T G Q_R
//     m <- beta1 m + (1-beta1) G',  v <- beta2 v + (1-beta2) G'^2      (moments in the rotated basis)
//     N = Q_L [m / (sqrt(v) + eps)] Q_R^T   (normalize_grads: N / (1e-30 + rms(N)))
//     W <- W - lr sqrt(1-beta2^s)/(1-beta1^s) N      (correct_bias; else W <- W - lr N)
//     W <- W (1 - lr wd)                              (weight decay after the update, as the reference)
//     L <- gb L + (1-gb) G G^T,  R <- gb R + (1-gb) G^T G
//     every precondition_frequency steps (s % f == 0): for each factor, order Q's columns by
//     the estimated eigenvalues diag(Q^T L Q), descending, permute v along that dimension
//     to match, and take Q = qr(L Q) (one power iteration); m is rotated into the new basis
// A dimension larger than max_precond_dim is not rotated (its Q is the identity). Vectors
// (1 x n: norms, biases) are 1-D for the reference: unrotated (plain Adam with SOAP's
// betas) unless precondition_1d, which rotates them by the eigenbasis of g g^T.
// State: a step counter, m, v, then L, Q_L, R, Q_R for the rotated dimensions.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

// Adam's moments for one rotated element; returns m / (sqrt(v) + eps).
static inline HOST_DEVICE float soap_moments(float beta1, float beta2, float eps, float g, float *m, float *v) {
    *m = beta1 * *m + (1.0f - beta1) * g;
    *v = beta2 * *v + (1.0f - beta2) * g * g;
    return *m / (sqrtf(*v) + eps);
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linalg.h"
#include "optimizer.h"

typedef struct {
    float beta1, beta2, shampoo_beta, eps, weight_decay;
    int precondition_frequency, max_precond_dim, precondition_1d, normalize_grads, correct_bias;
} SoapHyper;

#define OKEY(name, type, def, range, choices, doc) {#name, type, offsetof(SoapHyper, name), def, range, choices, doc}
static const ConfigKey soap_keys[] = {
    OKEY(beta1, KEY_FLOAT, "0.95", "[0,1)", NULL, "Adam's first-moment decay"),
    OKEY(beta2, KEY_FLOAT, "0.95", "[0,1)", NULL, "Adam's second-moment decay"),
    OKEY(shampoo_beta, KEY_FLOAT, "-1", "[-1,1)", NULL, "decay of the factors L, R; negative: beta2"),
    OKEY(eps, KEY_FLOAT, "1e-8", "(0,inf)", NULL, "Adam's epsilon, added to sqrt(v)"),
    OKEY(weight_decay, KEY_FLOAT, "0.01", "[0,inf)", NULL, "W <- W (1 - lr wd), after the update"),
    OKEY(precondition_frequency, KEY_INT, "10", "[1,inf)", NULL, "steps between eigenbasis refreshes (QR power iteration)"),
    OKEY(max_precond_dim, KEY_INT, "10000", "[1,inf)", NULL, "dimensions larger than this are not rotated"),
    OKEY(precondition_1d, KEY_BOOL, "false", NULL, NULL, "rotate vectors (norms, biases) too"),
    OKEY(normalize_grads, KEY_BOOL, "false", NULL, NULL, "divide each tensor's update by its RMS"),
    OKEY(correct_bias, KEY_BOOL, "true", NULL, NULL, "Adam's bias correction, folded into the step size"),
    KEY_END,
};
#undef OKEY

// Which dimensions are rotated.
static inline void soap_sides(const SoapHyper *h, const ParamTensor *t, int *left, int *right) {
    if (t->rows == 1) {
        *left = 0;
        *right = h->precondition_1d && t->cols <= h->max_precond_dim;
    } else {
        *left = t->rows <= h->max_precond_dim;
        *right = t->cols <= h->max_precond_dim;
    }
}

static inline size_t soap_tensor_state(const void *hyper, const ParamTensor *t) {
    int left, right;
    soap_sides((const SoapHyper *)hyper, t, &left, &right);
    const size_t m = (size_t)t->rows, n = (size_t)t->cols;
    return 1 + 2 * t->numel + (left ? 2 * m * m : 0) + (right ? 2 * n * n : 0);
}

typedef struct {
    int m, n, left, right;
    float *step, *exp_avg, *exp_avg_sq, *GGL, *QL, *GGR, *QR;
} SoapState;

static inline SoapState soap_state(const SoapHyper *h, const ParamTensor *t, float *state) {
    SoapState s;
    soap_sides(h, t, &s.left, &s.right);
    s.m = t->rows, s.n = t->cols;
    const size_t mm = s.left ? (size_t)s.m * s.m : 0, nn = s.right ? (size_t)s.n * s.n : 0;
    s.step = state;
    s.exp_avg = state + 1;
    s.exp_avg_sq = s.exp_avg + t->numel;
    s.GGL = s.exp_avg_sq + t->numel;
    s.QL = s.GGL + mm;
    s.GGR = s.QL + mm;
    s.QR = s.GGR + nn;
    return s;
}

// Scratch slots: 0-2 by the projections and the step, 3-7 by the basis computations.
enum { SOAP_SLOT_T = 0, SOAP_SLOT_T2, SOAP_SLOT_X, SOAP_SLOT_M, SOAP_SLOT_W, SOAP_SLOT_V, SOAP_SLOT_PAIRS, SOAP_SLOT_PI };

// out = Q_L^T X Q_R (back: Q_L X Q_R^T), with unrotated sides left alone. out may alias X.
static inline void soap_project(const SoapState *s, const float *X, float *out, int back) {
    const int m = s->m, n = s->n;
    float *T1 = la_scratch(SOAP_SLOT_T, (size_t)m * n), *T2 = la_scratch(SOAP_SLOT_T2, (size_t)m * n);
    const float *src = X;
    if (s->left) {
        la_gemm(back ? 0 : 1, 0, m, n, m, 1.0f, s->QL, m, src, n, 0.0f, T1, n);
        src = T1;
    }
    if (s->right) {
        float *dst = src == T1 ? T2 : T1;
        la_gemm(0, back ? 1 : 0, m, n, n, 1.0f, src, n, s->QR, n, 0.0f, dst, n);
        src = dst;
    }
    if (src != out) memcpy(out, src, (size_t)m * n * sizeof(float));
}

// GG <- gb GG + (1 - gb) (G G^T or G^T G) for the rotated sides.
static inline void soap_update_factors(const SoapState *s, const float *G, float gb) {
    if (s->left) la_gram(0, s->m, s->n, 1.0f - gb, G, s->n, gb, s->GGL, s->m);
    if (s->right) la_gram(1, s->n, s->m, 1.0f - gb, G, s->n, gb, s->GGR, s->n);
}

// Q = eigenvectors of GG (+1e-30 I), by eigenvalue descending; the identity (with a
// warning) if the decomposition fails in float and double, where the reference raises.
static inline void soap_eigh_basis(int n, const float *GG, float *Q, const char *name) {
    const size_t nn = (size_t)n * n;
    float *B = la_scratch(SOAP_SLOT_M, nn), *w = la_scratch(SOAP_SLOT_W, (size_t)n), *V = la_scratch(SOAP_SLOT_V, nn);
    memcpy(B, GG, nn * sizeof(float));
    for (int i = 0; i < n; i++) B[(size_t)i * n + i] += 1e-30f;
    if (la_eigh(n, B, n, w, V) < 0) {
        fprintf(stderr, "warning: soap: eigendecomposition of the %dx%d factor of %s failed; starting from the identity\n", n, n, name);
        memset(Q, 0, nn * sizeof(float));
        for (int i = 0; i < n; i++) Q[(size_t)i * n + i] = 1.0f;
        return;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) Q[(size_t)i * n + j] = V[(size_t)i * n + (n - 1 - j)];
}

typedef struct {
    float key;
    int idx;
} SoapSortPair;

static inline int soap_pair_descending(const void *a, const void *b) {
    const SoapSortPair *x = (const SoapSortPair *)a, *y = (const SoapSortPair *)b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

// One refresh of the basis of one side: sort Q's columns by diag(Q^T GG Q), descending,
// permute v (rows x cols) along `axis` to match, then Q = qr(GG Q). Keeps Q if QR fails.
static inline void soap_refresh_side(int n, const float *GG, float *Q, float *v, int rows, int cols, int axis) {
    const size_t nn = (size_t)n * n;
    float *T = la_scratch(SOAP_SLOT_M, nn), *PI = la_scratch(SOAP_SLOT_PI, nn);
    SoapSortPair *p = (SoapSortPair *)la_scratch(SOAP_SLOT_PAIRS, (size_t)n * 2);
    la_gemm(0, 0, n, n, n, 1.0f, GG, n, Q, n, 0.0f, T, n);  // GG Q
    for (int j = 0; j < n; j++) {
        double e = 0;
        for (int i = 0; i < n; i++) e += (double)Q[(size_t)i * n + j] * T[(size_t)i * n + j];
        p[j].key = (float)e, p[j].idx = j;
    }
    qsort(p, (size_t)n, sizeof *p, soap_pair_descending);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) PI[(size_t)i * n + j] = T[(size_t)i * n + p[j].idx];  // GG Q[:, sorted]
    if (la_qr(n, n, PI, n, PI, n) != 0 || !la_all_finite(PI, nn)) return;
    memcpy(Q, PI, nn * sizeof(float));
    float *tmp = la_scratch(SOAP_SLOT_M, (size_t)rows * cols);
    memcpy(tmp, v, (size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            v[(size_t)i * cols + j] = axis == 0 ? tmp[(size_t)p[i].idx * cols + j] : tmp[(size_t)i * cols + p[j].idx];
}

static inline void soap_step_tensor(const void *hyper, const StepInfo *info, const ParamTensor *t, float *param,
                                    const float *grad, float *state) {
    const SoapHyper *h = (const SoapHyper *)hyper;
    const SoapState s = soap_state(h, t, state);
    const size_t n = t->numel;
    const float gb = h->shampoo_beta >= 0.0f ? h->shampoo_beta : h->beta2;
    if (s.step[0] == 0.0f) {  // first step: initialise the factors and bases only
        soap_update_factors(&s, grad, gb);
        if (s.left) soap_eigh_basis(s.m, s.GGL, s.QL, t->name);
        if (s.right) soap_eigh_basis(s.n, s.GGR, s.QR, t->name);
        s.step[0] = 1.0f;
        return;
    }
    s.step[0] += 1.0f;
    const long k = (long)s.step[0] - 1;  // the reference's state["step"]
    float *X = la_scratch(SOAP_SLOT_X, n);
    soap_project(&s, grad, X, 0);
    for (size_t i = 0; i < n; i++) X[i] = soap_moments(h->beta1, h->beta2, h->eps, X[i], &s.exp_avg[i], &s.exp_avg_sq[i]);
    soap_project(&s, X, X, 1);
    double step_size = info->lr;
    if (h->correct_bias) step_size *= sqrt(1.0 - pow(h->beta2, (double)k)) / (1.0 - pow(h->beta1, (double)k));
    float scale = (float)step_size;
    if (h->normalize_grads) scale = (float)(step_size / (1e-30 + sqrt(la_sumsq(X, n) / (double)n)));
    const float keep = 1.0f - info->lr * h->weight_decay;
    for (size_t i = 0; i < n; i++) param[i] = (param[i] - scale * X[i]) * keep;
    soap_update_factors(&s, grad, gb);
    if (k % h->precondition_frequency == 0 && (s.left || s.right)) {
        soap_project(&s, s.exp_avg, s.exp_avg, 1);  // m back to the parameter basis
        if (s.left) soap_refresh_side(s.m, s.GGL, s.QL, s.exp_avg_sq, s.m, s.n, 0);
        if (s.right) soap_refresh_side(s.n, s.GGR, s.QR, s.exp_avg_sq, s.m, s.n, 1);
        soap_project(&s, s.exp_avg, s.exp_avg, 0);  // and into the new one
    }
}

// Multiply-adds per step, amortised (for spreading tensors over ranks): the rotations of
// G and of the update and the factor updates every step, and each refresh's L Q, QR and
// the rotation of m every precondition_frequency steps.
static inline double soap_cost(const void *hyper, const ParamTensor *t) {
    const SoapHyper *h = (const SoapHyper *)hyper;
    int left, right;
    soap_sides(h, t, &left, &right);
    const double m = t->rows, n = t->cols, side = (left ? m * m * n : 0.0) + (right ? m * n * n : 0.0);
    const double cube = (left ? m * m * m : 0.0) + (right ? n * n * n : 0.0);
    return 3.0 * side + (4.0 * cube + 2.0 * side) / h->precondition_frequency + 4.0 * (double)t->numel;
}

static const OptimizerDef optimizer_soap = {
    .name = "soap",
    .summary = "SOAP: Adam in the eigenbasis of Shampoo's factors (Vyas et al. 2024)",
    .keys = soap_keys,
    .hyper_size = sizeof(SoapHyper),
    .tensor_state = soap_tensor_state,
    .step_tensor = soap_step_tensor,
    .cost = soap_cost,
};
#endif  // OPTIM_RULES_ONLY
