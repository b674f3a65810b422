// Residual connection: out = a + b, element-wise over n floats (layout does not matter).
#pragma once

static inline void residual_forward(float *restrict out, const float *restrict a, const float *restrict b, int n) {
#pragma omp parallel for simd schedule(static)
    for (int i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// da and db must be distinct buffers (the residual stream and the branch).
static inline void residual_backward(float *restrict da, float *restrict db, const float *restrict dout, int n) {
#pragma omp parallel for simd schedule(static)
    for (int i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}
