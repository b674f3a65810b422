// Matrix and curvature optimizers: the linear-algebra interface, Muon, Shampoo (standard
// and eigenvalue-corrected), SOAP and Sophia, each held to a direct double-precision
// implementation of its equations written here, plus resume equality through the trainer.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../model/model.h"
#include "../optim/linalg.h"
#include "../optim/muon.h"
#include "../optim/optimizer.h"
#include "../optim/shampoo.h"
#include "../optim/soap.h"
#include "../optim/sophia.h"
#include "../runtime/checkpoint.h"
#include "../runtime/common.h"
#include "harness.h"
#include "test_util.h"

// ---------------------------------------------------------------------------------------
// Helpers: hyperparameters from JSON, tensors, and double-precision reference algebra.

// The optimizer's hyperparameters from a JSON object of its keys (defaults for the rest).
// The config stays alive: KEY_JSON values point into it.
static void *make_hyper(const OptimizerDef *def, const char *json) {
    JsonConfig *c = config_from_text(json);
    void *h = xcalloc(1, def->hyper_size);
    config_read_keys(c, json_config_root(c), "optimizer", def->keys, h, NULL);
    if (def->check) def->check(h, c, "optimizer");
    return h;
}

static ParamTensor make_tensor(int rows, int cols, int role) {
    ParamTensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "t%dx%d", rows, cols);
    t.role = role;
    t.rows = rows;
    t.cols = cols;
    t.numel = (size_t)rows * cols;
    return t;
}

static float *new_state(const OptimizerDef *def, const void *h, const ParamTensor *t) {
    const size_t n = def->tensor_state(h, t);
    float *s = (float *)xcalloc(n ? n : 1, sizeof(float));
    if (def->init_tensor_state) def->init_tensor_state(h, t, s);
    return s;
}

static StepInfo step_info(long step, float lr) {
    StepInfo s = {step, 100, lr, 1.0f, 768.0};
    return s;
}

static double *dalloc(size_t n) { return (double *)xcalloc(n ? n : 1, sizeof(double)); }

static void to_double(const float *x, double *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i];
}

// C = op(A) op(B), op(A) m x k, op(B) k x n; A stored k x m when ta, B stored n x k when tb.
static void dmm(int ta, int tb, int m, int n, int k, const double *A, const double *B, double *C) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) s += (ta ? A[(size_t)p * m + i] : A[(size_t)i * k + p]) * (tb ? B[(size_t)j * k + p] : B[(size_t)p * n + j]);
            C[(size_t)i * n + j] = s;
        }
}

static double dnorm(const double *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i] * x[i];
    return sqrt(s);
}

// Symmetric eigendecomposition by cyclic Jacobi: w ascending, eigenvectors in V's columns.
static void jacobi_eigh(int n, const double *A, double *w, double *V) {
    double *a = dalloc((size_t)n * n);
    memcpy(a, A, (size_t)n * n * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) V[(size_t)i * n + j] = i == j;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, all = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                all += a[(size_t)i * n + j] * a[(size_t)i * n + j];
                if (i != j) off += a[(size_t)i * n + j] * a[(size_t)i * n + j];
            }
        if (off <= 1e-30 * all) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                const double apq = a[(size_t)p * n + q];
                if (fabs(apq) < 1e-300) continue;
                const double theta = (a[(size_t)q * n + q] - a[(size_t)p * n + p]) / (2 * apq);
                const double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                const double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) {
                    const double kp = a[(size_t)k * n + p], kq = a[(size_t)k * n + q];
                    a[(size_t)k * n + p] = c * kp - s * kq;
                    a[(size_t)k * n + q] = s * kp + c * kq;
                }
                for (int k = 0; k < n; k++) {
                    const double pk = a[(size_t)p * n + k], qk = a[(size_t)q * n + k];
                    a[(size_t)p * n + k] = c * pk - s * qk;
                    a[(size_t)q * n + k] = s * pk + c * qk;
                }
                for (int k = 0; k < n; k++) {
                    const double kp = V[(size_t)k * n + p], kq = V[(size_t)k * n + q];
                    V[(size_t)k * n + p] = c * kp - s * kq;
                    V[(size_t)k * n + q] = s * kp + c * kq;
                }
            }
    }
    for (int i = 0; i < n; i++) w[i] = a[(size_t)i * n + i];
    for (int i = 0; i < n; i++)  // selection sort, ascending, columns with their values
        for (int j = i + 1; j < n; j++)
            if (w[j] < w[i]) {
                const double t = w[i];
                w[i] = w[j];
                w[j] = t;
                for (int k = 0; k < n; k++) {
                    const double v = V[(size_t)k * n + i];
                    V[(size_t)k * n + i] = V[(size_t)k * n + j];
                    V[(size_t)k * n + j] = v;
                }
            }
    free(a);
}

// out = (A/bc2 + eps I)^(-e) with Distributed Shampoo's eigenvalue floor.
static void ref_inverse_root(int n, const double *A, double bc2, double eps, double e, double *out) {
    double *B = dalloc((size_t)n * n), *w = dalloc((size_t)n), *V = dalloc((size_t)n * n);
    for (size_t i = 0; i < (size_t)n * n; i++) B[i] = A[i] / bc2;
    jacobi_eigh(n, B, w, V);
    const double shift = -fmin(w[0], 0.0) + eps;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < n; k++) s += V[(size_t)i * n + k] * pow(w[k] + shift, -e) * V[(size_t)j * n + k];
            out[(size_t)i * n + j] = s;
        }
    free(B);
    free(w);
    free(V);
}

// Thin QR by modified Gram-Schmidt (column signs may differ from LAPACK's).
static void ref_qr(int n, const double *A, double *Q) {
    memcpy(Q, A, (size_t)n * n * sizeof(double));
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < j; i++) {
            double r = 0;
            for (int k = 0; k < n; k++) r += Q[(size_t)k * n + i] * Q[(size_t)k * n + j];
            for (int k = 0; k < n; k++) Q[(size_t)k * n + j] -= r * Q[(size_t)k * n + i];
        }
        double s = 0;
        for (int k = 0; k < n; k++) s += Q[(size_t)k * n + j] * Q[(size_t)k * n + j];
        s = sqrt(s);
        for (int k = 0; k < n; k++) Q[(size_t)k * n + j] /= s;
    }
}

// ||x - y|| / ||y|| between a float and a double vector.
static double rel_err_fd(const float *x, const double *y, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d += (x[i] - y[i]) * (x[i] - y[i]);
        s += y[i] * y[i];
    }
    return isfinite(d) ? sqrt(d) / fmax(sqrt(s), 1e-30) : INFINITY;
}

// ---------------------------------------------------------------------------------------
// The linear-algebra interface.

TEST(linalg_products_and_factorisations) {
    enum { M = 7, N = 5, K = 4 };
    float A[M * K], At[K * M], B[K * N], Bt[N * K], C[M * N];
    double Ad[M * K], Bd[K * N], Cd[M * N];
    fill_normal(A, M * K, 1, 1.0f);
    fill_normal(B, K * N, 2, 1.0f);
    for (int i = 0; i < M; i++)
        for (int p = 0; p < K; p++) At[p * M + i] = A[i * K + p];
    for (int p = 0; p < K; p++)
        for (int j = 0; j < N; j++) Bt[j * K + p] = B[p * N + j];
    to_double(A, Ad, M * K);
    to_double(B, Bd, K * N);
    dmm(0, 0, M, N, K, Ad, Bd, Cd);
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            fill_uniform(C, M * N, 3, -1, 1);
            la_gemm(ta, tb, M, N, K, 1.0f, ta ? At : A, ta ? M : K, tb ? Bt : B, tb ? K : N, 0.0f, C, N);
            CHECKF(rel_err_fd(C, Cd, M * N) < 1e-6, "gemm ta=%d tb=%d: %g", ta, tb, rel_err_fd(C, Cd, M * N));
        }
    // Gram both ways, accumulating onto a symmetric C.
    float G[M * M], H[K * K];
    double Gd[M * M], Hd[K * K];
    dmm(0, 1, M, M, K, Ad, Ad, Gd);
    dmm(1, 0, K, K, M, Ad, Ad, Hd);
    for (int i = 0; i < M * M; i++) G[i] = 1.0f, Gd[i] = 0.5 * Gd[i] + 2.0;
    for (int i = 0; i < K * K; i++) H[i] = 1.0f, Hd[i] = 0.5 * Hd[i] + 2.0;
    la_gram(0, M, K, 0.5f, A, K, 2.0f, G, M);
    la_gram(1, K, M, 0.5f, A, K, 2.0f, H, K);
    CHECK(rel_err_fd(G, Gd, M * M) < 1e-6);
    CHECK(rel_err_fd(H, Hd, K * K) < 1e-6);

    // eigh: A = V diag(w) V^T, V orthogonal, w ascending.
    float S[N * N], w[N], V[N * N];
    double Sd[N * N], R[N * N], VV[N * N];
    la_gram(1, N, K, 1.0f, B, N, 0.0f, S, N);
    for (int i = 0; i < N; i++) S[i * N + i] -= 1.0f;  // indefinite
    to_double(S, Sd, N * N);
    CHECK(la_eigh(N, S, N, w, V) == 0);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            R[i * N + j] = 0;
            VV[i * N + j] = 0;
            for (int k = 0; k < N; k++) R[i * N + j] += (double)V[i * N + k] * w[k] * V[j * N + k];
            for (int k = 0; k < N; k++) VV[i * N + j] += (double)V[k * N + i] * V[k * N + j];
            CHECKF(fabs(VV[i * N + j] - (i == j)) < 1e-5, "V^T V[%d][%d] = %g", i, j, VV[i * N + j]);
        }
    CHECK(rel_error_d(R, Sd, N * N) < 1e-5);
    for (int i = 1; i < N; i++) CHECK(w[i - 1] <= w[i]);
    S[2 * N + 2] = NAN;
    CHECK(la_eigh(N, S, N, w, V) == -1);

    // QR: Q^T Q = I and Q^T A is upper triangular with Q (Q^T A) = A.
    float Q[M * K];
    double Qd[M * K], Rq[K * K], QR[M * K];
    CHECK(la_qr(M, K, A, K, Q, K) == 0);
    to_double(Q, Qd, M * K);
    dmm(1, 0, K, K, M, Qd, Ad, Rq);
    dmm(0, 0, M, K, K, Qd, Rq, QR);
    CHECK(rel_error_d(QR, Ad, M * K) < 1e-5);
    for (int i = 0; i < K; i++)
        for (int j = 0; j < i; j++) CHECKF(fabs(Rq[i * K + j]) < 1e-5, "R[%d][%d] = %g", i, j, Rq[i * K + j]);

    // SVD reconstructs.
    float U[M * K], s[K], Vt[K * K];
    CHECK(la_svd(M, K, A, K, U, s, Vt) == 0);
    double US[M * K];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < K; j++) {
            US[i * K + j] = 0;
            for (int k = 0; k < K; k++) US[i * K + j] += (double)U[i * K + k] * s[k] * Vt[k * K + j];
        }
    CHECK(rel_error_d(US, Ad, M * K) < 1e-5);
    for (int i = 1; i < K; i++) CHECK(s[i - 1] >= s[i]);
}

// ---------------------------------------------------------------------------------------
// Muon.

// Polar factor U V^T of the m x n matrix A from LAPACK's SVD.
static void polar_factor(int m, int n, const float *A, float *out) {
    const int r = m < n ? m : n;
    float *U = (float *)xmalloc((size_t)m * r * sizeof(float)), *s = (float *)xmalloc((size_t)r * sizeof(float));
    float *Vt = (float *)xmalloc((size_t)r * n * sizeof(float));
    CHECK(la_svd(m, n, A, n, U, s, Vt) == 0);
    la_gemm(0, 0, m, n, r, 1.0f, U, r, Vt, n, 0.0f, out, n);
    free(U);
    free(s);
    free(Vt);
}

TEST(newton_schulz_converges_to_svd_polar_factor) {
    const int shapes[][2] = {{7, 4}, {4, 7}, {6, 6}, {12, 3}};
    const float convergent[1][3] = {{2.0f, -1.5f, 0.5f}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int m = shapes[c][0], n = shapes[c][1];
        float *G = (float *)xmalloc((size_t)m * n * sizeof(float)), *X = (float *)xmalloc((size_t)m * n * sizeof(float));
        float *P = (float *)xmalloc((size_t)m * n * sizeof(float));
        fill_normal(G, (size_t)m * n, 10 + c, 1.0f);
        muon_newton_schulz(G, m, n, 60, convergent, 1, 1e-7f, X);
        polar_factor(m, n, G, P);
        CHECKF(rel_error(X, P, (size_t)m * n) < 1e-4, "%dx%d: NS vs U V^T relative error %g", m, n,
               rel_error(X, P, (size_t)m * n));
        free(G);
        free(X);
        free(P);
    }
}

TEST(newton_schulz_quintic_singular_values) {
    const int shapes[][2] = {{48, 16}, {16, 48}, {64, 32}, {32, 96}, {40, 24}, {32, 32}, {20, 24}, {24, 20}};
    const float quintic[1][3] = {{3.4445f, -4.7750f, 2.0315f}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int m = shapes[c][0], n = shapes[c][1], r = m < n ? m : n;
        float *G = (float *)xmalloc((size_t)m * n * sizeof(float)), *X = (float *)xmalloc((size_t)m * n * sizeof(float));
        float *U = (float *)xmalloc((size_t)m * r * sizeof(float)), *Vt = (float *)xmalloc((size_t)r * n * sizeof(float));
        float s[96];
        fill_normal(G, (size_t)m * n, 20 + c, 0.02f);
        muon_newton_schulz(G, m, n, 5, quintic, 1, 1e-7f, X);
        CHECK(la_svd(m, n, X, n, U, s, Vt) == 0);
        CHECKF(s[0] <= 1.2f && s[r - 1] >= 0.6f, "%dx%d: singular values in [%g, %g]", m, n, s[r - 1], s[0]);
        free(G);
        free(X);
        free(U);
        free(Vt);
    }
}

// NS in double with A = X X^T always (for tall X the implementation uses X^T X).
static void ref_newton_schulz(const double *G, int m, int n, const MuonHyper *h, double *X) {
    const size_t sz = (size_t)m * n;
    double *A = dalloc((size_t)m * m), *B = dalloc((size_t)m * m), *BX = dalloc(sz);
    const double nrm = dnorm(G, sz) + h->ns_eps;
    for (size_t i = 0; i < sz; i++) X[i] = G[i] / nrm;
    for (int it = 0; it < h->ns_steps; it++) {
        const float *k = h->coeffs[it < h->n_coeffs ? it : h->n_coeffs - 1];
        dmm(0, 1, m, m, n, X, X, A);
        dmm(0, 0, m, m, m, A, A, B);
        for (size_t i = 0; i < (size_t)m * m; i++) B[i] = k[1] * A[i] + k[2] * B[i];
        dmm(0, 0, m, n, m, B, X, BX);
        for (size_t i = 0; i < sz; i++) X[i] = k[0] * X[i] + BX[i];
    }
    free(A);
    free(B);
    free(BX);
}

TEST(muon_step_matches_formula) {
    const char *configs[] = {
        "{\"momentum\": 0.9, \"weight_decay\": 0.1}",
        "{\"momentum_form\": \"sum\", \"nesterov\": false, \"scale_rule\": \"rms\", \"momentum\": 0.8}",
        "{\"momentum_form\": \"sum\", \"scale_rule\": \"none\", \"ns_steps\": 4,"
        " \"ns_coefficients\": [[3.4, -4.7, 2.0], [2.0, -1.5, 0.5]]}",
    };
    const int shapes[][2] = {{6, 4}, {4, 6}, {5, 5}};
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ci++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            MuonHyper *h = (MuonHyper *)make_hyper(&optimizer_muon, configs[ci]);
            const int m = shapes[si][0], n = shapes[si][1];
            const size_t sz = (size_t)m * n;
            ParamTensor t = make_tensor(m, n, ROLE_MLP_IN);
            float *state = new_state(&optimizer_muon, h, &t), W[36], G[36], before[36];
            double Md[36] = {0}, Ud[36], Od[36], Wd[36];
            fill_normal(W, sz, 30 + si, 1.0f);
            to_double(W, Wd, sz);
            const float lr = 0.05f;
            for (long step = 1; step <= 3; step++) {
                fill_normal(G, sz, 100 * ci + 10 * si + step, 0.1f);
                memcpy(before, W, sizeof W);
                StepInfo info = step_info(step, lr);
                optimizer_muon.step_tensor(h, &info, &t, W, G, state);
                const double beta = h->momentum;
                for (size_t i = 0; i < sz; i++) {
                    if (h->momentum_form == MUON_SUM) {
                        Md[i] = beta * Md[i] + G[i];
                        Ud[i] = h->nesterov ? G[i] + beta * Md[i] : Md[i];
                    } else {
                        Md[i] = beta * Md[i] + (1 - beta) * G[i];
                        Ud[i] = h->nesterov ? (1 - beta) * G[i] + beta * Md[i] : Md[i];
                    }
                }
                ref_newton_schulz(Ud, m, n, h, Od);
                const double scale = h->scale_rule == MUON_SCALE_SHAPE ? sqrt(fmax(1.0, (double)m / n))
                                     : h->scale_rule == MUON_SCALE_RMS ? 0.2 * sqrt((double)(m > n ? m : n))
                                                                       : 1.0;
                double dref[36];
                float dgot[36];
                for (size_t i = 0; i < sz; i++) {
                    const double prev = Wd[i];
                    Wd[i] = prev * (1 - lr * h->weight_decay) - lr * scale * Od[i];
                    dref[i] = Wd[i] - prev;
                    dgot[i] = W[i] - before[i];
                    Wd[i] = W[i];  // follow the float trajectory so errors do not accumulate
                }
                CHECKF(rel_err_fd(dgot, dref, sz) < 2e-5, "config %zu, %dx%d, step %ld: update error %g", ci, m, n, step,
                       rel_err_fd(dgot, dref, sz));
                CHECKF(rel_err_fd(state, Md, sz) < 1e-6, "momentum differs");
            }
            free(state);
            free(h);
        }
}


TEST(muon_refuses_non_matrix_tensors) {
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"all\", \"name\": \"muon\"}]}",
                 "optimizer.groups[0].params: muon cannot take wte (embedding): Muon is for hidden 2-D weight matrices only");
    EXPECT_FATAL(build_tiny_optimizer,
                 (void *)"{\"groups\": [{\"params\": [\"matrices\", \"norms\"], \"name\": \"muon\"},"
                         " {\"params\": [\"embeddings\", \"biases\"]}]}",
                 "muon cannot take h.0.ln1.weight (norm)");
    EXPECT_FATAL(build_tiny_optimizer,
                 (void *)"{\"groups\": [{\"params\": \"matrices\", \"name\": \"muon\", \"ns_coefficients\": [1, 2]},"
                         " {\"params\": [\"embeddings\", \"norms\", \"biases\"]}]}",
                 "optimizer.groups[0].ns_coefficients: must be");
    // The routing the docs recommend builds.
    build_tiny_optimizer((void *)"{\"groups\": [{\"params\": \"matrices\", \"name\": \"muon\", \"lr\": 0.02},"
                         " {\"params\": [\"embeddings\", \"head\", \"norms\", \"biases\"]}]}");
}

static const char *MATRIX_GROUPS =
    "{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"name\": \"%s\"%s},"
    " {\"params\": [\"embeddings\", \"head\", \"norms\", \"biases\"], \"name\": \"adamw\"}]}";

static void resume_with(const char *name, const char *extra, const char *tag) {
    char json[1024];
    snprintf(json, sizeof json, MATRIX_GROUPS, name, extra);
    check_resume_identical("gpt2", json, tag);
}

TEST(muon_resume_identical) { resume_with("muon", ", \"lr\": 0.02", "muon"); }

// ---------------------------------------------------------------------------------------
// Shampoo.

TEST(shampoo_inverse_root_fourth_power_is_inverse) {
    enum { N = 12 };
    float X[N * N], A[N * N], R[N * N];
    fill_normal(X, N * N, 41, 1.0f);
    la_gram(0, N, N, 1.0f / N, X, N, 0.0f, A, N);
    for (int i = 0; i < N; i++) A[i * N + i] += 0.1f;
    const struct {
        float bc2, eps;
        double e;
        int power;
    } cases[] = {{1.0f, 1e-12f, 0.25, 4}, {0.5f, 1e-3f, 0.25, 4}, {1.0f, 1e-6f, 0.5, 2}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        CHECK(shampoo_inverse_root(N, A, cases[c].bc2, cases[c].eps, cases[c].e, R) == 0);
        // R^power (A/bc2 + eps I) = I
        double Rd[N * N], P[N * N], T[N * N], Ad[N * N];
        to_double(R, Rd, N * N);
        memcpy(P, Rd, sizeof P);
        for (int k = 1; k < cases[c].power; k++) {
            dmm(0, 0, N, N, N, P, Rd, T);
            memcpy(P, T, sizeof P);
        }
        for (int i = 0; i < N * N; i++) Ad[i] = A[i] / cases[c].bc2 + (i % (N + 1) == 0 ? cases[c].eps : 0.0);
        dmm(0, 0, N, N, N, P, Ad, T);
        double worst = 0;
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) worst = fmax(worst, fabs(T[i * N + j] - (i == j)));
        CHECKF(worst < 2e-4, "case %zu: |R^%d (A + eps I) - I| = %g", c, cases[c].power, worst);
    }
    // Eigenvalues are floored: lambda <- lambda - min(lambda_min, 0) + eps.
    float D[9] = {-1, 0, 0, 0, 1, 0, 0, 0, 3}, Dr[9];
    CHECK(shampoo_inverse_root(3, D, 1.0f, 1e-3f, 0.25, Dr) == 0);
    CHECK_NEAR(Dr[0], pow(1e-3, -0.25), 1e-3);
    CHECK_NEAR(Dr[4], pow(2.001, -0.25), 1e-5);
    CHECK_NEAR(Dr[8], pow(4.001, -0.25), 1e-5);
    CHECK_NEAR(Dr[1], 0.0, 1e-6);
    // A failed decomposition leaves the previous root in place.
    memcpy(D, R, sizeof D);
    A[5] = NAN;
    CHECK(shampoo_inverse_root(N, A, 1.0f, 1e-12f, 0.25, R) == -1);
    CHECK(memcmp(D, R, sizeof D) == 0);
}

TEST(shampoo_blocking_covers_every_element_once) {
    const int shapes[][2] = {{1, 10}, {7, 5}, {8, 8}, {9, 17}, {1, 1}, {3, 1}, {130, 64}};
    const int dims[] = {1, 3, 4, 8, 100};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            const int rows = shapes[si][0], cols = shapes[si][1], d = dims[di];
            ParamTensor t = make_tensor(rows, cols, rows == 1 ? ROLE_BIAS : ROLE_MLP_IN);
            int *count = (int *)xcalloc((size_t)rows * cols, sizeof(int));
            size_t expect_std = t.numel * 2, expect_ec = t.numel;
            for (int k = 0; k < shampoo_num_blocks(d, &t); k++) {
                const ShampooBlock b = shampoo_block(d, &t, k);
                CHECK(b.br >= 1 && b.bc >= 1 && b.bc <= d && (rows == 1 ? b.br == 1 : b.br <= d));
                for (int i = 0; i < b.br; i++)
                    for (int j = 0; j < b.bc; j++) count[(size_t)(b.r0 + i) * cols + b.c0 + j]++;
                const size_t l = rows == 1 ? 0 : (size_t)b.br * b.br, r = (size_t)b.bc * b.bc;
                expect_std += 2 * (l + r);
                expect_ec += 2 * (l + r) + (size_t)b.br * b.bc;
            }
            for (size_t i = 0; i < t.numel; i++)
                CHECKF(count[i] == 1, "%dx%d, dim %d: element %zu covered %d times", rows, cols, d, i, count[i]);
            char json[128];
            snprintf(json, sizeof json, "{\"max_preconditioner_dim\": %d}", d);
            void *hs = make_hyper(&optimizer_shampoo, json);
            snprintf(json, sizeof json, "{\"max_preconditioner_dim\": %d, \"variant\": \"eigenvalue_corrected\"}", d);
            void *he = make_hyper(&optimizer_shampoo, json);
            CHECK(optimizer_shampoo.tensor_state(hs, &t) == expect_std);
            CHECK(optimizer_shampoo.tensor_state(he, &t) == expect_ec);
            free(hs);
            free(he);
            free(count);
        }
}

TEST(shampoo_grafting_keeps_graft_norm) {
    const char *configs[] = {
        "{\"max_preconditioner_dim\": 3, \"precondition_frequency\": 1, \"grafting\": \"adam\", \"beta2\": 0.9}",
        "{\"max_preconditioner_dim\": 3, \"precondition_frequency\": 1, \"grafting\": \"rmsprop\","
        " \"grafting_beta2\": 0.9, \"beta1\": 0.5}",
    };
    for (size_t ci = 0; ci < 2; ci++) {
        ShampooHyper *h = (ShampooHyper *)make_hyper(&optimizer_shampoo, configs[ci]);
        ParamTensor t = make_tensor(5, 4, ROLE_MLP_IN);
        float *state = new_state(&optimizer_shampoo, h, &t), W[20] = {0}, G[20], before[20];
        double m[20] = {0}, v[20] = {0};
        for (long step = 1; step <= 3; step++) {
            fill_normal(G, 20, 50 + step, 1.0f);
            memcpy(before, W, sizeof W);
            StepInfo info = step_info(step, 1.0f);
            optimizer_shampoo.step_tensor(h, &info, &t, W, G, state);
            const double gb2 = h->grafting_beta2;
            for (int k = 0; k < shampoo_num_blocks(3, &t); k++) {
                const ShampooBlock b = shampoo_block(3, &t, k);
                double got = 0, want = 0;
                for (int i = b.r0; i < b.r0 + b.br; i++)
                    for (int j = b.c0; j < b.c0 + b.bc; j++) {
                        const int e = i * 4 + j;
                        got += (W[e] - before[e]) * (W[e] - before[e]);
                        const double mm = h->beta1 * m[e] + (1 - h->beta1) * G[e];
                        const double vv = gb2 * v[e] + (1 - gb2) * (double)G[e] * G[e];
                        const double mh = mm / (1 - pow(h->beta1, (double)step));
                        const double vh = h->graft == SHAMPOO_GRAFT_ADAM ? vv / (1 - pow(gb2, (double)step)) : vv;
                        const double d = mh / (sqrt(vh) + h->grafting_epsilon);
                        want += d * d;
                    }
                CHECKF(fabs(sqrt(got) - sqrt(want)) < 1e-5 * sqrt(want), "config %zu step %ld block %d: |update| %g vs graft %g",
                       ci, step, k, sqrt(got), sqrt(want));
            }
            for (int e = 0; e < 20; e++) {
                m[e] = h->beta1 * m[e] + (1 - h->beta1) * G[e];
                v[e] = gb2 * v[e] + (1 - gb2) * (double)G[e] * G[e];
            }
        }
        free(state);
        free(h);
    }
}

// Distributed Shampoo, standard and eigenvalue-corrected, in double precision, on one
// tensor, block by block.
typedef struct {
    int rows, cols, dim, vec, nb;
    ShampooBlock *b;
    double **L, **R, **A, **B, **D;  // A, B: L_inv, R_inv or Q_L, Q_R
    double *M, *V;
} RefShampoo;

static void ref_shampoo_init(RefShampoo *r, const ParamTensor *t, int dim) {
    memset(r, 0, sizeof *r);
    r->rows = t->rows, r->cols = t->cols, r->dim = dim, r->vec = t->rows == 1;
    r->nb = shampoo_num_blocks(dim, t);
    r->b = (ShampooBlock *)xcalloc((size_t)r->nb, sizeof(ShampooBlock));
    r->L = (double **)xcalloc((size_t)r->nb, sizeof(double *));
    r->R = (double **)xcalloc((size_t)r->nb, sizeof(double *));
    r->A = (double **)xcalloc((size_t)r->nb, sizeof(double *));
    r->B = (double **)xcalloc((size_t)r->nb, sizeof(double *));
    r->D = (double **)xcalloc((size_t)r->nb, sizeof(double *));
    for (int k = 0; k < r->nb; k++) {
        const ShampooBlock b = r->b[k] = shampoo_block(dim, t, k);
        r->L[k] = dalloc((size_t)b.br * b.br), r->A[k] = dalloc((size_t)b.br * b.br);
        r->R[k] = dalloc((size_t)b.bc * b.bc), r->B[k] = dalloc((size_t)b.bc * b.bc);
        r->D[k] = dalloc((size_t)b.br * b.bc);
        for (int i = 0; i < b.br; i++) r->A[k][i * b.br + i] = 1;
        for (int i = 0; i < b.bc; i++) r->B[k][i * b.bc + i] = 1;
    }
    r->M = dalloc(t->numel), r->V = dalloc(t->numel);
}

static void ref_shampoo_free(RefShampoo *r) {
    for (int k = 0; k < r->nb; k++) {
        free(r->L[k]), free(r->R[k]), free(r->A[k]), free(r->B[k]), free(r->D[k]);
    }
    free(r->L), free(r->R), free(r->A), free(r->B), free(r->D), free(r->b), free(r->M), free(r->V);
}

static void ref_shampoo_step(RefShampoo *r, const ShampooHyper *h, long t, double lr, const float *grad, double *W) {
    const int cols = r->cols, ec = h->variant == SHAMPOO_EIGENVALUE_CORRECTED;
    const double b1 = h->beta1, b2 = h->beta2, gb2 = h->grafting_beta2, eps = h->epsilon;
    const double bc1 = 1 - pow(b1, (double)t), bc2 = b2 < 1 ? 1 - pow(b2, (double)t) : 1;
    const int due = (t % h->precondition_frequency == 0 && t > h->start) || t == h->start;
    const int graft = !ec && h->graft != SHAMPOO_GRAFT_NONE;
    double *Mh = dalloc((size_t)r->rows * cols);
    for (int e = 0; e < r->rows * cols; e++) {
        r->M[e] = b1 * r->M[e] + (1 - b1) * grad[e];
        Mh[e] = r->M[e] / bc1;
        r->V[e] = gb2 * r->V[e] + (1 - gb2) * (double)grad[e] * grad[e];
    }
    for (int k = 0; k < r->nb; k++) {
        const ShampooBlock b = r->b[k];
        const int br = b.br, bc = b.bc;
        double *G = dalloc((size_t)br * bc), *Mb = dalloc((size_t)br * bc), *P = dalloc((size_t)br * bc);
        double *T = dalloc((size_t)br * bc), *GG = dalloc((size_t)(br > bc ? br : bc) * (br > bc ? br : bc));
        for (int i = 0; i < br; i++)
            for (int j = 0; j < bc; j++) {
                G[i * bc + j] = grad[(b.r0 + i) * cols + b.c0 + j];
                Mb[i * bc + j] = Mh[(b.r0 + i) * cols + b.c0 + j];
            }
        const double fa = b2 < 1 ? 1 - b2 : 1;
        dmm(0, 1, br, br, bc, G, G, GG);
        for (int i = 0; i < br * br; i++) r->L[k][i] = b2 * r->L[k][i] + fa * GG[i];
        dmm(1, 0, bc, bc, br, G, G, GG);
        for (int i = 0; i < bc * bc; i++) r->R[k][i] = b2 * r->R[k][i] + fa * GG[i];
        if (!ec) {
            if (due) {
                if (!r->vec) ref_inverse_root(br, r->L[k], bc2, eps, 0.25, r->A[k]);
                ref_inverse_root(bc, r->R[k], bc2, eps, r->vec ? 0.5 : 0.25, r->B[k]);
            }
            double gn = 0;
            for (int i = 0; i < br; i++)
                for (int j = 0; j < bc; j++) {
                    const int e = (b.r0 + i) * cols + b.c0 + j;
                    const double vh = h->graft == SHAMPOO_GRAFT_ADAM ? r->V[e] / (1 - pow(gb2, (double)t)) : r->V[e];
                    const double d = Mb[i * bc + j] / (sqrt(vh) + h->grafting_epsilon);
                    gn += d * d;
                    P[i * bc + j] = d;
                }
            if (!(graft && t < h->start)) {
                dmm(0, 0, br, bc, br, r->A[k], Mb, T);  // identity A for vectors
                dmm(0, 0, br, bc, bc, T, r->B[k], P);
                if (graft) {
                    const double s = sqrt(gn) / (dnorm(P, (size_t)br * bc) + 1e-16);
                    for (int i = 0; i < br * bc; i++) P[i] *= s;
                }
            }
        } else {
            if (due) {
                double *w = dalloc((size_t)(br > bc ? br : bc)), *Sc = dalloc((size_t)(br > bc ? br : bc) * (br > bc ? br : bc));
                if (!r->vec) {
                    for (int i = 0; i < br * br; i++) Sc[i] = r->L[k][i] / bc2;
                    jacobi_eigh(br, Sc, w, r->A[k]);
                }
                for (int i = 0; i < bc * bc; i++) Sc[i] = r->R[k][i] / bc2;
                jacobi_eigh(bc, Sc, w, r->B[k]);
                free(w);
                free(Sc);
            }
            dmm(1, 0, br, bc, br, r->A[k], G, T);
            dmm(0, 0, br, bc, bc, T, r->B[k], P);
            for (int i = 0; i < br * bc; i++) r->D[k][i] = b2 * r->D[k][i] + (1 - b2) * P[i] * P[i];
            dmm(1, 0, br, bc, br, r->A[k], Mb, T);
            dmm(0, 0, br, bc, bc, T, r->B[k], P);
            for (int i = 0; i < br * bc; i++) P[i] /= sqrt(r->D[k][i] / bc2) + eps;
            dmm(0, 1, br, bc, bc, P, r->B[k], T);
            dmm(0, 0, br, bc, br, r->A[k], T, P);
        }
        for (int i = 0; i < br; i++)
            for (int j = 0; j < bc; j++) {
                double *w = &W[(b.r0 + i) * cols + b.c0 + j];
                *w = *w * (1 - lr * h->weight_decay) - lr * P[i * bc + j];
            }
        free(G), free(Mb), free(P), free(T), free(GG);
    }
    free(Mh);
}

// Runs `steps` steps of the implementation and of the reference on a rows x cols tensor
// and returns the worst relative error of one step's update.
static double shampoo_vs_reference(const char *json, int rows, int cols, int steps, uint64_t seed) {
    ShampooHyper *h = (ShampooHyper *)make_hyper(&optimizer_shampoo, json);
    ParamTensor t = make_tensor(rows, cols, rows == 1 ? ROLE_NORM : ROLE_MLP_IN);
    float *state = new_state(&optimizer_shampoo, h, &t);
    float *W = (float *)xmalloc(t.numel * sizeof(float)), *G = (float *)xmalloc(t.numel * sizeof(float));
    float *dgot = (float *)xmalloc(t.numel * sizeof(float));
    double *Wd = dalloc(t.numel), *dref = dalloc(t.numel);
    fill_normal(W, t.numel, seed, 1.0f);
    RefShampoo r;
    ref_shampoo_init(&r, &t, h->max_preconditioner_dim);
    double worst = 0;
    const float lr = 0.01f;
    for (long step = 1; step <= steps; step++) {
        fill_normal(G, t.numel, seed * 100 + step, 1.0f);
        to_double(W, Wd, t.numel);
        for (size_t i = 0; i < t.numel; i++) dgot[i] = W[i];
        StepInfo info = step_info(step, lr);
        optimizer_shampoo.step_tensor(h, &info, &t, W, G, state);
        for (size_t i = 0; i < t.numel; i++) dref[i] = Wd[i];
        ref_shampoo_step(&r, h, step, lr, G, Wd);
        for (size_t i = 0; i < t.numel; i++) {
            dgot[i] = W[i] - dgot[i];
            dref[i] = Wd[i] - dref[i];
        }
        worst = fmax(worst, rel_err_fd(dgot, dref, t.numel));
    }
    ref_shampoo_free(&r);
    free(state), free(W), free(G), free(dgot), free(Wd), free(dref), free(h);
    return worst;
}

TEST(shampoo_step_matches_direct_implementation) {
    // Blocks (4x4, 4x2, 2x4, 2x2) and a vector cut into 4 + 3; roots at steps 4, 6.
    const char *json = "{\"max_preconditioner_dim\": 4, \"precondition_frequency\": 2, \"start_preconditioning_step\": 4,"
                       " \"beta2\": 0.95, \"epsilon\": 1e-4, \"weight_decay\": 0.1}";
    double e = shampoo_vs_reference(json, 6, 6, 7, 3);
    CHECKF(e < 1e-4, "6x6 blocked, adam graft: %g", e);
    e = shampoo_vs_reference(json, 1, 7, 7, 4);
    CHECKF(e < 1e-4, "vector: %g", e);
    const char *plain = "{\"precondition_frequency\": 1, \"grafting\": \"none\", \"beta2\": 0.9, \"beta1\": 0}";
    e = shampoo_vs_reference(plain, 5, 3, 4, 5);
    CHECKF(e < 1e-3, "5x3 no graft (rank-deficient L at the first root): %g", e);
}

TEST(shampoo_eigenvalue_corrected_matches_direct_implementation) {
    const char *json = "{\"variant\": \"eigenvalue_corrected\", \"precondition_frequency\": 2,"
                       " \"start_preconditioning_step\": 4, \"beta2\": 0.95, \"epsilon\": 1e-8, \"weight_decay\": 0.1}";
    double e = shampoo_vs_reference(json, 4, 4, 7, 6);
    CHECKF(e < 1e-4, "4x4: %g", e);
    e = shampoo_vs_reference(json, 1, 3, 7, 7);
    CHECKF(e < 1e-4, "vector: %g", e);
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"shampoo\", \"variant\": \"eigenvalue_corrected\", \"grafting\": \"adam\"}",
                 "optimizer.groups[0].grafting: eigenvalue-corrected Shampoo does not graft");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"shampoo\", \"precondition_frequency\": 5, \"start_preconditioning_step\": 2}",
                 "optimizer.groups[0].start_preconditioning_step: 2 is below precondition_frequency 5");
}

TEST(shampoo_eigenvalue_corrected_adaptive_refresh) {
    enum { N = 6 };
    float X[N * N], A[N * N], w[N], V[N * N], Q[N * N], D[N * 3];
    fill_normal(X, N * N, 61, 1.0f);
    la_gram(0, N, N, 1.0f, X, N, 0.0f, A, N);
    CHECK(la_eigh(N, A, N, w, V) == 0);
    const int perm[N] = {3, 0, 5, 1, 4, 2};  // Q[:, k] = V[:, perm[k]]
    ShampooHyper *h = (ShampooHyper *)make_hyper(&optimizer_shampoo,
                                                 "{\"variant\": \"eigenvalue_corrected\", \"refresh_tolerance\": 0.5}");
    // An exact basis in scrambled order: no QR iteration, only the sort, and D follows.
    for (int i = 0; i < N; i++)
        for (int k = 0; k < N; k++) Q[i * N + k] = V[i * N + perm[k]];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < 3; j++) D[i * 3 + j] = (float)(10 * i + j);
    CHECK(shampoo_refresh_basis(h, N, A, 1.0f, 0, Q, D, N, 3, 0) == 0);
    for (int i = 0; i < N; i++) {
        int from = 0;
        while (perm[from] != i) from++;
        for (int r = 0; r < N; r++) CHECK_NEAR(Q[r * N + i], V[r * N + i], 1e-6);
        for (int j = 0; j < 3; j++) CHECK(D[i * 3 + j] == (float)(10 * from + j));
    }
    // Along columns (axis 1), D is N2 x N here.
    float D2[2 * N];
    for (int i = 0; i < N; i++)
        for (int k = 0; k < N; k++) Q[i * N + k] = V[i * N + perm[k]];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < N; j++) D2[i * N + j] = (float)(10 * i + j);
    CHECK(shampoo_refresh_basis(h, N, A, 1.0f, 0, Q, D2, 2, N, 1) == 0);
    for (int j = 0; j < N; j++) {
        int from = 0;
        while (perm[from] != j) from++;
        CHECK(D2[j] == (float)from && D2[N + j] == (float)(10 + from));
    }
    // From the identity with a tight tolerance: exactly qr_iterations QR steps.
    free(h);
    h = (ShampooHyper *)make_hyper(&optimizer_shampoo,
                                   "{\"variant\": \"eigenvalue_corrected\", \"refresh_tolerance\": 1e-9, \"qr_iterations\": 1}");
    shampoo_identity(Q, N);
    CHECK(shampoo_refresh_basis(h, N, A, 2.0f, 0, Q, NULL, N, 1, 0) == 0);
    float B[N * N], Qb[N * N], T[N * N], Bn[N * N];
    for (int i = 0; i < N * N; i++) B[i] = A[i] / 2.0f;
    CHECK(la_qr(N, N, B, N, Qb, N) == 0);
    la_gemm(0, 0, N, N, N, 1.0f, B, N, Qb, N, 0.0f, T, N);
    la_gemm(1, 0, N, N, N, 1.0f, Qb, N, T, N, 0.0f, Bn, N);
    for (int k = 0; k < N; k++) {  // column k of the result is the Qb column with the k-th smallest diag(Bn)
        int pick = 0, rank = 0;
        for (int c = 0; c < N; c++) {
            rank = 0;
            for (int o = 0; o < N; o++) rank += Bn[o * N + o] < Bn[c * N + c];
            if (rank == k) pick = c;
        }
        for (int r = 0; r < N; r++) CHECK_NEAR(Q[r * N + k], Qb[r * N + pick], 1e-5);
    }
    // Many iterations converge to the eigenbasis.
    free(h);
    h = (ShampooHyper *)make_hyper(&optimizer_shampoo,
                                   "{\"variant\": \"eigenvalue_corrected\", \"refresh_tolerance\": 1e-6, \"qr_iterations\": 1000}");
    shampoo_identity(Q, N);
    CHECK(shampoo_refresh_basis(h, N, A, 1.0f, 0, Q, NULL, N, 1, 0) == 0);
    la_gemm(0, 0, N, N, N, 1.0f, A, N, Q, N, 0.0f, T, N);
    la_gemm(1, 0, N, N, N, 1.0f, Q, N, T, N, 0.0f, Bn, N);
    double off = 0, all = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            all += (double)Bn[i * N + j] * Bn[i * N + j];
            if (i != j) off += (double)Bn[i * N + j] * Bn[i * N + j];
        }
    CHECKF(sqrt(off / all) < 1e-4, "off-diagonal %g", sqrt(off / all));
    for (int i = 0; i < N; i++) CHECK_NEAR(Bn[i * N + i], w[i], 1e-4 * w[N - 1]);
    free(h);
}

TEST(shampoo_resume_identical) {
    resume_with("shampoo", ", \"precondition_frequency\": 2, \"max_preconditioner_dim\": 8", "shampoo");
    resume_with("shampoo", ", \"precondition_frequency\": 2, \"variant\": \"eigenvalue_corrected\", \"epsilon\": 1e-8,"
                           " \"refresh_tolerance\": 0.01, \"qr_iterations\": 2",
                "shampoo_ec");
}

// ---------------------------------------------------------------------------------------
// SOAP.

TEST(soap_first_step_does_not_move_weights) {
    SoapHyper *h = (SoapHyper *)make_hyper(&optimizer_soap, "{\"weight_decay\": 0.1}");
    ParamTensor t = make_tensor(5, 4, ROLE_MLP_IN);
    float *state = new_state(&optimizer_soap, h, &t), W[20], W0[20], G[20];
    fill_normal(W, 20, 71, 1.0f);
    fill_normal(G, 20, 72, 1.0f);
    memcpy(W0, W, sizeof W);
    StepInfo info = step_info(1, 0.1f);
    optimizer_soap.step_tensor(h, &info, &t, W, G, state);
    CHECK(memcmp(W, W0, sizeof W) == 0);
    // L = (1 - beta2) G G^T and Q_L its eigenvectors, eigenvalues descending.
    SoapState s = soap_state(h, &t, state);
    CHECK(s.left && s.right && s.step[0] == 1.0f);
    float T[25], Bm[25];
    la_gemm(0, 0, 5, 5, 5, 1.0f, s.GGL, 5, s.QL, 5, 0.0f, T, 5);
    la_gemm(1, 0, 5, 5, 5, 1.0f, s.QL, 5, T, 5, 0.0f, Bm, 5);
    for (int i = 0; i < 5; i++) {
        double gg = 0;
        for (int k = 0; k < 4; k++) gg += (double)G[i * 4 + k] * G[i * 4 + k];
        CHECK_NEAR(s.GGL[i * 5 + i], 0.05 * gg, 1e-5);
        if (i) CHECK(Bm[(i - 1) * 6] >= Bm[i * 6] - 1e-6f);
        for (int j = 0; j < 5; j++)
            if (i != j) CHECK_NEAR(Bm[i * 5 + j], 0.0, 1e-5);
    }
    info.step = 2;
    optimizer_soap.step_tensor(h, &info, &t, W, G, state);
    CHECK(memcmp(W, W0, sizeof W) != 0);
    free(state);
    free(h);
}

// SOAP's equations in double: eigh init, Adam in the rotated basis, power-iteration + QR refresh.
typedef struct {
    int m, n, left, right, init;
    long k;
    double *ea, *eas, *GL, *QL, *GR, *QR;
} RefSoap;

static void ref_soap_project(const RefSoap *r, const double *X, double *out, int back) {
    const int m = r->m, n = r->n;
    double *T = dalloc((size_t)m * n);
    memcpy(T, X, (size_t)m * n * sizeof(double));
    if (r->left) dmm(back ? 0 : 1, 0, m, n, m, r->QL, X, T);
    if (r->right) dmm(0, back ? 1 : 0, m, n, n, T, r->QR, out);
    else memcpy(out, T, (size_t)m * n * sizeof(double));
    free(T);
}

static void ref_soap_refresh(int n, const double *GG, double *Q, double *v, int rows, int cols, int axis) {
    double *T = dalloc((size_t)n * n), *S = dalloc((size_t)n * n), *vt = dalloc((size_t)rows * cols);
    int *order = (int *)xcalloc((size_t)n, sizeof(int));
    double *est = dalloc((size_t)n);
    dmm(0, 0, n, n, n, GG, Q, T);
    for (int j = 0; j < n; j++) {
        order[j] = j;
        for (int i = 0; i < n; i++) est[j] += Q[i * n + j] * T[i * n + j];
    }
    for (int i = 0; i < n; i++)  // descending, stable
        for (int j = i + 1; j < n; j++)
            if (est[order[j]] > est[order[i]] || (est[order[j]] == est[order[i]] && order[j] < order[i])) {
                const int o = order[i];
                order[i] = order[j];
                order[j] = o;
            }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) S[i * n + j] = T[i * n + order[j]];
    ref_qr(n, S, Q);
    memcpy(vt, v, (size_t)rows * cols * sizeof(double));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) v[i * cols + j] = axis == 0 ? vt[order[i] * cols + j] : vt[i * cols + order[j]];
    free(T), free(S), free(vt), free(order), free(est);
}

static void ref_soap_step(RefSoap *r, const SoapHyper *h, double lr, const float *grad, double *W) {
    const int m = r->m, n = r->n;
    const size_t sz = (size_t)m * n;
    const double gb = h->shampoo_beta >= 0 ? h->shampoo_beta : h->beta2;
    double *G = dalloc(sz), *X = dalloc(sz), *GG = dalloc((size_t)(m > n ? m : n) * (m > n ? m : n));
    double *w = dalloc((size_t)(m > n ? m : n));
    to_double(grad, G, sz);
    if (!r->init) {
        if (r->left) {
            dmm(0, 1, m, m, n, G, G, r->GL);
            for (int i = 0; i < m * m; i++) r->GL[i] *= 1 - gb;
            jacobi_eigh(m, r->GL, w, r->QL);
        }
        if (r->right) {
            dmm(1, 0, n, n, m, G, G, r->GR);
            for (int i = 0; i < n * n; i++) r->GR[i] *= 1 - gb;
            jacobi_eigh(n, r->GR, w, r->QR);
        }
        r->init = 1;  // (ascending order here: the update does not depend on the order)
        free(G), free(X), free(GG), free(w);
        return;
    }
    r->k++;
    ref_soap_project(r, G, X, 0);
    for (size_t i = 0; i < sz; i++) {
        r->ea[i] = h->beta1 * r->ea[i] + (1 - h->beta1) * X[i];
        r->eas[i] = h->beta2 * r->eas[i] + (1 - h->beta2) * X[i] * X[i];
        X[i] = r->ea[i] / (sqrt(r->eas[i]) + h->eps);
    }
    ref_soap_project(r, X, X, 1);
    double ss = lr;
    if (h->correct_bias) ss *= sqrt(1 - pow(h->beta2, (double)r->k)) / (1 - pow(h->beta1, (double)r->k));
    if (h->normalize_grads) ss /= 1e-30 + dnorm(X, sz) / sqrt((double)sz);
    for (size_t i = 0; i < sz; i++) W[i] = (W[i] - ss * X[i]) * (1 - lr * h->weight_decay);
    if (r->left) {
        dmm(0, 1, m, m, n, G, G, GG);
        for (int i = 0; i < m * m; i++) r->GL[i] = gb * r->GL[i] + (1 - gb) * GG[i];
    }
    if (r->right) {
        dmm(1, 0, n, n, m, G, G, GG);
        for (int i = 0; i < n * n; i++) r->GR[i] = gb * r->GR[i] + (1 - gb) * GG[i];
    }
    if (r->k % h->precondition_frequency == 0) {
        ref_soap_project(r, r->ea, r->ea, 1);
        if (r->left) ref_soap_refresh(m, r->GL, r->QL, r->eas, m, n, 0);
        if (r->right) ref_soap_refresh(n, r->GR, r->QR, r->eas, m, n, 1);
        ref_soap_project(r, r->ea, r->ea, 0);
    }
    free(G), free(X), free(GG), free(w);
}

static double soap_vs_reference(const char *json, int rows, int cols, int steps, uint64_t seed) {
    SoapHyper *h = (SoapHyper *)make_hyper(&optimizer_soap, json);
    ParamTensor t = make_tensor(rows, cols, rows == 1 ? ROLE_NORM : ROLE_MLP_IN);
    float *state = new_state(&optimizer_soap, h, &t);
    const size_t sz = t.numel;
    float *W = (float *)xmalloc(sz * sizeof(float)), *G = (float *)xmalloc(sz * sizeof(float));
    float *dgot = (float *)xmalloc(sz * sizeof(float));
    double *Wd = dalloc(sz), *dref = dalloc(sz);
    RefSoap r;
    memset(&r, 0, sizeof r);
    r.m = rows, r.n = cols;
    soap_sides(h, &t, &r.left, &r.right);
    r.ea = dalloc(sz), r.eas = dalloc(sz);
    r.GL = dalloc((size_t)rows * rows), r.QL = dalloc((size_t)rows * rows);
    r.GR = dalloc((size_t)cols * cols), r.QR = dalloc((size_t)cols * cols);
    fill_normal(W, sz, seed, 1.0f);
    double worst = 0;
    const float lr = 0.01f;
    for (long step = 1; step <= steps; step++) {
        fill_normal(G, sz, seed * 100 + step, 1.0f);
        to_double(W, Wd, sz);
        for (size_t i = 0; i < sz; i++) dgot[i] = W[i], dref[i] = Wd[i];
        StepInfo info = step_info(step, lr);
        optimizer_soap.step_tensor(h, &info, &t, W, G, state);
        ref_soap_step(&r, h, lr, G, Wd);
        if (step == 1) continue;
        for (size_t i = 0; i < sz; i++) dgot[i] = W[i] - dgot[i], dref[i] = Wd[i] - dref[i];
        worst = fmax(worst, rel_err_fd(dgot, dref, sz));
    }
    free(r.ea), free(r.eas), free(r.GL), free(r.QL), free(r.GR), free(r.QR);
    free(state), free(W), free(G), free(dgot), free(Wd), free(dref), free(h);
    return worst;
}

TEST(soap_step_matches_direct_implementation) {
    double e = soap_vs_reference("{\"precondition_frequency\": 1, \"beta1\": 0.9, \"beta2\": 0.95, \"weight_decay\": 0.1}", 6, 6, 8, 81);
    CHECKF(e < 1e-4, "6x6, frequency 1: %g", e);
    e = soap_vs_reference("{\"precondition_frequency\": 2, \"shampoo_beta\": 0.8, \"normalize_grads\": true}", 5, 5, 8, 82);
    CHECKF(e < 1e-4, "5x5, frequency 2, shampoo_beta, normalize_grads: %g", e);
    e = soap_vs_reference("{\"precondition_frequency\": 1, \"max_precond_dim\": 4}", 6, 3, 8, 83);
    CHECKF(e < 1e-4, "6x3 with the 6 side unrotated: %g", e);
    e = soap_vs_reference("{\"correct_bias\": false}", 1, 5, 6, 84);
    CHECKF(e < 1e-4, "vector (unrotated, Adam): %g", e);
}

TEST(soap_resume_identical) { resume_with("soap", ", \"precondition_frequency\": 2", "soap"); }

// ---------------------------------------------------------------------------------------
// Sophia.

TEST(sophia_clipped_update_matches_formula) {
    enum { N = 64 };
    SophiaHyper *h = (SophiaHyper *)make_hyper(&optimizer_sophia, "{\"rho\": 0.05, \"weight_decay\": 0.2, \"beta1\": 0.9}");
    const double bss[] = {100, 300};
    for (int bi = 0; bi < 2; bi++) {
        float p[N], g[N], m[N], hh[N], p0[N], m0[N];
        fill_normal(p, N, 91, 1.0f);
        fill_normal(g, N, 92, 1.0f);
        fill_normal(m, N, 93, 1.0f);
        fill_uniform(hh, N, 94, 0.0f, 0.5f);
        hh[0] = 0.0f;
        memcpy(p0, p, sizeof p);
        memcpy(m0, m, sizeof m);
        float *slots[2] = {m, hh};
        StepInfo info = step_info(3, 0.01f);
        info.tokens_per_step = bss[bi];
        optimizer_sophia.step_elements(h, &info, p, g, slots, N);
        int clipped = 0, unclipped = 0;
        for (int i = 0; i < N; i++) {
            const double mm = 0.9 * m0[i] + 0.1 * g[i];
            const double raw = fabs(mm) / (0.05 * bss[bi] * hh[i] + 1e-15);
            const double ratio = fmin(raw, 1.0);
            clipped += raw > 1, unclipped += raw < 1;
            const double want = p0[i] * (1 - 0.01 * 0.2) - 0.01 * (mm > 0 ? 1 : -1) * ratio;
            CHECK_NEAR(m[i], mm, 1e-6);
            CHECKF(fabs(p[i] - want) < 1e-6, "bs %g element %d: %.9g vs %.9g", bss[bi], i, p[i], want);
        }
        CHECKF(clipped > 5 && unclipped > 5, "both branches exercised (%d clipped, %d not)", clipped, unclipped);
    }
    free(h);
}

TEST(sophia_hessian_updates_only_on_its_steps) {
    enum { N = 32 };
    SophiaHyper *h = (SophiaHyper *)make_hyper(&optimizer_sophia, "{\"hessian_interval\": 3, \"beta2\": 0.9}");
    float p[N], g[N], gh[N], m[N] = {0}, hh[N] = {0};
    double want[N] = {0};
    fill_normal(p, N, 95, 1.0f);
    float *slots[2] = {m, hh};
    for (long step = 1; step <= 10; step++) {
        fill_normal(g, N, 200 + step, 0.1f);
        StepInfo info = step_info(step, 0.01f);
        optimizer_sophia.step_elements(h, &info, p, g, slots, N);
        const int due = optimizer_sophia.curvature_due(h, step);
        CHECKF(due == (step % 3 == 0), "step %ld: due %d", step, due);
        if (due) {
            fill_normal(gh, N, 300 + step, 0.1f);
            optimizer_sophia.curvature_elements(h, &info, gh, slots, N);
            for (int i = 0; i < N; i++) want[i] = 0.9 * want[i] + 0.1 * (double)gh[i] * gh[i];
        }
        for (int i = 0; i < N; i++) CHECKF(fabs(hh[i] - want[i]) < 1e-9 + 1e-6 * want[i], "step %ld h[%d]", step, i);
    }
    free(h);

    // Through the trainer: h (slot 1 of every Sophia tensor) is non-zero after a run whose
    // hook fired (interval 2, 3 steps) and stays zero when it never did (interval 5).
    for (int run = 0; run < 2; run++) {
        RunConfig rc;
        const char *opt = run == 0 ? "{\"name\": \"sophia\", \"hessian_interval\": 2}" : "{\"name\": \"sophia\", \"hessian_interval\": 5}";
        tiny_config(&rc, "gpt2", 3, 3, opt);
        char out[600], ckpt[700];
        snprintf(out, sizeof out, "%s/sophia_hook_%d", test_tmpdir(), run);
        run_training(&rc, out, NULL);
        ModelLayout L;
        model_layout_init(&L, &rc.model);
        Optimizer o;
        optim_build(&o, rc.json, L.tensors, L.num_tensors, rc.schedule.lr);
        CHECK(optim_needs_curvature(&o, 4) == (run == 0) && !optim_needs_curvature(&o, 3));
        float *params = xmalloc_floats(L.num_params), *state = xmalloc_floats(o.state_floats);
        TrainState ts;
        checkpoint_path(ckpt, sizeof ckpt, out, 3);
        checkpoint_load(ckpt, &L, params, &o, state, &ts);
        double hsum = 0;
        for (int i = 0; i < L.num_tensors; i++)
            hsum += la_sumsq(state + o.state_offset[i] + L.tensors[i].numel, L.tensors[i].numel);
        if (run == 0) CHECKF(hsum > 0, "the curvature hook never updated h");
        else CHECKF(hsum == 0, "h changed without a curvature step (%g)", hsum);
        free(params);
        free(state);
        optim_free(&o);
        model_layout_free(&L);
        run_config_free(&rc);
    }
}

TEST(sophia_resume_identical) {
    check_resume_identical("gpt2",
                           "{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"name\": \"sophia\", \"hessian_interval\": 3,"
                           " \"rho\": 0.05}, {\"params\": [\"embeddings\", \"head\", \"norms\", \"biases\"]}]}",
                           "sophia");
}
