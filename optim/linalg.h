// The small dense linear-algebra interface that the matrix optimizers (Muon, Shampoo,
// SOAP) are written against. The CPU version is OpenBLAS (products) and LAPACKE
// (eigendecomposition, QR, SVD); a CUDA twin (cuBLAS, cuSOLVER) can mirror it call for
// call. Matrices are row-major float with an explicit leading dimension (row stride), so
// a block of a larger matrix is a pointer and the larger matrix's stride.
#pragma once
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// C = alpha op(A) op(B) + beta C, with op(A) m x k, op(B) k x n and C m x n.
// trans_a / trans_b: 0 uses the matrix as stored, 1 its transpose.
void la_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc);

// Gram matrix, both triangles written: C = alpha A A^T + beta C with A n x k (trans 0), or
// C = alpha A^T A + beta C with A k x n (trans 1). C is n x n and symmetric on entry.
void la_gram(int trans, int n, int k, float alpha, const float *A, int lda, float beta, float *C, int ldc);

// Symmetric eigendecomposition A = V diag(w) V^T of the n x n matrix A (read, not
// modified): eigenvalues w ascending, eigenvectors in the columns of V (n x n, ld n).
// Single precision (ssyevd) first; if that fails or returns a non-finite value, the
// decomposition is retried in double precision (dsyevd). Returns 0 on success, 1 when
// only the double retry succeeded, -1 when both failed (w and V are then unspecified).
int la_eigh(int n, const float *A, int lda, float *w, float *V);

// Thin QR of the m x n matrix A (m >= n): Q (m x n, ld ldq) with orthonormal columns,
// from sgeqrf + sorgqr, so the signs follow LAPACK (as torch.linalg.qr does).
// Q may alias A. Returns 0 on success.
int la_qr(int m, int n, const float *A, int lda, float *Q, int ldq);

// Thin SVD A = U diag(s) Vt of the m x n matrix A (sgesvd): U m x r, s descending,
// Vt r x n, r = min(m, n). Used by tests. Returns 0 on success.
int la_svd(int m, int n, const float *A, int lda, float *U, float *s, float *Vt);

// Sum of squares in double precision.
double la_sumsq(const float *x, size_t n);
// Sum of squares of the r x c block at A with leading dimension lda.
double la_block_sumsq(const float *A, int r, int c, int lda);
// 1 if every element is finite.
int la_all_finite(const float *x, size_t n);

// Scratch memory reused across calls so that steps do not allocate: a per-thread buffer
// per slot, grown on demand and kept. Callers document the slots they use.
enum { LA_SCRATCH_SLOTS = 16 };
float *la_scratch(int slot, size_t n);

#ifdef __cplusplus
}
#endif
