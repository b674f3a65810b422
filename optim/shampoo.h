// Shampoo as Distributed Shampoo does it (Shi et al. 2023, "A Distributed Data-Parallel
// PyTorch Implementation of the Distributed Shampoo Optimizer", github.com/facebookresearch/
// optimizers), and its eigenvalue-corrected form (George et al. 2018, EKFAC; Vyas et al.
// 2024; Eschenhagen et al. 2025, "Purifying Shampoo").
//
// Every tensor is cut into blocks of at most max_preconditioner_dim along each dimension.
// Per block, with G the gradient block and t the step:
//   L <- beta2 L + (1 - beta2) G G^T,  R <- beta2 R + (1 - beta2) G^T G   (beta2 = 1: sums)
//   M <- beta1 M + (1 - beta1) G,      M_hat = M / (1 - beta1^t)
//   standard: every precondition_frequency steps from start_preconditioning_step on,
//     L_inv = (L/bc2 + eps I)^(-1/4) by symmetric eigendecomposition, bc2 = 1 - beta2^t;
//     eigenvalues are floored (lambda <- lambda - min(lambda_min, 0) + eps), a failed float
//     decomposition is retried in double, and one that still fails keeps the previous root
//     (roots start as the identity).
//     P = L_inv M_hat R_inv, grafted per block: P <- P ||P_graft||_F / (||P||_F + 1e-16)
//     with P_graft = M_hat / (sqrt(v_hat) + grafting_epsilon), v the Adam / RMSProp second
//     moment of G. Before start_preconditioning_step the step is P_graft itself (P = M_hat
//     when grafting is none).
//   eigenvalue_corrected: the eigenbases Q_L, Q_R of L/bc2, R/bc2 are refreshed on the same
//     schedule (identity before); D <- beta2 D + (1 - beta2) (Q_L^T G Q_R)^2 every step;
//     P = Q_L [(Q_L^T M_hat Q_R) / (sqrt(D/bc2) + eps)] Q_R^T, no grafting. With
//     refresh_tolerance tau > 0 a refresh after the first is adaptive: B = Q^T (L/bc2) Q; if
//     ||B - diag(B)||_F <= tau ||B||_F the basis is kept, otherwise up to qr_iterations QR
//     iterations warm-started from Q run; the columns are then sorted by diag(B) ascending
//     and D is permuted with them.
//   W <- W (1 - lr wd) - lr P    (decoupled weight decay)
// Vectors (1 x n tensors: norms, biases) are preconditioned as Distributed Shampoo does
// 1-D tensors: one n x n factor per block with inverse root exponent 1/2.
//
// Bias corrections (optim/microstats.h, docs/crossfit.md; Nayak et al. 2026), standard
// variant, with `correction`:
//   crossfit   M is fed A's mean gradient; L, R the mean over micro-batch group B of
//              G_j G_j^T, G_j^T G_j (and the graft's v the mean over B of g_j^2)
//   variance   on root steps each eigenvalue's inverse root lambda^-e (e = 1/4; 1/2 for
//              vectors) becomes max(0, lambda^-e - e (e+1)/2 lambda^(-e-2) Var_k) (5/32 for e =
//              1/4), Var_k the variance of the mean over micro-batches of the projected factor
//              diagonal (Q^T L_j Q)_kk / bc2, L_j = beta2 L + (1 - beta2) G_j G_j^T. The projection
//              uses the eigenbasis Q of the last root (it is folded while the micro-batches
//              run, before this step's L exists; identity before the first root), and Var_k
//              is carried to the new eigenvectors by squared overlaps: Var_k = sum_i (Q^T
//              Q_new)_ik^2 Var_i. The bases are kept in the state (+ L and R sized per block).
//   full       both.  update_clip: Frobenius norm of each block's update; skip_nonfinite: a
//              block whose update is not finite keeps its (decayed) weights.
#pragma once
#include <math.h>

#include "../runtime/portable.h"
#include "microstats.h"

enum { SHAMPOO_STANDARD, SHAMPOO_EIGENVALUE_CORRECTED };
enum { SHAMPOO_GRAFT_AUTO, SHAMPOO_GRAFT_ADAM, SHAMPOO_GRAFT_RMSPROP, SHAMPOO_GRAFT_NONE };

// The grafting direction's element: m_hat / (sqrt(v / bc2) + eps).
static inline HOST_DEVICE float shampoo_graft_direction(float m_hat, float v, float inv_bc2, float eps) {
    return m_hat / (sqrtf(v * inv_bc2) + eps);
}

// The eigenvalue-corrected element in the rotated basis: m / (sqrt(d / bc2) + eps).
static inline HOST_DEVICE float shampoo_corrected(float m_rot, float d, float inv_bc2, float eps) {
    return m_rot / (sqrtf(d * inv_bc2) + eps);
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linalg.h"
#include "optimizer.h"

typedef struct {
    float beta1, beta2, epsilon, weight_decay;
    int bias_correction, max_preconditioner_dim, precondition_frequency, start_preconditioning_step;
    int grafting;
    float grafting_beta2, grafting_epsilon;
    int variant;
    float refresh_tolerance;
    int qr_iterations;
    CorrectionConfig corr;
    // Resolved by shampoo_check:
    int start, graft;
} ShampooHyper;

#define SKEY(name, type, def, range, choices, doc) {#name, type, offsetof(ShampooHyper, name), def, range, choices, doc}
static const ConfigKey shampoo_keys[] = {
    SKEY(beta1, KEY_FLOAT, "0.9", "[0,1)", NULL, "EMA of the gradient that is preconditioned (0: none)"),
    SKEY(beta2, KEY_FLOAT, "0.999", "(0,1]", NULL, "EMA of the factors L, R (and of D); 1: plain sums (AdaGrad)"),
    SKEY(epsilon, KEY_FLOAT, "1e-12", "(0,inf)", NULL, "added to the factors' eigenvalues (and to sqrt(D) when eigenvalue-corrected)"),
    SKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decoupled: W <- W (1 - lr wd)"),
    SKEY(bias_correction, KEY_BOOL, "true", NULL, NULL, "divide M by 1-beta1^t and the factors (and D) by 1-beta2^t"),
    SKEY(max_preconditioner_dim, KEY_INT, "1024", "[1,65536]", NULL, "block size: larger dimensions are cut into blocks"),
    SKEY(precondition_frequency, KEY_INT, "10", "[1,inf)", NULL, "steps between inverse-root (eigenbasis) computations"),
    SKEY(start_preconditioning_step, KEY_INT, "-1", "[-1,inf)", NULL,
         "first step with a computed root (-1: precondition_frequency); must be >= precondition_frequency"),
    SKEY(grafting, KEY_CHOICE, "\"auto\"", NULL, "auto|adam|rmsprop|none",
         "per-block step-size graft; auto: adam for standard, none for eigenvalue_corrected"),
    SKEY(grafting_beta2, KEY_FLOAT, "0.999", "(0,1)", NULL, "the graft's second-moment decay"),
    SKEY(grafting_epsilon, KEY_FLOAT, "1e-8", "(0,inf)", NULL, "the graft's denominator epsilon"),
    SKEY(variant, KEY_CHOICE, "\"standard\"", NULL, "standard|eigenvalue_corrected",
         "eigenvalue_corrected: Adam-style diagonal in the factors' eigenbasis"),
    SKEY(refresh_tolerance, KEY_FLOAT, "0", "[0,1]", NULL,
         "eigenvalue_corrected: skip a refresh when ||B-diag(B)||_F <= tau ||B||_F, else warm-started QR (0: full eigh)"),
    SKEY(qr_iterations, KEY_INT, "1", "[1,1000]", NULL, "eigenvalue_corrected with refresh_tolerance: most QR iterations per refresh"),
    CF_KEYS(ShampooHyper),
    KEY_END,
};
#undef SKEY

static inline void shampoo_check(void *hyper, const JsonConfig *c, const char *path) {
    ShampooHyper *h = (ShampooHyper *)hyper;
    char sub[160];
    h->start = h->start_preconditioning_step < 0 ? h->precondition_frequency : h->start_preconditioning_step;
    if (h->start < h->precondition_frequency) {
        snprintf(sub, sizeof sub, "%s.start_preconditioning_step", path);
        config_key_error(c, sub, "%d is below precondition_frequency %d (Distributed Shampoo requires start >= frequency)",
                         h->start, h->precondition_frequency);
    }
    const int ec = h->variant == SHAMPOO_EIGENVALUE_CORRECTED;
    h->graft = h->grafting == SHAMPOO_GRAFT_AUTO ? (ec ? SHAMPOO_GRAFT_NONE : SHAMPOO_GRAFT_ADAM) : h->grafting;
    if (ec && h->graft != SHAMPOO_GRAFT_NONE) {
        snprintf(sub, sizeof sub, "%s.grafting", path);
        config_key_error(c, sub, "eigenvalue-corrected Shampoo does not graft; use \"none\" or \"auto\"");
    }
    cf_check(&h->corr, c, path, 0, "shampoo");
    if (ec && h->corr.correction != CORRECTION_NONE) {
        snprintf(sub, sizeof sub, "%s.correction", path);
        config_key_error(c, sub, "the bias corrections are implemented for the standard variant (inverse roots of L "
                         "and R), not eigenvalue_corrected");
    }
}

static inline int shampoo_due(const ShampooHyper *h, long step) {
    return (step % h->precondition_frequency == 0 && step > h->start) || step == h->start;
}

// With a variance correction the state keeps the eigenbases Q_L, Q_R of the last roots.
static inline int shampoo_keeps_bases(const ShampooHyper *h) { return cf_corrects_variance(h->corr.correction); }

// --- blocking ---

typedef struct {
    int r0, c0, br, bc;  // rows [r0, r0 + br), columns [c0, c0 + bc) of the tensor
} ShampooBlock;

static inline int shampoo_is_vector(const ParamTensor *t) { return t->rows == 1; }
static inline int shampoo_ceil_div(int a, int b) { return (a + b - 1) / b; }

static inline int shampoo_num_blocks(int dim, const ParamTensor *t) {
    return (shampoo_is_vector(t) ? 1 : shampoo_ceil_div(t->rows, dim)) * shampoo_ceil_div(t->cols, dim);
}

// Block k in row-major block order.
static inline ShampooBlock shampoo_block(int dim, const ParamTensor *t, int k) {
    const int cb = shampoo_ceil_div(t->cols, dim), i = k / cb, j = k % cb;
    ShampooBlock b;
    b.r0 = shampoo_is_vector(t) ? 0 : i * dim;
    b.br = shampoo_is_vector(t) ? 1 : (t->rows - b.r0 < dim ? t->rows - b.r0 : dim);
    b.c0 = j * dim;
    b.bc = t->cols - b.c0 < dim ? t->cols - b.c0 : dim;
    return b;
}

// A block's state: L (br^2, none for vectors), R (bc^2), then L_inv, R_inv (standard) or
// Q_L, Q_R, D (br bc) (eigenvalue-corrected); with a variance correction then Q_L, Q_R.
static inline size_t shampoo_block_floats(const ShampooHyper *h, ShampooBlock b, int vec) {
    const size_t l = vec ? 0 : (size_t)b.br * b.br, r = (size_t)b.bc * b.bc;
    return 2 * (l + r) + (h->variant == SHAMPOO_EIGENVALUE_CORRECTED ? (size_t)b.br * b.bc : 0) +
           (shampoo_keeps_bases(h) ? l + r : 0);
}

// Per tensor: M (numel), the graft's v (numel, standard with grafting), then the blocks.
static inline size_t shampoo_head_floats(const ShampooHyper *h, const ParamTensor *t) {
    const int graft = h->variant == SHAMPOO_STANDARD && h->graft != SHAMPOO_GRAFT_NONE;
    return t->numel * (graft ? 2 : 1);
}

static inline size_t shampoo_tensor_state(const void *hyper, const ParamTensor *t) {
    const ShampooHyper *h = (const ShampooHyper *)hyper;
    size_t n = shampoo_head_floats(h, t);
    for (int k = 0; k < shampoo_num_blocks(h->max_preconditioner_dim, t); k++)
        n += shampoo_block_floats(h, shampoo_block(h->max_preconditioner_dim, t, k), shampoo_is_vector(t));
    return n;
}

static inline void shampoo_identity(float *A, int n) {
    memset(A, 0, (size_t)n * n * sizeof(float));
    for (int i = 0; i < n; i++) A[(size_t)i * n + i] = 1.0f;
}

// Roots (standard) and eigenbases (eigenvalue-corrected) start as the identity.
static inline void shampoo_init_tensor_state(const void *hyper, const ParamTensor *t, float *state) {
    const ShampooHyper *h = (const ShampooHyper *)hyper;
    const int vec = shampoo_is_vector(t);
    float *s = state + shampoo_head_floats(h, t);
    for (int k = 0; k < shampoo_num_blocks(h->max_preconditioner_dim, t); k++) {
        const ShampooBlock b = shampoo_block(h->max_preconditioner_dim, t, k);
        const size_t l = vec ? 0 : (size_t)b.br * b.br, r = (size_t)b.bc * b.bc;
        if (!vec) shampoo_identity(s + l + r, b.br);
        shampoo_identity(s + 2 * l + r, b.bc);
        if (shampoo_keeps_bases(h)) {
            if (!vec) shampoo_identity(s + 2 * (l + r), b.br);
            shampoo_identity(s + 2 * (l + r) + l, b.bc);
        }
        s += shampoo_block_floats(h, b, vec);
    }
}

// Scratch slots 0-4 by the matrix functions, 5-11 by the step, 12-13 by the corrections.
enum {
    SH_SLOT_B = 0, SH_SLOT_W, SH_SLOT_V, SH_SLOT_T, SH_SLOT_OUT,
    SH_SLOT_MHAT, SH_SLOT_TB, SH_SLOT_P, SH_SLOT_PAIRS, SH_SLOT_PERM, SH_SLOT_BM, SH_SLOT_QB,
    SH_SLOT_OVERLAP, SH_SLOT_VAR,
};

// out = (A/bc2 + eps I)^(-exponent) by symmetric eigendecomposition (eigenvalues floored as
// lambda - min(lambda_min, 0) + eps). Returns 0 on success; on failure (non-finite input,
// eigensolver failure in float and double, non-finite result) returns -1 and leaves out
// untouched, so the caller keeps its previous root.
static inline int shampoo_inverse_root(int n, const float *A, float bc2, float eps, double exponent, float *out) {
    const size_t nn = (size_t)n * n;
    float *B = la_scratch(SH_SLOT_B, nn), *w = la_scratch(SH_SLOT_W, (size_t)n), *V = la_scratch(SH_SLOT_V, nn);
    float *T = la_scratch(SH_SLOT_T, nn), *X = la_scratch(SH_SLOT_OUT, nn);
    for (size_t i = 0; i < nn; i++) B[i] = A[i] / bc2;
    if (!la_all_finite(B, nn) || la_eigh(n, B, n, w, V) < 0) return -1;
    const double shift = -fmin((double)w[0], 0.0) + eps;
    for (int j = 0; j < n; j++) {
        const float d = (float)pow((double)w[j] + shift, -exponent);
        for (int i = 0; i < n; i++) T[(size_t)i * n + j] = V[(size_t)i * n + j] * d;
    }
    la_gemm(0, 1, n, n, n, 1.0f, T, n, V, n, 0.0f, X, n);  // V diag(d) V^T
    if (!la_all_finite(X, nn)) return -1;
    memcpy(out, X, nn * sizeof(float));
    return 0;
}

// shampoo_inverse_root with the delta-method correction of each eigenvalue's inverse root:
// var_old[i] is the variance of the estimate of the factor along column i of Q (the basis of
// the last root); along the new eigenvector k it is taken as sum_i (Q^T V)_ik^2 var_old[i].
// d_k = max(0, lambda_k^-e - e (e + 1) / 2 lambda_k^(-e-2) Var_k). On success Q becomes the
// new eigenbasis V; on failure both out and Q are left untouched.
static inline int shampoo_inverse_root_corrected(int n, const float *A, float bc2, float eps, double exponent,
                                                 const float *var_old, float *Q, float *out) {
    const size_t nn = (size_t)n * n;
    float *B = la_scratch(SH_SLOT_B, nn), *w = la_scratch(SH_SLOT_W, (size_t)n), *V = la_scratch(SH_SLOT_V, nn);
    float *T = la_scratch(SH_SLOT_T, nn), *X = la_scratch(SH_SLOT_OUT, nn), *O = la_scratch(SH_SLOT_OVERLAP, nn);
    for (size_t i = 0; i < nn; i++) B[i] = A[i] / bc2;
    if (!la_all_finite(B, nn) || la_eigh(n, B, n, w, V) < 0) return -1;
    la_gemm(1, 0, n, n, n, 1.0f, Q, n, V, n, 0.0f, O, n);  // O = Q^T V
    const double shift = -fmin((double)w[0], 0.0) + eps;
    for (int j = 0; j < n; j++) {
        double var = 0;
        for (int i = 0; i < n; i++) var += (double)O[(size_t)i * n + j] * O[(size_t)i * n + j] * var_old[i];
        const float d = (float)fmax(cf_delta_inverse_power((double)w[j] + shift, exponent, var), 0.0);
        for (int i = 0; i < n; i++) T[(size_t)i * n + j] = V[(size_t)i * n + j] * d;
    }
    la_gemm(0, 1, n, n, n, 1.0f, T, n, V, n, 0.0f, X, n);  // V diag(d) V^T
    if (!la_all_finite(X, nn)) return -1;
    memcpy(out, X, nn * sizeof(float));
    memcpy(Q, V, nn * sizeof(float));
    return 0;
}

// The variance of the mean projected diagonal along each of n directions from the folded
// sums d1 = sum_j d_j, d2 = sum_j d_j^2 (unclipped: d scales by c^2) over n_v micro-batches:
// scale * sample variance / n_v, scale = ((1 - beta2) / bc2)^2.
static inline void shampoo_direction_variance(int n, const float *d1, const float *d2, float c2, int n_v, double scale,
                                              float *var) {
    const double nv = n_v, c4 = (double)c2 * c2;
    for (int k = 0; k < n; k++) {
        const double mean = c2 * (double)d1[k] / nv, mean_sq = c4 * (double)d2[k] / nv;
        const double sv = fmax(nv / (nv - 1.0) * (mean_sq - mean * mean), 0.0);
        var[k] = (float)(scale * sv / nv);
    }
}

typedef struct {
    float key;
    int idx;
} ShampooSortPair;

static inline int shampoo_pair_ascending(const void *a, const void *b) {
    const ShampooSortPair *x = (const ShampooSortPair *)a, *y = (const ShampooSortPair *)b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);  // stable
}

// Reorders the columns of Q (n x n) so that idx[i] becomes column i, and D (rows x cols)
// along `axis` (0: rows, 1: columns; D may be NULL).
static inline void shampoo_permute(int n, float *Q, const ShampooSortPair *p, float *D, int rows, int cols, int axis) {
    float *tmp = la_scratch(SH_SLOT_PERM, (size_t)n * n > (size_t)rows * cols ? (size_t)n * n : (size_t)rows * cols);
    memcpy(tmp, Q, (size_t)n * n * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) Q[(size_t)i * n + j] = tmp[(size_t)i * n + p[j].idx];
    if (!D) return;
    memcpy(tmp, D, (size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            D[(size_t)i * cols + j] = axis == 0 ? tmp[(size_t)p[i].idx * cols + j] : tmp[(size_t)i * cols + p[j].idx];
}

// Refreshes the eigenbasis Q (n x n) of A/bc2 for the eigenvalue-corrected variant: a full
// eigendecomposition (ascending eigenvalues) when `full`, else the adaptive rule (see the
// top of this file), permuting D (rows x cols) along `axis` with Q's columns. Returns 0 on
// success, -1 when the computation failed and Q was kept.
static inline int shampoo_refresh_basis(const ShampooHyper *h, int n, const float *A, float bc2, int full, float *Q,
                                        float *D, int rows, int cols, int axis) {
    const size_t nn = (size_t)n * n;
    float *B = la_scratch(SH_SLOT_B, nn);
    for (size_t i = 0; i < nn; i++) B[i] = A[i] / bc2;
    if (!la_all_finite(B, nn)) return -1;
    if (full) {
        float *w = la_scratch(SH_SLOT_W, (size_t)n), *V = la_scratch(SH_SLOT_V, nn);
        if (la_eigh(n, B, n, w, V) < 0) return -1;
        memcpy(Q, V, nn * sizeof(float));
        return 0;
    }
    float *T = la_scratch(SH_SLOT_T, nn), *Bm = la_scratch(SH_SLOT_BM, nn), *Qb = la_scratch(SH_SLOT_QB, nn);
    float *Qn = la_scratch(SH_SLOT_OUT, nn);
    la_gemm(0, 0, n, n, n, 1.0f, B, n, Q, n, 0.0f, T, n);   // T = (A/bc2) Q
    la_gemm(1, 0, n, n, n, 1.0f, Q, n, T, n, 0.0f, Bm, n);  // B = Q^T (A/bc2) Q
    memcpy(Qn, Q, nn * sizeof(float));
    for (int it = 0;; it++) {
        const double all = la_sumsq(Bm, nn);
        double diag = 0;
        for (int i = 0; i < n; i++) diag += (double)Bm[(size_t)i * n + i] * Bm[(size_t)i * n + i];
        if (sqrt(fmax(all - diag, 0.0)) <= h->refresh_tolerance * sqrt(all) || it >= h->qr_iterations) break;
        // One QR iteration on B: B = Qb Rb, B <- Rb Qb = Qb^T B Qb, Q <- Q Qb.
        if (la_qr(n, n, Bm, n, Qb, n) != 0) return -1;
        la_gemm(0, 0, n, n, n, 1.0f, Bm, n, Qb, n, 0.0f, T, n);
        la_gemm(1, 0, n, n, n, 1.0f, Qb, n, T, n, 0.0f, Bm, n);
        la_gemm(0, 0, n, n, n, 1.0f, Qn, n, Qb, n, 0.0f, T, n);
        memcpy(Qn, T, nn * sizeof(float));
    }
    if (!la_all_finite(Qn, nn)) return -1;
    memcpy(Q, Qn, nn * sizeof(float));
    ShampooSortPair *p = (ShampooSortPair *)la_scratch(SH_SLOT_PAIRS, (size_t)n * 2);
    for (int i = 0; i < n; i++) p[i].key = Bm[(size_t)i * n + i], p[i].idx = i;
    qsort(p, (size_t)n, sizeof *p, shampoo_pair_ascending);
    shampoo_permute(n, Q, p, D, rows, cols, axis);
    return 0;
}

// A failed root or basis keeps the previous one (Distributed Shampoo does the same and logs it).
static inline void shampoo_warn(int failed, const ParamTensor *t, long step, const char *what, int n) {
    if (failed)
        fprintf(stderr, "warning: shampoo: %s of the %dx%d factor of %s failed at step %ld; keeping the previous one\n",
                what, n, n, t->name, step);
}

// Per-tensor statistics of a block: with cross-fitting the sums over B of G_j G_j^T (br^2,
// none for vectors) and G_j^T G_j (bc^2); with a variance correction the sums over V of the
// projected diagonals d_j and d_j^2 along Q_L (br each, none for vectors) and Q_R (bc each).
static inline size_t shampoo_block_stats(const ShampooHyper *h, ShampooBlock b, int vec) {
    const size_t l = vec ? 0 : (size_t)b.br * b.br, r = (size_t)b.bc * b.bc;
    return (cf_crossfits(h->corr.correction) ? l + r : 0) +
           (cf_corrects_variance(h->corr.correction) ? 2 * ((vec ? 0 : (size_t)b.br) + b.bc) : 0);
}

// The step, plain (v == NULL) or corrected with the statistics v and this tensor's `stats`.
static inline void shampoo_step_impl(const void *hyper, const StepInfo *info, const ParamTensor *t, float *param,
                                     const float *grad, float *state, const MicroStatsView *v, const float *stats) {
    const ShampooHyper *h = (const ShampooHyper *)hyper;
    const size_t n = t->numel;
    const int vec = shampoo_is_vector(t), cols = t->cols, dim = h->max_preconditioner_dim;
    const int ec = h->variant == SHAMPOO_EIGENVALUE_CORRECTED;
    const long step = info->step;
    const float bc1 = h->bias_correction ? (float)(1.0 - pow(h->beta1, (double)step)) : 1.0f;
    const float bc2 = h->bias_correction && h->beta2 < 1.0f ? (float)(1.0 - pow(h->beta2, (double)step)) : 1.0f;
    const float f_alpha = h->beta2 < 1.0f ? 1.0f - h->beta2 : 1.0f, f_beta = h->beta2 < 1.0f ? h->beta2 : 1.0f;
    const int due = (step % h->precondition_frequency == 0 && step > h->start) || step == h->start;
    const int graft = !ec && h->graft != SHAMPOO_GRAFT_NONE;
    const int graft_only = graft && step < h->start;
    const float g_inv_bc2 = h->graft == SHAMPOO_GRAFT_ADAM ? (float)(1.0 / (1.0 - pow(h->grafting_beta2, (double)step))) : 1.0f;
    const float inv_bc2 = 1.0f / bc2, keep = 1.0f - info->lr * h->weight_decay, lr = info->lr;

    float *M = state, *V = graft ? state + n : NULL, *s = state + shampoo_head_floats(h, t);
    float *Mh = la_scratch(SH_SLOT_MHAT, n);
    // Corrections: M from A's mean gradient, the graft's v and L, R from B's micro-batches.
    const int split = v && v->v_is_b, variance = v && cf_corrects_variance(h->corr.correction);
    const float *A = split ? v->a_sum : NULL, *Q2 = split ? v->sq_sum : NULL;
    const float c_na = split ? v->clip / (float)v->n_a : 0.0f, c2 = v ? v->clip * v->clip : 1.0f;
    const float c2_nb = split ? c2 / (float)v->n_v : 0.0f;
    for (size_t i = 0; i < n; i++) {
        const float g_m = A ? c_na * A[i] : grad[i];
        M[i] = h->beta1 * M[i] + (1.0f - h->beta1) * g_m;
        Mh[i] = M[i] / bc1;
        if (V && Q2) V[i] = h->grafting_beta2 * V[i] + (1.0f - h->grafting_beta2) * (c2_nb * Q2[i]);
        else if (V) V[i] = h->grafting_beta2 * V[i] + (1.0f - h->grafting_beta2) * grad[i] * grad[i];
    }
    const float *st = stats;  // this tensor's statistics, block by block
    for (int k = 0; k < shampoo_num_blocks(dim, t); k++) {
        const ShampooBlock b = shampoo_block(dim, t, k);
        const int br = b.br, bc = b.bc;
        const size_t off = (size_t)b.r0 * cols + b.c0, l = vec ? 0 : (size_t)br * br, r = (size_t)bc * bc;
        const float *G = grad + off, *Mb = Mh + off;
        float *W = param + off, *L = s, *R = s + l, *Li = s + l + r, *Ri = s + 2 * l + r;
        float *T = la_scratch(SH_SLOT_TB, (size_t)br * bc), *P = la_scratch(SH_SLOT_P, (size_t)br * bc);
        if (split) {  // L, R <- f_beta L + f_alpha c^2 / n_B sum over B of G_j G_j^T, G_j^T G_j
            const float *SL = st, *SR = st + l, k = f_alpha * c2_nb;
            for (size_t i = 0; i < l; i++) L[i] = f_beta * L[i] + k * SL[i];
            for (size_t i = 0; i < r; i++) R[i] = f_beta * R[i] + k * SR[i];
            st += l + r;
        } else {
            if (!vec) la_gram(0, br, bc, f_alpha, G, cols, f_beta, L, br);
            la_gram(1, bc, br, f_alpha, G, cols, f_beta, R, bc);
        }
        if (!ec) {
            if (due && variance) {
                const float *dL1 = st, *dL2 = st + (vec ? 0 : br), *dR1 = dL2 + (vec ? 0 : br), *dR2 = dR1 + bc;
                float *QL = s + 2 * (l + r), *QR = QL + l, *var = la_scratch(SH_SLOT_VAR, (size_t)(br > bc ? br : bc));
                const double scale = ((double)f_alpha / bc2) * ((double)f_alpha / bc2);
                if (!vec) {
                    shampoo_direction_variance(br, dL1, dL2, c2, v->n_v, scale, var);
                    shampoo_warn(shampoo_inverse_root_corrected(br, L, bc2, h->epsilon, 0.25, var, QL, Li), t, step,
                                 "the corrected inverse root", br);
                }
                shampoo_direction_variance(bc, dR1, dR2, c2, v->n_v, scale, var);
                shampoo_warn(shampoo_inverse_root_corrected(bc, R, bc2, h->epsilon, vec ? 0.5 : 0.25, var, QR, Ri), t,
                             step, "the corrected inverse root", bc);
            } else if (due) {
                if (!vec) shampoo_warn(shampoo_inverse_root(br, L, bc2, h->epsilon, 0.25, Li), t, step, "the inverse root", br);
                shampoo_warn(shampoo_inverse_root(bc, R, bc2, h->epsilon, vec ? 0.5 : 0.25, Ri), t, step, "the inverse root", bc);
            }
            if (variance) st += 2 * ((vec ? 0 : (size_t)br) + bc);
            double pn = 0, gn = 0;
            for (int i = 0; i < br; i++)
                for (int j = 0; j < bc; j++) {
                    const size_t e = off + (size_t)i * cols + j;
                    const float d = graft ? shampoo_graft_direction(Mh[e], V[e], g_inv_bc2, h->grafting_epsilon) : 0.0f;
                    gn += (double)d * d;
                    if (graft_only) P[(size_t)i * bc + j] = d;
                }
            if (!graft_only) {
                if (vec) {
                    la_gemm(0, 0, 1, bc, bc, 1.0f, Mb, cols, Ri, bc, 0.0f, P, bc);  // P = m_hat R_inv
                } else {
                    la_gemm(0, 0, br, bc, br, 1.0f, Li, br, Mb, cols, 0.0f, T, bc);  // T = L_inv M_hat
                    la_gemm(0, 0, br, bc, bc, 1.0f, T, bc, Ri, bc, 0.0f, P, bc);     // P = T R_inv
                }
                if (graft) {
                    pn = la_sumsq(P, (size_t)br * bc);
                    const float scale = (float)(sqrt(gn) / (sqrt(pn) + 1e-16));
                    for (size_t i = 0; i < (size_t)br * bc; i++) P[i] *= scale;
                }
            }
        } else {
            float *QL = Li, *QR = Ri, *D = s + 2 * (l + r);
            if (due) {
                const int full = step == h->start || h->refresh_tolerance <= 0.0f;
                if (!vec) shampoo_warn(shampoo_refresh_basis(h, br, L, bc2, full, QL, D, br, bc, 0), t, step, "the eigenbasis", br);
                shampoo_warn(shampoo_refresh_basis(h, bc, R, bc2, full, QR, D, br, bc, 1), t, step, "the eigenbasis", bc);
            }
            // D <- beta2 D + (1 - beta2) (Q_L^T G Q_R)^2
            if (vec) {
                la_gemm(0, 0, 1, bc, bc, 1.0f, G, cols, QR, bc, 0.0f, P, bc);
            } else {
                la_gemm(1, 0, br, bc, br, 1.0f, QL, br, G, cols, 0.0f, T, bc);
                la_gemm(0, 0, br, bc, bc, 1.0f, T, bc, QR, bc, 0.0f, P, bc);
            }
            for (size_t i = 0; i < (size_t)br * bc; i++) D[i] = f_beta * D[i] + f_alpha * P[i] * P[i];
            // P = Q_L [(Q_L^T M_hat Q_R) / (sqrt(D/bc2) + eps)] Q_R^T
            if (vec) {
                la_gemm(0, 0, 1, bc, bc, 1.0f, Mb, cols, QR, bc, 0.0f, T, bc);
                for (int j = 0; j < bc; j++) T[j] = shampoo_corrected(T[j], D[j], inv_bc2, h->epsilon);
                la_gemm(0, 1, 1, bc, bc, 1.0f, T, bc, QR, bc, 0.0f, P, bc);
            } else {
                la_gemm(1, 0, br, bc, br, 1.0f, QL, br, Mb, cols, 0.0f, T, bc);
                la_gemm(0, 0, br, bc, bc, 1.0f, T, bc, QR, bc, 0.0f, P, bc);
                for (size_t i = 0; i < (size_t)br * bc; i++) P[i] = shampoo_corrected(P[i], D[i], inv_bc2, h->epsilon);
                la_gemm(0, 1, br, bc, bc, 1.0f, P, bc, QR, bc, 0.0f, T, bc);
                la_gemm(0, 0, br, bc, br, 1.0f, QL, br, T, bc, 0.0f, P, bc);
            }
        }
        float p_scale = 1.0f;  // the safeguards (corrections only)
        if (v && (h->corr.update_clip > 0.0f || h->corr.skip_nonfinite)) {
            const double pn = sqrt(la_sumsq(P, (size_t)br * bc));
            if (h->corr.skip_nonfinite && !isfinite(pn)) p_scale = 0.0f;
            else if (h->corr.update_clip > 0.0f && pn > h->corr.update_clip) p_scale = (float)(h->corr.update_clip / pn);
        }
        if (p_scale != 1.0f)
            for (size_t i = 0; i < (size_t)br * bc; i++) P[i] = p_scale == 0.0f ? 0.0f : P[i] * p_scale;
        for (int i = 0; i < br; i++)
            for (int j = 0; j < bc; j++) {
                float *w = W + (size_t)i * cols + j;
                *w = keep * *w - lr * P[(size_t)i * bc + j];
            }
        s += shampoo_block_floats(h, b, vec);
    }
}

static inline void shampoo_step_tensor(const void *hyper, const StepInfo *info, const ParamTensor *t, float *param,
                                       const float *grad, float *state) {
    shampoo_step_impl(hyper, info, t, param, grad, state, NULL, NULL);
}

// --- Bias corrections ---

static inline void shampoo_stats_need(const void *hyper, MicroStatsNeed *need) {
    const ShampooHyper *h = (const ShampooHyper *)hyper;
    const CorrectionConfig *cc = &h->corr;
    memset(need, 0, sizeof *need);
    if (cc->correction == CORRECTION_NONE) return;
    need->active = 1;
    need->split = cc->split;
    need->main_split = cf_crossfits(cc->correction);
    need->a_sum = need->main_split;
    need->sq = need->main_split && h->graft != SHAMPOO_GRAFT_NONE;  // the graft's v from B
    need->tensor_fold = 1;
    need->main_variance = cf_corrects_variance(cc->correction);
    need->fold_reads_state = need->main_variance;
}

static inline size_t shampoo_stats_tensor_floats(const void *hyper, const ParamTensor *t) {
    const ShampooHyper *h = (const ShampooHyper *)hyper;
    size_t n = 0;
    for (int k = 0; k < shampoo_num_blocks(h->max_preconditioner_dim, t); k++)
        n += shampoo_block_stats(h, shampoo_block(h->max_preconditioner_dim, t, k), shampoo_is_vector(t));
    return n;
}

// Folds one V micro-batch's gradient g_j of the tensor: the Gram sums (cross-fitting), and on
// root steps the projected diagonals along the current bases (variance): d_L = row sums of
// (Q_L^T G_j)^2, d_R = column sums of (G_j Q_R)^2.
static inline void shampoo_stats_fold_tensor(const void *hyper, const StepInfo *info, const ParamTensor *t,
                                             const float *g_j, const float *state, float *stats) {
    const ShampooHyper *h = (const ShampooHyper *)hyper;
    const int vec = shampoo_is_vector(t), cols = t->cols, dim = h->max_preconditioner_dim;
    const int split = cf_crossfits(h->corr.correction), variance = cf_corrects_variance(h->corr.correction);
    const int due = variance && shampoo_due(h, info->step);
    const float *s = state + shampoo_head_floats(h, t);
    float *st = stats;
    for (int k = 0; k < shampoo_num_blocks(dim, t); k++) {
        const ShampooBlock b = shampoo_block(dim, t, k);
        const int br = b.br, bc = b.bc;
        const size_t off = (size_t)b.r0 * cols + b.c0, l = vec ? 0 : (size_t)br * br, r = (size_t)bc * bc;
        const float *G = g_j + off;
        if (split) {
            if (!vec) la_gram(0, br, bc, 1.0f, G, cols, 1.0f, st, br);
            la_gram(1, bc, br, 1.0f, G, cols, 1.0f, st + l, bc);
            st += l + r;
        }
        if (variance) {
            float *dL1 = st, *dL2 = st + (vec ? 0 : br), *dR1 = dL2 + (vec ? 0 : br), *dR2 = dR1 + bc;
            if (due) {
                const float *QL = s + 2 * (l + r), *QR = QL + l;
                float *T = la_scratch(SH_SLOT_TB, (size_t)br * bc);
                if (!vec) {
                    la_gemm(1, 0, br, bc, br, 1.0f, QL, br, G, cols, 0.0f, T, bc);  // Q_L^T G_j
                    for (int i = 0; i < br; i++) {
                        const float d = (float)la_sumsq(T + (size_t)i * bc, (size_t)bc);
                        dL1[i] += d;
                        dL2[i] += d * d;
                    }
                }
                la_gemm(0, 0, br, bc, bc, 1.0f, G, cols, QR, bc, 0.0f, T, bc);  // G_j Q_R
                for (int j = 0; j < bc; j++) {
                    double d = 0;
                    for (int i = 0; i < br; i++) d += (double)T[(size_t)i * bc + j] * T[(size_t)i * bc + j];
                    dR1[j] += (float)d;
                    dR2[j] += (float)(d * d);
                }
            }
            st += 2 * ((vec ? 0 : (size_t)br) + bc);
        }
        s += shampoo_block_floats(h, b, vec);
    }
}

static inline void shampoo_step_tensor_stats(const void *hyper, const StepInfo *info, const MicroStatsView *v,
                                             const ParamTensor *t, float *param, const float *grad, float *state,
                                             const float *stats) {
    shampoo_step_impl(hyper, info, t, param, grad, state, v, stats);
}

// Multiply-adds per step, amortised (for spreading tensors over ranks): per block the
// factor updates and the products with the roots or bases, plus an eigendecomposition
// (about 9 n^3) of each factor every precondition_frequency steps.
static inline double shampoo_cost(const void *hyper, const ParamTensor *t) {
    const ShampooHyper *h = (const ShampooHyper *)hyper;
    const int vec = shampoo_is_vector(t), ec = h->variant == SHAMPOO_EIGENVALUE_CORRECTED;
    double c = 0;
    for (int k = 0; k < shampoo_num_blocks(h->max_preconditioner_dim, t); k++) {
        const ShampooBlock b = shampoo_block(h->max_preconditioner_dim, t, k);
        const double r = b.br, q = b.bc, l = vec ? 0.0 : r;
        c += (ec ? 4.0 : 2.0) * (l * l * q + r * q * q) + 9.0 * (l * l * l + q * q * q) / h->precondition_frequency;
    }
    return c;
}

static const OptimizerDef optimizer_shampoo = {
    .name = "shampoo",
    .summary = "Shampoo with blocking, grafting and the eigenvalue-corrected variant (Distributed Shampoo, Shi et al. 2023)",
    .keys = shampoo_keys,
    .hyper_size = sizeof(ShampooHyper),
    .check = shampoo_check,
    .tensor_state = shampoo_tensor_state,
    .init_tensor_state = shampoo_init_tensor_state,
    .step_tensor = shampoo_step_tensor,
    .cost = shampoo_cost,
    .stats_need = shampoo_stats_need,
    .stats_tensor_floats = shampoo_stats_tensor_floats,
    .stats_fold_tensor = shampoo_stats_fold_tensor,
    .step_tensor_stats = shampoo_step_tensor_stats,
};
#endif  // OPTIM_RULES_ONLY
