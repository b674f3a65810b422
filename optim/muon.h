// Muon: momentum orthogonalised by Newton-Schulz (Keller Jordan 2024,
// github.com/KellerJordan/Muon; the "sum" momentum and the 0.2 sqrt(max(out, in)) scale
// follow Moonlight, Liu et al. 2025, "Muon is Scalable for LLM Training").
//   ema momentum   M <- beta M + (1 - beta) G,  U = nesterov ? (1 - beta) G + beta M : M
//   sum momentum   M <- beta M + G,             U = nesterov ? G + beta M : M
//   O = NS(U): X = U / (||U||_F + ns_eps), then ns_steps times X <- a X + (b A + c A^2) X
//       with A = X X^T formed on the smaller side (a tall X uses X <- a X + X (b A + c A^2),
//       A = X^T X, which is the same polynomial); coefficients (a, b, c) per iteration
//   W <- W (1 - lr wd) - lr s O,  s = sqrt(max(1, out/in)) | rms_target sqrt(max(out, in)) | 1
// Only hidden 2-D matrices (q, k, v, o, mlp): embeddings, head, norms and biases must be
// routed to another group. q, k and v of a fused qkv are separate tensors, so each is
// orthogonalised on its own.
// State: M, one float per parameter.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

enum { MUON_EMA, MUON_SUM };
enum { MUON_SCALE_SHAPE, MUON_SCALE_RMS, MUON_SCALE_NONE };

// Advances the momentum with gradient g and returns the direction to orthogonalise.
static inline HOST_DEVICE float muon_momentum(float beta, int form, int nesterov, float g, float *m) {
    if (form == MUON_SUM) {
        *m = beta * *m + g;
        return nesterov ? g + beta * *m : *m;
    }
    *m = beta * *m + (1.0f - beta) * g;
    return nesterov ? (1.0f - beta) * g + beta * *m : *m;
}

// The update multiplier for a rows x cols (fan_out x fan_in) matrix.
static inline HOST_DEVICE float muon_scale(int rule, float rms_target, int rows, int cols) {
    if (rule == MUON_SCALE_SHAPE) return sqrtf(fmaxf(1.0f, (float)rows / (float)cols));
    if (rule == MUON_SCALE_RMS) return rms_target * sqrtf((float)(rows > cols ? rows : cols));
    return 1.0f;
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>
#include <string.h>

#include "linalg.h"
#include "optimizer.h"

#define MUON_MAX_COEFFS 32

typedef struct {
    float momentum;
    int nesterov, momentum_form, ns_steps;
    const cJSON *ns_coefficients_json;
    float ns_eps;
    int scale_rule;
    float rms_target, weight_decay;
    // Resolved by muon_check: iteration i uses coeffs[min(i, n_coeffs - 1)].
    int n_coeffs;
    float coeffs[MUON_MAX_COEFFS][3];
} MuonHyper;

#define MKEY(name, type, def, range, choices, doc) {#name, type, offsetof(MuonHyper, name), def, range, choices, doc}
static const ConfigKey muon_keys[] = {
    MKEY(momentum, KEY_FLOAT, "0.95", "[0,1)", NULL, "momentum coefficient beta"),
    MKEY(nesterov, KEY_BOOL, "true", NULL, NULL, "orthogonalise the Nesterov look-ahead instead of M"),
    MKEY(momentum_form, KEY_CHOICE, "\"ema\"", NULL, "ema|sum", "ema: M = beta M + (1-beta) G; sum: M = beta M + G (Moonlight)"),
    MKEY(ns_steps, KEY_INT, "5", "[1,100]", NULL, "Newton-Schulz iterations"),
    {"ns_coefficients", KEY_JSON, offsetof(MuonHyper, ns_coefficients_json), NULL, NULL, NULL,
     "[a, b, c] for every iteration (default [3.4445, -4.7750, 2.0315]), or a list of triples, one per "
     "iteration, the last repeating (Polar Express schedules)"},
    MKEY(ns_eps, KEY_FLOAT, "1e-7", "(0,inf)", NULL, "added to the Frobenius norm before normalising"),
    MKEY(scale_rule, KEY_CHOICE, "\"shape\"", NULL, "shape|rms|none",
         "shape: sqrt(max(1, out/in)); rms: rms_target sqrt(max(out, in)) (Moonlight, reuses AdamW's lr); none: 1"),
    MKEY(rms_target, KEY_FLOAT, "0.2", "(0,inf)", NULL, "the update RMS that scale_rule \"rms\" matches"),
    MKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decoupled: W <- W (1 - lr wd)"),
    KEY_END,
};
#undef MKEY

static inline int muon_read_triple(const cJSON *t, float *out) {
    if (!cJSON_IsArray(t) || cJSON_GetArraySize(t) != 3) return 0;
    int i = 0;
    for (const cJSON *x = t->child; x; x = x->next, i++) {
        if (!cJSON_IsNumber(x)) return 0;
        out[i] = (float)x->valuedouble;
    }
    return 1;
}

static inline void muon_check(void *hyper, const JsonConfig *c, const char *path) {
    MuonHyper *h = (MuonHyper *)hyper;
    const cJSON *j = h->ns_coefficients_json;
    char sub[160];
    snprintf(sub, sizeof sub, "%s.ns_coefficients", path);
    if (!j || cJSON_IsNull(j)) {
        h->n_coeffs = 1;
        h->coeffs[0][0] = 3.4445f, h->coeffs[0][1] = -4.7750f, h->coeffs[0][2] = 2.0315f;
    } else if (cJSON_IsArray(j) && j->child && cJSON_IsNumber(j->child)) {
        if (!muon_read_triple(j, h->coeffs[0])) config_key_error(c, sub, "must be a triple [a, b, c] or a list of triples");
        h->n_coeffs = 1;
    } else {
        const int n = cJSON_IsArray(j) ? cJSON_GetArraySize(j) : 0;
        if (n < 1 || n > MUON_MAX_COEFFS)
            config_key_error(c, sub, "must be a triple [a, b, c] or a list of 1 to %d triples", MUON_MAX_COEFFS);
        int i = 0;
        for (const cJSON *t = j->child; t; t = t->next, i++)
            if (!muon_read_triple(t, h->coeffs[i]))
                config_key_error(c, sub, "entry %d must be a triple [a, b, c] of numbers", i);
        h->n_coeffs = n;
    }
}

static inline const char *muon_refuses(const void *hyper, const ParamTensor *t) {
    if (role_is_matrix(t->role)) return NULL;
    return "Muon is for hidden 2-D weight matrices only; route embeddings, head, norms and biases to another "
           "group, e.g. {\"params\": [\"embeddings\", \"head\", \"norms\", \"biases\"], \"name\": \"adamw\"}";
}

// Scratch slots: 0-3 by muon_newton_schulz, 4 by the step.
enum { MUON_SLOT_X = 0, MUON_SLOT_Y, MUON_SLOT_A, MUON_SLOT_B, MUON_SLOT_U };

// out = NS(G) for the rows x cols matrix G: normalise by the Frobenius norm, then `steps`
// iterations of the odd quintic with coefficient triple coeffs[min(i, n_coeffs - 1)].
// out may alias G.
static inline void muon_newton_schulz(const float *G, int rows, int cols, int steps, const float (*coeffs)[3],
                                      int n_coeffs, float eps, float *out) {
    const size_t n = (size_t)rows * cols;
    const int wide = rows <= cols, p = wide ? rows : cols;  // A is p x p
    float *X = la_scratch(MUON_SLOT_X, n), *Y = la_scratch(MUON_SLOT_Y, n);
    float *A = la_scratch(MUON_SLOT_A, (size_t)p * p), *B = la_scratch(MUON_SLOT_B, (size_t)p * p);
    const float inv = (float)(1.0 / (sqrt(la_sumsq(G, n)) + eps));
    for (size_t i = 0; i < n; i++) X[i] = G[i] * inv;
    for (int it = 0; it < steps; it++) {
        const float *k = coeffs[it < n_coeffs ? it : n_coeffs - 1];
        if (wide) la_gram(0, p, cols, 1.0f, X, cols, 0.0f, A, p);  // A = X X^T
        else la_gram(1, p, rows, 1.0f, X, cols, 0.0f, A, p);       // A = X^T X
        memcpy(B, A, (size_t)p * p * sizeof(float));
        la_gemm(0, 0, p, p, p, k[2], A, p, A, p, k[1], B, p);  // B = b A + c A A
        for (size_t i = 0; i < n; i++) Y[i] = k[0] * X[i];
        if (wide) la_gemm(0, 0, rows, cols, p, 1.0f, B, p, X, cols, 1.0f, Y, cols);  // Y = a X + B X
        else la_gemm(0, 0, rows, cols, p, 1.0f, X, cols, B, p, 1.0f, Y, cols);       // Y = a X + X B
        float *t = X;
        X = Y;
        Y = t;
    }
    memcpy(out, X, n * sizeof(float));
}

static inline size_t muon_tensor_state(const void *hyper, const ParamTensor *t) { return t->numel; }

static inline void muon_step_tensor(const void *hyper, const StepInfo *info, const ParamTensor *t, float *param,
                                    const float *grad, float *state) {
    const MuonHyper *h = (const MuonHyper *)hyper;
    const size_t n = t->numel;
    float *U = la_scratch(MUON_SLOT_U, n);
    for (size_t i = 0; i < n; i++) U[i] = muon_momentum(h->momentum, h->momentum_form, h->nesterov, grad[i], &state[i]);
    muon_newton_schulz(U, t->rows, t->cols, h->ns_steps, (const float(*)[3])h->coeffs, h->n_coeffs, h->ns_eps, U);
    const float step = info->lr * muon_scale(h->scale_rule, h->rms_target, t->rows, t->cols);
    const float keep = 1.0f - info->lr * h->weight_decay;
#pragma omp parallel for schedule(static) if (n > 16384)
    for (size_t i = 0; i < n; i++) param[i] = keep * param[i] - step * U[i];
}

static const OptimizerDef optimizer_muon = {
    .name = "muon",
    .summary = "Muon: Nesterov momentum orthogonalised by Newton-Schulz (Jordan 2024; Moonlight: Liu et al. 2025)",
    .keys = muon_keys,
    .hyper_size = sizeof(MuonHyper),
    .check = muon_check,
    .refuses = muon_refuses,
    .tensor_state = muon_tensor_state,
    .step_tensor = muon_step_tensor,
};
#endif  // OPTIM_RULES_ONLY
