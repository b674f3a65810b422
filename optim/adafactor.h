// Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear
// Memory Cost", Algorithms 4 and 5, with update clipping of section 6), with the lr
// from the schedule (no relative step size, no parameter scaling):
//   beta2_t = 1 - t^decay_rate                          (decay_rate -0.8: 1 - t^-0.8; 0 at t=1)
//   G2 = g^2 + eps1
//   matrix (rows > 1 and cols > 1):
//     R = beta2_t R + (1 - beta2_t) mean_j G2[i,j]       (one per row)
//     C = beta2_t C + (1 - beta2_t) mean_i G2[i,j]       (one per column)
//     V[i,j] = R[i] C[j] / mean_i R[i]                  (= the paper's R C / (1^T R) with sums)
//   vector:  V = beta2_t V + (1 - beta2_t) G2
//   U = g / sqrt(V);   U <- U / max(1, RMS(U) / clip_threshold)    (RMS over the tensor)
//   beta1 > 0:  M = beta1 M + (1 - beta1) lr U;  else M = lr U
//   p <- (1 - lr wd) p - M
// The momentum averages lr U (lr inside, as the HF transformers / fairseq Adafactor does).
// State per tensor: matrix R[rows], C[cols]; vector V[numel]; then M[numel] when beta1 > 0.
#pragma once
#include <math.h>

#include "../runtime/portable.h"

typedef struct {
    float beta2t;     // this step's second-moment decay
    float beta1;      // 0: no momentum
    float lr, keep;   // keep = 1 - lr wd
} AdafactorStep;

// One EMA update of a second-moment statistic with the mean of g^2 + eps1 it covers.
static inline HOST_DEVICE float adafactor_ema(const AdafactorStep *s, float old, float g2_mean) {
    return s->beta2t * old + (1.0f - s->beta2t) * g2_mean;
}

// The unclipped update of a matrix entry from its row and column statistics.
static inline HOST_DEVICE float adafactor_factored(float g, float row, float row_mean, float col) {
    return g / sqrtf(row / row_mean * col);
}

// The parameter after the step, given the unclipped update u and clip = 1 / max(1, RMS(U)/d);
// advances the momentum *m when beta1 > 0.
static inline HOST_DEVICE float adafactor_apply(const AdafactorStep *s, float p, float u, float clip, float *m) {
    float d = s->lr * clip * u;
    if (s->beta1 > 0.0f) {
        d = s->beta1 * *m + (1.0f - s->beta1) * d;
        *m = d;
    }
    return s->keep * p - d;
}

#ifndef OPTIM_RULES_ONLY
#include <stddef.h>
#include <stdlib.h>

#include "optimizer.h"

typedef struct {
    float beta1, decay_rate, clip_threshold, eps1, weight_decay;
} AdafactorHyper;

#define AFKEY(name, type, def, range, choices, doc) {#name, type, offsetof(AdafactorHyper, name), def, range, choices, doc}
static const ConfigKey adafactor_keys[] = {
    AFKEY(beta1, KEY_FLOAT, "0", "[0,1)", NULL, "momentum of the clipped update (0: none, no state)"),
    AFKEY(decay_rate, KEY_FLOAT, "-0.8", "[-1,0)", NULL, "second-moment decay schedule beta2_t = 1 - t^decay_rate"),
    AFKEY(clip_threshold, KEY_FLOAT, "1", "(0,inf)", NULL, "update clipping d: U / max(1, RMS(U)/d)"),
    AFKEY(eps1, KEY_FLOAT, "1e-30", "(0,inf)", NULL, "added to g^2 before the second-moment statistics"),
    AFKEY(weight_decay, KEY_FLOAT, "0", "[0,inf)", NULL, "decoupled decay: p -= lr wd p"),
    KEY_END,
};
#undef AFKEY

static int adafactor_factored_shape(const ParamTensor *t) { return t->rows > 1 && t->cols > 1; }

static size_t adafactor_tensor_state(const void *hyper, const ParamTensor *t) {
    const AdafactorHyper *h = (const AdafactorHyper *)hyper;
    const size_t second = adafactor_factored_shape(t) ? (size_t)t->rows + (size_t)t->cols : t->numel;
    return second + (h->beta1 > 0.0f ? t->numel : 0);
}

static void adafactor_step_tensor(const void *hyper, const StepInfo *info, const ParamTensor *t, float *param,
                                  const float *grad, float *state) {
    const AdafactorHyper *h = (const AdafactorHyper *)hyper;
    AdafactorStep s;
    s.beta2t = (float)(1.0 - pow((double)info->step, h->decay_rate));
    s.beta1 = h->beta1;
    s.lr = info->lr;
    s.keep = 1.0f - info->lr * h->weight_decay;
    const double eps1 = h->eps1;
    const size_t n = t->numel;
    // Sums go through per-row doubles added in a fixed order, so results do not depend on
    // the number of threads (resume stays bit-identical).
    if (adafactor_factored_shape(t)) {
        const int rows = t->rows, cols = t->cols;
        float *R = state, *C = state + rows, *M = state + rows + cols;
        double *acc = (double *)malloc(((size_t)rows + (size_t)cols) * sizeof(double));
        double *colsum = acc + rows;
        for (int j = 0; j < cols; j++) colsum[j] = 0.0;
        for (int i = 0; i < rows; i++) {
            const float *g = grad + (size_t)i * cols;
            double rs = 0.0;
            for (int j = 0; j < cols; j++) {
                const double g2 = (double)g[j] * g[j] + eps1;
                rs += g2;
                colsum[j] += g2;
            }
            R[i] = adafactor_ema(&s, R[i], (float)(rs / cols));
        }
        for (int j = 0; j < cols; j++) C[j] = adafactor_ema(&s, C[j], (float)(colsum[j] / rows));
        double rsum = 0.0;
        for (int i = 0; i < rows; i++) rsum += R[i];
        const float row_mean = (float)(rsum / rows);
#pragma omp parallel for schedule(static) if (n > 4096)
        for (int i = 0; i < rows; i++) {
            double ss = 0.0;
            for (int j = 0; j < cols; j++) {
                const double u = adafactor_factored(grad[(size_t)i * cols + j], R[i], row_mean, C[j]);
                ss += u * u;
            }
            acc[i] = ss;
        }
        double ss = 0.0;
        for (int i = 0; i < rows; i++) ss += acc[i];
        const float clip = (float)(1.0 / fmax(1.0, sqrt(ss / (double)n) / h->clip_threshold));
#pragma omp parallel for schedule(static) if (n > 4096)
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) {
                const size_t k = (size_t)i * cols + j;
                const float u = adafactor_factored(grad[k], R[i], row_mean, C[j]);
                param[k] = adafactor_apply(&s, param[k], u, clip, h->beta1 > 0.0f ? &M[k] : NULL);
            }
        free(acc);
        return;
    }
    float *V = state, *M = state + n;
    double ss = 0.0;
    for (size_t k = 0; k < n; k++) {
        V[k] = adafactor_ema(&s, V[k], (float)((double)grad[k] * grad[k] + eps1));
        const double u = grad[k] / sqrtf(V[k]);
        ss += u * u;
    }
    const float clip = (float)(1.0 / fmax(1.0, sqrt(ss / (double)n) / h->clip_threshold));
    for (size_t k = 0; k < n; k++)
        param[k] = adafactor_apply(&s, param[k], grad[k] / sqrtf(V[k]), clip, h->beta1 > 0.0f ? &M[k] : NULL);
}

static const OptimizerDef optimizer_adafactor = {
    .name = "adafactor",
    .summary = "Adafactor, factored second moment with update clipping (Shazeer & Stern 2018); lr from the schedule",
    .keys = adafactor_keys,
    .hyper_size = sizeof(AdafactorHyper),
    .tensor_state = adafactor_tensor_state,
    .step_tensor = adafactor_step_tensor,
};
#endif  // OPTIM_RULES_ONLY
