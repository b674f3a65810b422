// CPU implementation of optim/linalg.h: OpenBLAS for products, LAPACKE for the
// factorisations. LAPACK works column-major; a symmetric matrix reads the same either
// way, and the other calls go through LAPACKE's row-major interface.
#include "linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"

void la_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc) {
    if (m <= 0 || n <= 0) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
                alpha, A, lda, B, ldb, beta, C, ldc);
}

void la_gram(int trans, int n, int k, float alpha, const float *A, int lda, float beta, float *C, int ldc) {
    if (n <= 0) return;
    cblas_ssyrk(CblasRowMajor, CblasUpper, trans ? CblasTrans : CblasNoTrans, n, k, alpha, A, lda, beta, C, ldc);
    for (int i = 1; i < n; i++)
        for (int j = 0; j < i; j++) C[(size_t)i * ldc + j] = C[(size_t)j * ldc + i];
}

double la_sumsq(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

double la_block_sumsq(const float *A, int r, int c, int lda) {
    double s = 0;
    for (int i = 0; i < r; i++) s += la_sumsq(A + (size_t)i * lda, (size_t)c);
    return s;
}

int la_all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

// In-place transpose of a square n x n matrix.
static void transpose_square(float *V, int n) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            const float t = V[(size_t)i * n + j];
            V[(size_t)i * n + j] = V[(size_t)j * n + i];
            V[(size_t)j * n + i] = t;
        }
}

int la_eigh(int n, const float *A, int lda, float *w, float *V) {
    if (n <= 0) return 0;
    const size_t nn = (size_t)n * n;
    for (int i = 0; i < n; i++) memcpy(V + (size_t)i * n, A + (size_t)i * lda, (size_t)n * sizeof(float));
    // Column-major on the (symmetric) copy: eigenvector j comes back as row j.
    int info = LAPACKE_ssyevd(LAPACK_COL_MAJOR, 'V', 'U', n, V, n, w);
    if (info == 0 && la_all_finite(w, (size_t)n) && la_all_finite(V, nn)) {
        transpose_square(V, n);
        return 0;
    }
    double *Vd = (double *)xmalloc(nn * sizeof(double)), *wd = (double *)xmalloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) Vd[(size_t)i * n + j] = A[(size_t)i * lda + j];
    info = LAPACKE_dsyevd(LAPACK_COL_MAJOR, 'V', 'U', n, Vd, n, wd);
    int ok = info == 0;
    for (size_t i = 0; ok && i < nn; i++) ok = isfinite(Vd[i]);
    for (int i = 0; ok && i < n; i++) ok = isfinite(wd[i]);
    if (ok) {
        for (int i = 0; i < n; i++) {
            w[i] = (float)wd[i];
            for (int j = 0; j < n; j++) V[(size_t)i * n + j] = (float)Vd[(size_t)j * n + i];
        }
    }
    free(Vd);
    free(wd);
    return ok ? 1 : -1;
}

int la_qr(int m, int n, const float *A, int lda, float *Q, int ldq) {
    if (m <= 0 || n <= 0) return 0;
    if (m < n) return -1;
    if (Q != A)
        for (int i = 0; i < m; i++) memcpy(Q + (size_t)i * ldq, A + (size_t)i * lda, (size_t)n * sizeof(float));
    float *tau = la_scratch(LA_SCRATCH_SLOTS - 1, (size_t)n);
    int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, n, Q, ldq, tau);
    if (info == 0) info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, n, n, Q, ldq, tau);
    return info == 0 ? 0 : -1;
}

int la_svd(int m, int n, const float *A, int lda, float *U, float *s, float *Vt) {
    const int r = m < n ? m : n;
    float *a = (float *)xmalloc((size_t)m * n * sizeof(float)), *superb = (float *)xmalloc((size_t)(r + 1) * sizeof(float));
    for (int i = 0; i < m; i++) memcpy(a + (size_t)i * n, A + (size_t)i * lda, (size_t)n * sizeof(float));
    const int info = LAPACKE_sgesvd(LAPACK_ROW_MAJOR, 'S', 'S', m, n, a, n, s, U, r, Vt, n, superb);
    free(a);
    free(superb);
    return info == 0 ? 0 : -1;
}

static __thread float *scratch_buf[LA_SCRATCH_SLOTS];
static __thread size_t scratch_cap[LA_SCRATCH_SLOTS];

float *la_scratch(int slot, size_t n) {
    if (slot < 0 || slot >= LA_SCRATCH_SLOTS) fatal("internal: la_scratch slot %d out of range", slot);
    if (n > scratch_cap[slot]) {
        free(scratch_buf[slot]);
        scratch_buf[slot] = xmalloc_floats(n);
        scratch_cap[slot] = n;
    }
    return scratch_buf[slot];
}
