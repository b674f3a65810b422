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
#pragma once
#include <math.h>

#include "../runtime/portable.h"

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
}

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
// Q_L, Q_R, D (br bc) (eigenvalue-corrected).
static inline size_t shampoo_block_floats(const ShampooHyper *h, ShampooBlock b, int vec) {
    const size_t l = vec ? 0 : (size_t)b.br * b.br, r = (size_t)b.bc * b.bc;
    return 2 * (l + r) + (h->variant == SHAMPOO_EIGENVALUE_CORRECTED ? (size_t)b.br * b.bc : 0);
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
        s += shampoo_block_floats(h, b, vec);
    }
}

// Scratch slots 0-4 by the matrix functions, 5-11 by the step.
enum {
    SH_SLOT_B = 0, SH_SLOT_W, SH_SLOT_V, SH_SLOT_T, SH_SLOT_OUT,
    SH_SLOT_MHAT, SH_SLOT_TB, SH_SLOT_P, SH_SLOT_PAIRS, SH_SLOT_PERM, SH_SLOT_BM, SH_SLOT_QB,
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

static inline void shampoo_step_tensor(const void *hyper, const StepInfo *info, const ParamTensor *t, float *param,
                                       const float *grad, float *state) {
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
    for (size_t i = 0; i < n; i++) {
        M[i] = h->beta1 * M[i] + (1.0f - h->beta1) * grad[i];
        Mh[i] = M[i] / bc1;
        if (V) V[i] = h->grafting_beta2 * V[i] + (1.0f - h->grafting_beta2) * grad[i] * grad[i];
    }
    for (int k = 0; k < shampoo_num_blocks(dim, t); k++) {
        const ShampooBlock b = shampoo_block(dim, t, k);
        const int br = b.br, bc = b.bc;
        const size_t off = (size_t)b.r0 * cols + b.c0, l = vec ? 0 : (size_t)br * br, r = (size_t)bc * bc;
        const float *G = grad + off, *Mb = Mh + off;
        float *W = param + off, *L = s, *R = s + l, *Li = s + l + r, *Ri = s + 2 * l + r;
        float *T = la_scratch(SH_SLOT_TB, (size_t)br * bc), *P = la_scratch(SH_SLOT_P, (size_t)br * bc);
        if (!vec) la_gram(0, br, bc, f_alpha, G, cols, f_beta, L, br);
        la_gram(1, bc, br, f_alpha, G, cols, f_beta, R, bc);
        if (!ec) {
            if (due) {
                if (!vec) shampoo_warn(shampoo_inverse_root(br, L, bc2, h->epsilon, 0.25, Li), t, step, "the inverse root", br);
                shampoo_warn(shampoo_inverse_root(bc, R, bc2, h->epsilon, vec ? 0.5 : 0.25, Ri), t, step, "the inverse root", bc);
            }
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
        for (int i = 0; i < br; i++)
            for (int j = 0; j < bc; j++) {
                float *w = W + (size_t)i * cols + j;
                *w = keep * *w - lr * P[(size_t)i * bc + j];
            }
        s += shampoo_block_floats(h, b, vec);
    }
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
};
#endif  // OPTIM_RULES_ONLY
