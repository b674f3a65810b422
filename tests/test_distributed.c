// The distribution logic of optim/distributed.c, checked in one process by playing each
// rank in turn (the collectives themselves are exercised by tests/test_dist.py).
#include <stdlib.h>
#include <string.h>

#include "../optim/optimizer.h"
#include "../runtime/common.h"
#include "harness.h"
#include "test_util.h"

static void build(Optimizer *opt, ModelLayout *L, JsonConfig **c, const char *optimizer_json) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"model\": {\"arch\": \"llama\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"block_size\": 4,"
             " \"vocab_size\": 11, \"tie_embeddings\": false}, \"optimizer\": %s}", optimizer_json);
    *c = config_from_text(json);
    ModelConfig mc;
    model_config_read(&mc, *c);
    model_layout_init(L, &mc);
    optim_build(opt, *c, L->tensors, L->num_tensors, 1e-3f);
}

// ZeRO-1: the ranks' ranges tile the parameters, and taking each rank's part of a global
// state and putting the parts back together gives the global state again.
TEST(zero_ranges_and_state_layout) {
    const int world = 3;
    ModelLayout L;
    JsonConfig *c;
    Optimizer probe;
    build(&probe, &L, &c, "{\"name\": \"adamw\", \"amsgrad\": true}");
    const size_t S = probe.state_floats;
    float *global = xmalloc_floats(S), *sum = xmalloc_floats(S), *part = xmalloc_floats(S);
    fill_normal(global, S, 5, 1.0f);
    memset(sum, 0, S * sizeof(float));
    size_t covered = 0, local_total = 0;
    for (int r = 0; r < world; r++) {
        Optimizer opt;
        optim_build(&opt, c, L.tensors, L.num_tensors, 1e-3f);
        optim_distribute(&opt, c, 1, 1, r, world, L.num_params);
        CHECK(opt.dist.lo == covered);
        covered = opt.dist.hi;
        local_total += opt.dist.local_floats;
        const size_t n = opt.dist.hi - opt.dist.lo;
        CHECKF(n + 1 >= L.num_params / world && n <= L.num_params / world + 1, "rank %d holds %zu of %zu", r, n, L.num_params);
        float *local = xmalloc_floats(opt.dist.local_floats);
        optim_state_from_global(&opt, global, local);
        optim_state_to_global(&opt, local, part);  // a world of one here: no reduction, just this rank's part
        for (size_t i = 0; i < S; i++) sum[i] += part[i];
        free(local);
        optim_free(&opt);
    }
    CHECK(covered == L.num_params);
    CHECK(local_total == S);  // no state is held twice or lost
    CHECK(memcmp(sum, global, S * sizeof(float)) == 0);
    free(global);
    free(sum);
    free(part);
    optim_free(&probe);
    model_layout_free(&L);
    json_config_free(c);
}

// Per-tensor optimizers: every matrix gets exactly one owner, assigned largest first to
// the least loaded rank (recomputed here independently); element-wise tensors stay with
// every rank.
TEST(owners_balanced_largest_first) {
    const int world = 3;
    ModelLayout L;
    JsonConfig *c;
    Optimizer opt;
    build(&opt, &L, &c,
          "{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"name\": \"muon\"},"
          " {\"params\": [\"embeddings\", \"head\", \"norms\"]}]}");
    optim_distribute(&opt, c, 0, 1, 1, world, L.num_params);
    double load[3] = {0, 0, 0};
    int done[256] = {0};
    for (;;) {  // pick the largest unassigned matrix (lowest index on ties) and the least loaded rank
        int best = -1;
        double best_cost = -1;
        for (int i = 0; i < L.num_tensors; i++) {
            const ParamTensor *t = &L.tensors[i];
            if (!role_is_matrix(t->role) || done[i]) continue;
            const double cost = (double)t->rows * t->cols * (t->rows < t->cols ? t->rows : t->cols);
            if (cost > best_cost) best = i, best_cost = cost;
        }
        if (best < 0) break;
        int r = 0;
        for (int k = 1; k < world; k++)
            if (load[k] < load[r]) r = k;
        CHECKF(opt.dist.owner[best] == r, "%s owned by %d, expected %d", L.tensors[best].name, opt.dist.owner[best], r);
        load[r] += best_cost;
        done[best] = 1;
    }
    for (int i = 0; i < L.num_tensors; i++)
        if (!role_is_matrix(L.tensors[i].role)) CHECKF(opt.dist.owner[i] == -1, "%s should be stepped by every rank", L.tensors[i].name);
    optim_free(&opt);
    model_layout_free(&L);
    json_config_free(c);
}

static void zero_with_muon(void *arg) {
    ModelLayout L;
    JsonConfig *c;
    Optimizer opt;
    build(&opt, &L, &c, (const char *)arg);
    optim_distribute(&opt, c, 1, 1, 0, 2, L.num_params);
}

TEST(zero_refuses_whole_tensor_steps) {
    EXPECT_FATAL(zero_with_muon, (void *)"{\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"name\": \"muon\"}, {\"params\": [\"embeddings\", \"head\", \"norms\"]}]}",
                 "train.zero: ZeRO-1 shards element-wise optimizer state, but group 0:muon uses muon");
    EXPECT_FATAL(zero_with_muon, (void *)"{\"name\": \"adamw\", \"cautious\": true}", "needs whole tensors (a cautious mask)");
}
