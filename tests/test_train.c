// End-to-end trainer tests on tiny models: resume is bit-identical, checkpoints refuse
// mismatched configs, llm.c checkpoints round-trip, and the binary reports bad input.
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../model/cpu_backend.h"
#include "../model/llmc.h"
#include "../runtime/checkpoint.h"
#include "../runtime/common.h"
#include "../runtime/trainer.h"
#include "harness.h"
#include "test_util.h"

TEST(train_resume_bit_identical_gpt2) { check_resume_identical("gpt2", "{\"weight_decay\": 0.1}", "gpt2"); }
TEST(train_resume_bit_identical_llama) { check_resume_identical("llama", "{\"weight_decay\": 0.1}", "llama"); }

static void resume_mismatch(void *arg) {
    RunConfig rc;
    tiny_config(&rc, "gpt2", 8, 4, (const char *)arg);
    char ckpt[700];
    checkpoint_path(ckpt, sizeof ckpt, tmp_path("full_gpt2"), 4);
    run_training(&rc, tmp_path("mismatch"), ckpt);
}

static void resume_other_arch(void *arg) {
    RunConfig rc;
    tiny_config(&rc, "llama", 8, 4, "{}");
    char ckpt[700];
    checkpoint_path(ckpt, sizeof ckpt, tmp_path("full_gpt2"), 4);
    run_training(&rc, tmp_path("mismatch"), ckpt);
}

static void load_truncated(void *arg) {
    RunConfig rc;
    tiny_config(&rc, "gpt2", 8, 4, "{}");
    run_training(&rc, tmp_path("mismatch"), (const char *)arg);
}

TEST(train_checkpoint_errors) {
    if (!file_exists(tmp_path("full_gpt2/ckpt_00000004.bin"))) check_resume_identical("gpt2", "{\"weight_decay\": 0.1}", "gpt2");
    EXPECT_FATAL(resume_other_arch, NULL, "model.arch is \"gpt2\" in the checkpoint but \"llama\" in this run's config");
    EXPECT_FATAL(resume_mismatch, (void *)"{\"amsgrad\": true}", "optimizer state differs");
    // A truncated copy of a good checkpoint.
    size_t len;
    char *bytes = read_file(tmp_path("full_gpt2/ckpt_00000004.bin"), &len);
    FILE *f = xfopen(tmp_path("truncated.bin"), "wb");
    fwrite(bytes, 1, len / 2, f);
    fclose(f);
    free(bytes);
    EXPECT_FATAL(load_truncated, (void *)tmp_path("truncated.bin"), "truncated");
    write_text(tmp_path("notckpt.bin"), "hello");
    EXPECT_FATAL(load_truncated, (void *)tmp_path("notckpt.bin"), "not a checkpoint");
}

TEST(llmc_export_import_round_trip) {
    JsonConfig *c = config_from_text("{\"model\": {\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"block_size\": 6, \"vocab_size\": 70, \"seed\": 4}}");
    ModelConfig mc;
    model_config_read(&mc, c);
    ModelLayout L;
    model_layout_init(&L, &mc);
    float *params = xmalloc_floats(L.num_params), *back = xmalloc_floats(L.num_params);
    model_init_params(&L, params);
    const char *path = tmp_path("gpt2_tiny.bin");
    llmc_save(path, &L, params);
    // The header, read independently of the loader.
    int header[256];
    FILE *f = xfopen(path, "rb");
    CHECK(fread(header, sizeof(int), 256, f) == 256);
    fseek(f, 0, SEEK_END);
    const long size = ftell(f);
    fclose(f);
    CHECK(header[0] == 20240326 && header[1] == 3 && header[2] == 6 && header[3] == 70 && header[4] == 2 &&
          header[5] == 2 && header[6] == 8 && header[7] == 128);
    // llm.c's 16 arrays: wte Vp*C, wpe T*C, then per layer ln1 w/b, qkv w/b, proj w/b, ln2 w/b, fc w/b, fcproj w/b, lnf w/b.
    const long C = 8, Lr = 2, Vp = 128, T = 6;
    const long expect = Vp * C + T * C + Lr * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C) + 2 * C;
    CHECKF(size == 1024 + expect * 4, "file size %ld, expected %ld", size, 1024 + expect * 4);

    char json[512];
    snprintf(json, sizeof json, "{\"model\": {\"init_from\": \"%s\"}}", path);
    JsonConfig *c2 = config_from_text(json);
    ModelConfig mc2;
    model_config_read(&mc2, c2);
    CHECK(mc2.n_layer == 2 && mc2.n_embd == 8 && mc2.vocab_size == 70 && mc2.block_size == 6);
    ModelLayout L2;
    model_layout_init(&L2, &mc2);
    CHECK(L2.num_params == L.num_params);
    llmc_load_params(path, &L2, back);
    CHECK(memcmp(params, back, L.num_params * sizeof(float)) == 0);
    free(params);
    free(back);
    model_layout_free(&L);
    model_layout_free(&L2);
    json_config_free(c);
    json_config_free(c2);
}

static void export_llama(void *arg) {
    JsonConfig *c = config_from_text("{\"model\": {\"arch\": \"llama\", \"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, \"block_size\": 6, \"vocab_size\": 7}}");
    ModelConfig mc;
    model_config_read(&mc, c);
    ModelLayout L;
    model_layout_init(&L, &mc);
    float *p = xmalloc_floats(L.num_params);
    llmc_save(tmp_path("llama.bin"), &L, p);
}

static void init_mismatch(void *arg) {
    char json[512];
    snprintf(json, sizeof json, "{\"model\": {\"init_from\": \"%s\", \"n_layer\": 3}}", tmp_path("gpt2_tiny.bin"));
    ModelConfig mc;
    model_config_read(&mc, config_from_text(json));
}

TEST(llmc_errors) {
    if (!file_exists(tmp_path("gpt2_tiny.bin"))) llmc_export_import_round_trip();
    EXPECT_FATAL(export_llama, NULL, "only GPT-2 models");
    EXPECT_FATAL(init_mismatch, NULL, "model.n_layer: is 3 but");
}

// The binary, as users run it: clear one-line errors and a non-zero exit.
static int run_cmd(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    return WEXITSTATUS(status);
}

TEST(cli_errors_and_resume) {
    if (!file_exists("./train_gpt")) {
        test_fail(__FILE__, __LINE__, "./train_gpt is missing (make test builds it)");
        return;
    }
    char out[8192], cmd[2048];
    int rc = run_cmd("./train_gpt -c /nonexistent.json 2>&1", out, sizeof out);
    CHECKF(rc != 0 && strstr(out, "/nonexistent.json: config file not found"), "rc %d: %s", rc, out);
    rc = run_cmd("./train_gpt --frobnicate 2>&1", out, sizeof out);
    CHECKF(rc != 0 && strstr(out, "unknown or incomplete argument"), "rc %d: %s", rc, out);

    const char *data = tmp_path("cli_data");
    write_random_shards(data, 13, 3000, 800, 9);
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/cli.json", test_tmpdir());
    char json[2048];
    snprintf(json, sizeof json,
             "{\"model\": {\"n_layer\": 1, \"n_head\": 2, \"n_embd\": 8, \"block_size\": 8, \"vocab_size\": 13},"
             " \"data\": {\"train\": \"%s/train_*.bin\", \"val\": \"%s/val_*.bin\"},"
             " \"train\": {\"batch_size\": 2, \"steps\": 6}, \"eval\": {\"every\": 3, \"batches\": 1},"
             " \"checkpoint\": {\"every\": 3}, \"log\": {\"every\": 1}}", data, data);
    write_text(cfg, json);
    const char *dir = tmp_path("cli_run");
    snprintf(cmd, sizeof cmd, "./train_gpt -c %s --out %s --set train.steps=3 2>&1", cfg, dir);
    rc = run_cmd(cmd, out, sizeof out);
    CHECKF(rc == 0 && strstr(out, "done: 3 steps"), "rc %d: %s", rc, out);
    snprintf(cmd, sizeof cmd, "./train_gpt -c %s --out %s 2>&1", cfg, dir);
    rc = run_cmd(cmd, out, sizeof out);
    CHECKF(rc != 0 && strstr(out, "already holds a run"), "rc %d: %s", rc, out);
    // Resume with more steps: the config comes from the checkpoint, --set extends it.
    snprintf(cmd, sizeof cmd, "./train_gpt --resume %s --set train.steps=6 2>&1", dir);
    rc = run_cmd(cmd, out, sizeof out);
    CHECKF(rc == 0 && strstr(out, "(resumed)") && strstr(out, "done: 6 steps"), "rc %d: %s", rc, out);
    char path[700];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    CHECK(file_exists(path));
    snprintf(cmd, sizeof cmd, "./train_gpt --resume %s/nothing 2>&1", test_tmpdir());
    rc = run_cmd(cmd, out, sizeof out);
    CHECKF(rc != 0 && strstr(out, "no such run directory or checkpoint"), "rc %d: %s", rc, out);
    // A NaN loss stops the run with a message, not a silently wrong run.
    snprintf(cmd, sizeof cmd, "./train_gpt -c %s --out %s/nan --set schedule.lr=1e30 --set train.grad_clip=0 2>&1", cfg, test_tmpdir());
    rc = run_cmd(cmd, out, sizeof out);
    CHECKF(rc != 0 && strstr(out, "error: step") && strstr(out, "stopping"), "rc %d: %s", rc, out);
}
