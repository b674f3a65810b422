// The CPU kernels of kernels/*.h behind plain functions, compiled by gcc exactly as the CPU
// trainer compiles them, for test_gpt.cu to hold the CUDA kernels to. Same arguments as
// the kernels they wrap.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

void ref_encoder_forward(float *out, const int *tokens, const float *wte, const float *wpe, int N, int T, int C);
void ref_encoder_backward(float *dwte, float *dwpe, const float *dout, const int *tokens, int N, int T, int C);
void ref_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias,
                           int N, int C, float eps);
void ref_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, const float *mean, const float *rstd, int N, int C);
void ref_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void ref_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                          const float *rstd, int N, int C);
void ref_residual_forward(float *out, const float *a, const float *b, int n);
void ref_matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N, int IC, int OC);
void ref_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                         const float *weight, int N, int IC, int OC);
void ref_gelu_forward(float *out, const float *inp, int n);
void ref_gelu_backward(float *dinp, const float *inp, const float *dout, int n);
void ref_swiglu_forward(float *out, const float *inp, int N, int Hd);
void ref_swiglu_backward(float *dinp, const float *dout, const float *inp, int N, int Hd);
void ref_rope_table(float *table, int T, int hd, float theta);
void ref_rope_forward(float *qkv, const float *table, int B, int T, int H, int KVH, int hd);
void ref_rope_backward(float *dqkv, const float *table, int B, int T, int H, int KVH, int hd);
void ref_attention_forward(float *out, float *att, const float *qkv, int B, int T, int H, int KVH, int hd);
void ref_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *att, int B, int T, int H,
                            int KVH, int hd);
void ref_crossentropy_forward(float *losses, const float *logits, const int *targets, int N, int V);
double ref_crossentropy_forward_backward(float *losses, float *dlogits, const float *logits, const int *targets,
                                         float dloss, int N, int V);

#ifdef __cplusplus
}
#endif
