// The model's shape, its parameter layout and its tensor roles, shared by the CPU and
// CUDA trainers and by the checkpoint code.
//
// Parameters live in one flat float array made of "parameter arrays" in a fixed order;
// for GPT-2 the first 16 are exactly llm.c's, so llm.c checkpoints load with one read.
// Layer arrays stack the L layers ((L, rows, cols)). On top of that flat array, the model
// publishes "tensors": per-layer 2-D views with a role (q, k, v, o, mlp_in, ...). The
// fused qkv and gate/up matrices are published as their q, k, v (gate, in) row blocks,
// so optimizers that work per matrix (Muon, Shampoo, SOAP) see them separately.
#pragma once
#include <stddef.h>

#include "../runtime/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ARCH_GPT2, ARCH_LLAMA } Arch;

typedef struct {
    int arch;  // Arch
    int n_layer, n_head, n_kv_head, n_embd;
    int block_size;  // maximum sequence length
    int vocab_size;
    int mlp_hidden;    // 0: from mlp_ratio
    float mlp_ratio;   // 0: 4 for gpt2, 8/3 for llama
    float norm_eps;
    float rope_theta;
    int tie_embeddings;
    float init_std;
    char *init_from;   // llm.c checkpoint to start from ("" for random init)
    int seed;
    // Derived by model_config_finalize:
    int padded_vocab_size;  // vocab_size rounded up to a multiple of 64
    int head_dim;
    int qkv_dim;            // (n_head + 2 n_kv_head) * head_dim
    int hidden;             // MLP hidden width (the SwiGLU inner width for llama)
    int fc_dim;             // rows of the MLP input matrix: hidden (gpt2) or 2*hidden (llama)
} ModelConfig;

extern const ConfigKey model_keys[];

// Reads the "model" section and derives the dependent sizes; errors name the key and file.
void model_config_read(ModelConfig *mc, const JsonConfig *c);
// Derives padded_vocab_size, head_dim, ... and checks cross-key constraints.
void model_config_finalize(ModelConfig *mc, const JsonConfig *c);
const char *arch_name(int arch);

typedef enum {
    P_WTE, P_WPE, P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW, P_ATTPROJB,
    P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPROJW, P_FCPROJB, P_LNFW, P_LNFB,
    P_HEAD,
    NUM_PARAM_ARRAYS
} ParamArray;

extern const char *const param_array_names[NUM_PARAM_ARRAYS];

typedef enum {
    ROLE_EMBEDDING, ROLE_HEAD, ROLE_Q, ROLE_K, ROLE_V, ROLE_O,
    ROLE_MLP_IN, ROLE_MLP_GATE, ROLE_MLP_OUT, ROLE_NORM, ROLE_BIAS,
    NUM_ROLES
} TensorRole;

extern const char *const role_names[NUM_ROLES];
// Hidden 2-D weight matrices: the tensors that Muon, Shampoo and SOAP are meant for.
int role_is_matrix(int role);

typedef struct {
    char name[48];   // e.g. "h.3.attn.q"
    int role;        // TensorRole
    int layer;       // -1 outside the blocks
    int array;       // ParamArray it lives in
    size_t offset;   // first element in the flat parameter array
    int rows, cols;  // (fan_out, fan_in); vectors are 1 x n
    size_t numel;
} ParamTensor;

typedef struct {
    ModelConfig cfg;
    size_t array_size[NUM_PARAM_ARRAYS];
    size_t array_offset[NUM_PARAM_ARRAYS];
    size_t num_params;
    ParamTensor *tensors;
    int num_tensors;
} ModelLayout;

void model_layout_init(ModelLayout *layout, const ModelConfig *cfg);
void model_layout_free(ModelLayout *layout);
// Deterministic initialisation from cfg.seed: normal(init_std) weights, residual
// projections scaled by 1/sqrt(2 n_layer), unit norm weights, zero biases and zero
// padded-vocabulary rows.
void model_init_params(const ModelLayout *layout, float *params);

#ifdef __cplusplus
}
#endif
