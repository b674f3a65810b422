// See cpu_ref.h. Built by gcc with the CPU trainer's flags (it lives outside tests/*.c so
// that the CPU test binary does not pick it up).
#include "cpu_ref.h"

#include "../../kernels/attention.h"
#include "../../kernels/crossentropy.h"
#include "../../kernels/encoder.h"
#include "../../kernels/gelu.h"
#include "../../kernels/layernorm.h"
#include "../../kernels/matmul.h"
#include "../../kernels/residual.h"
#include "../../kernels/rmsnorm.h"
#include "../../kernels/rope.h"
#include "../../kernels/swiglu.h"

void ref_encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe, int N, int T, int C) {
    encoder_forward(out, tokens, wte, wpe, N, T, C);
}
void ref_encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens, int N, int T, int C) {
    encoder_backward(dwte, dwpe, dout, tokens, N, T, C);
}
void ref_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias,
                           int N, int C, float eps) {
    layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
}
void ref_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, const float *mean, const float *rstd, int N, int C) {
    layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}
void ref_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    rmsnorm_forward(out, rstd, inp, weight, N, C, eps);
}
void ref_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C) {
    rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, N, C);
}
void ref_residual_forward(float *out, const float *a, const float *b, int n) { residual_forward(out, a, b, n); }
void ref_matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int IC, int OC) {
    matmul_forward(out, inp, weight, bias, N, IC, OC);
}
void ref_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC) {
    matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
}
void ref_gelu_forward(float *out, const float *inp, int n) { gelu_forward(out, inp, n); }
void ref_gelu_backward(float *dinp, const float *inp, const float *dout, int n) { gelu_backward(dinp, inp, dout, n); }
void ref_swiglu_forward(float *out, const float *inp, int N, int Hd) { swiglu_forward(out, inp, N, Hd); }
void ref_swiglu_backward(float *dinp, const float *dout, const float *inp, int N, int Hd) {
    swiglu_backward(dinp, dout, inp, N, Hd);
}
void ref_rope_table(float *table, int T, int hd, float theta) { rope_table(table, T, hd, theta); }
void ref_rope_forward(float *qkv, const float *table, int B, int T, int H, int KVH, int hd) {
    rope_forward(qkv, table, B, T, H, KVH, hd);
}
void ref_rope_backward(float *dqkv, const float *table, int B, int T, int H, int KVH, int hd) {
    rope_backward(dqkv, table, B, T, H, KVH, hd);
}
void ref_attention_forward(float *out, float *att, const float *qkv, int B, int T, int H, int KVH, int hd) {
    attention_forward(out, att, qkv, B, T, H, KVH, hd);
}
void ref_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int T, int H,
                            int KVH, int hd) {
    attention_backward(dqkv, dout, qkv, att, B, T, H, KVH, hd);
}
void ref_crossentropy_forward(float *losses, const float *logits, const int *targets, int N, int V) {
    crossentropy_forward(losses, logits, targets, N, V);
}
double ref_crossentropy_forward_backward(float *losses, float *dlogits, const float *logits, const int *targets,
                                         float dloss, int N, int V) {
    return crossentropy_forward_backward(losses, dlogits, logits, targets, dloss, N, V);
}
