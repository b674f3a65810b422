#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/shard.h"
#include "../model/cpu_backend.h"
#include "../runtime/checkpoint.h"
#include "../runtime/trainer.h"
#include "harness.h"
#include "../runtime/common.h"
#include "../runtime/rng.h"

JsonConfig *config_from_text(const char *json) {
    cJSON *root = cJSON_Parse(json);
    if (!root) fatal("test config is not valid JSON: %s", json);
    return json_config_from_tree(root, "test", NULL, 0);
}

void run_config_from_text(RunConfig *rc, const char *json) { run_config_read(rc, config_from_text(json)); }

void write_text(const char *path, const char *text) {
    FILE *f = xfopen(path, "w");
    fputs(text, f);
    fclose(f);
}

void write_random_shards(const char *dir, int vocab, int train_tokens, int val_tokens, uint64_t seed) {
    make_dirs(dir);
    Rng r;
    rng_seed(&r, seed);
    const int n = train_tokens > val_tokens ? train_tokens : val_tokens;
    uint32_t *tok = (uint32_t *)xmalloc((size_t)n * sizeof(uint32_t));
    // A learnable stream: mostly "next = prev + 1 mod vocab", so losses fall in a few steps.
    for (int split = 0; split < 2; split++) {
        const int count = split ? val_tokens : train_tokens;
        for (int i = 0; i < count; i++)
            tok[i] = i && rng_uniform(&r) < 0.8f ? (tok[i - 1] + 1) % (uint32_t)vocab : (uint32_t)rng_below(&r, (uint64_t)vocab);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s_000000.bin", dir, split ? "val" : "train");
        shard_write(path, tok, count, 0);
    }
    free(tok);
}

static const char *TINY =
    "{\"model\": {\"arch\": \"%s\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 16, \"block_size\": 8, \"vocab_size\": 13},"
    " \"data\": {\"train\": \"%s/train_*.bin\", \"val\": \"%s/val_*.bin\"},"
    " \"train\": {\"batch_size\": 3, \"grad_accum\": 2, \"steps\": %d, \"seed\": 5},"
    " \"schedule\": {\"lr\": 3e-3, \"warmup\": 2},"
    " \"optimizer\": %s,"
    " \"eval\": {\"every\": 3, \"batches\": 2}, \"checkpoint\": {\"every\": %d, \"keep\": 0}, \"log\": {\"every\": 1}}";

void tiny_config(RunConfig *rc, const char *arch, int steps, int ckpt_every, const char *optimizer) {
    const char *data = tmp_path("tiny_data");
    if (!file_exists(tmp_path("tiny_data/train_000000.bin"))) write_random_shards(data, 13, 4000, 1000, 3);
    char json[4096];
    snprintf(json, sizeof json, TINY, arch, data, data, steps, optimizer, ckpt_every);
    run_config_from_text(rc, json);
}

// Losses of log.jsonl, indexed by step (train loss; NAN where absent).
void read_losses(const char *dir, double *loss, int max_step) {
    for (int i = 0; i <= max_step; i++) loss[i] = NAN;
    char path[4096];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    char *text = read_file(path, NULL);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *rec = cJSON_Parse(line);
        const cJSON *step = cJSON_GetObjectItem(rec, "step"), *l = cJSON_GetObjectItem(rec, "loss");
        if (cJSON_IsNumber(step) && cJSON_IsNumber(l) && step->valueint <= max_step) loss[step->valueint] = l->valuedouble;
        cJSON_Delete(rec);
    }
    free(text);
}

void run_training(RunConfig *rc, const char *out, const char *resume) {
    Backend *b = cpu_backend_create(rc);
    TrainOptions o = {out, resume, 1};
    train_run(rc, b, &o, NULL);
    cpu_backend_free(b);
}

// Train 2N steps in one go; separately resume from the step-N checkpoint of that run and
// train N more: every loss after the resume must equal the unbroken run's exactly.
void check_resume_identical_accum(const char *arch, const char *optimizer, int grad_accum, const char *tag) {
    enum { N = 4 };
    char full[600], resumed[600], ckpt[700];
    snprintf(full, sizeof full, "%s/full_%s", test_tmpdir(), tag);
    snprintf(resumed, sizeof resumed, "%s/resumed_%s", test_tmpdir(), tag);
    checkpoint_path(ckpt, sizeof ckpt, full, N);
    for (int run = 0; run < 2; run++) {
        RunConfig rc;
        tiny_config(&rc, arch, 2 * N, N, optimizer);
        // The resolved config is what checkpoints store, so change it there too.
        rc.train.grad_accum = grad_accum;
        cJSON *train = cJSON_GetObjectItemCaseSensitive(json_config_root(rc.json), "train");
        cJSON_ReplaceItemInObjectCaseSensitive(train, "grad_accum", cJSON_CreateNumber(grad_accum));
        if (run == 1) CHECKF(file_exists(ckpt), "no checkpoint %s", ckpt);
        run_training(&rc, run ? resumed : full, run ? ckpt : NULL);
        run_config_free(&rc);
    }
    double a[2 * N + 1], b[2 * N + 1];
    read_losses(full, a, 2 * N);
    read_losses(resumed, b, 2 * N);
    for (int s = N + 1; s <= 2 * N; s++)
        CHECKF(a[s] == b[s] && !isnan(a[s]), "%s: step %d loss %.9g (unbroken) vs %.9g (resumed)", tag, s, a[s], b[s]);
    CHECKF(a[2 * N] < a[1], "%s: the loss did not fall (%g -> %g)", tag, a[1], a[2 * N]);
}

void check_resume_identical(const char *arch, const char *optimizer, const char *tag) {
    check_resume_identical_accum(arch, optimizer, 2, tag);
}


void tiny_optimizer(Optimizer *opt, ModelLayout *L, JsonConfig **c, const char *optimizer_json) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"model\": {\"arch\": \"gpt2\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, \"block_size\": 4,"
             " \"vocab_size\": 11}, \"optimizer\": %s}", optimizer_json);
    *c = config_from_text(json);
    ModelConfig mc;
    model_config_read(&mc, *c);
    model_layout_init(L, &mc);
    optim_build(opt, *c, L->tensors, L->num_tensors, 1e-3f);
}

void build_tiny_optimizer(void *optimizer_json) {
    Optimizer opt;
    ModelLayout L;
    JsonConfig *c;
    tiny_optimizer(&opt, &L, &c, (const char *)optimizer_json);
    optim_free(&opt);
    model_layout_free(&L);
    json_config_free(c);
}
