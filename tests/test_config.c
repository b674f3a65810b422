// Config loading: extends, --set, and the errors users see for bad input.
#include <string.h>

#include "../model/gpt_cpu.h"
#include "../optim/optimizer.h"
#include "../runtime/common.h"
#include "harness.h"
#include "test_util.h"

static const char *BASE =
    "{\"model\": {\"n_layer\": 2, \"n_head\": 2, \"n_embd\": 8, \"block_size\": 8, \"vocab_size\": 11},\n"
    " \"data\": {\"train\": \"x/train_*.bin\"},\n"
    " \"train\": {\"batch_size\": 4, \"steps\": 10},\n"
    " \"optimizer\": {\"name\": \"adamw\", \"beta1\": 0.8, \"beta2\": 0.95}}\n";

TEST(config_extends_and_set) {
    write_text(tmp_path("base.json"), BASE);
    write_text(tmp_path("child.json"),
               "{\"extends\": \"base.json\", \"model\": {\"n_layer\": 3}, \"optimizer\": {\"beta1\": 0.7}}");
    const char *sets[] = {"train.steps=25", "schedule.decay=linear", "optimizer.eps_schedule.type=\"log_linear\"",
                          "data.val=y/val_*.bin"};
    RunConfig rc;
    run_config_read(&rc, json_config_load(tmp_path("child.json"), sets, 4));
    CHECK(rc.model.n_layer == 3);             // child overrides base
    CHECK(rc.model.n_embd == 8);              // inherited from base
    CHECK(rc.train.steps == 25);              // --set number
    CHECK(rc.schedule.decay == DECAY_LINEAR); // --set bare string
    CHECK(strcmp(rc.data.val, "y/val_*.bin") == 0);
    CHECK(rc.train.seq_len == 8);             // 0 defaults to block_size
    CHECK(rc.model.seed == rc.train.seed);    // model.seed follows train.seed
    const cJSON *opt = json_config_section(rc.json, "optimizer");
    CHECK(cJSON_GetObjectItem(opt, "beta1")->valuedouble == 0.7);   // deep merge keeps beta2
    CHECK(cJSON_GetObjectItem(opt, "beta2")->valuedouble == 0.95);
    CHECK(strcmp(json_config_origin(rc.json, "model.n_embd"), tmp_path("base.json")) == 0);
    CHECK(strcmp(json_config_origin(rc.json, "model.n_layer"), tmp_path("child.json")) == 0);
    CHECK(strcmp(json_config_origin(rc.json, "train.steps"), "--set train.steps") == 0);
    run_config_free(&rc);
}

static void load(void *path) {
    RunConfig rc;
    run_config_read(&rc, json_config_load((const char *)path, NULL, 0));
}

static void load_with_set(void *set) {
    const char *sets[] = {(const char *)set};
    RunConfig rc;
    run_config_read(&rc, json_config_load(tmp_path("base.json"), sets, 1));
}

TEST(config_errors_name_key_and_file) {
    write_text(tmp_path("base.json"), BASE);
    write_text(tmp_path("unknown.json"), "{\"extends\": \"base.json\", \"train\": {\"stepz\": 3}}");
    char expect[600];
    snprintf(expect, sizeof expect, "%s: train.stepz: unknown key", tmp_path("unknown.json"));
    EXPECT_FATAL(load, (void *)tmp_path("unknown.json"), expect);

    write_text(tmp_path("type.json"), "{\"extends\": \"base.json\", \"train\": {\"steps\": \"many\"}}");
    EXPECT_FATAL(load, (void *)tmp_path("type.json"), "train.steps: must be an integer");
    write_text(tmp_path("range.json"), "{\"extends\": \"base.json\", \"train\": {\"grad_clip\": -1}}");
    EXPECT_FATAL(load, (void *)tmp_path("range.json"), "train.grad_clip: -1 is out of range [0,inf)");
    write_text(tmp_path("section.json"), "{\"extends\": \"base.json\", \"trian\": {}}");
    EXPECT_FATAL(load, (void *)tmp_path("section.json"), "trian: unknown section");
    write_text(tmp_path("syntax.json"), "{\"model\": {\"n_layer\": 2,,}}");
    EXPECT_FATAL(load, (void *)tmp_path("syntax.json"), "syntax.json:1:");
    write_text(tmp_path("noext.json"), "{\"extends\": \"missing.json\"}");
    EXPECT_FATAL(load, (void *)tmp_path("noext.json"), "base config");
    EXPECT_FATAL(load, (void *)tmp_path("does_not_exist.json"), "config file not found");
    EXPECT_FATAL(load_with_set, (void *)"schedule.decay=exponential", "--set schedule.decay: schedule.decay: must be one of");
    EXPECT_FATAL(load_with_set, (void *)"model.arch=gpt3", "model.arch: must be one of gpt2|llama");
    EXPECT_FATAL(load_with_set, (void *)"train.seq_len=9", "train.seq_len: 9 exceeds model.block_size 8");
    EXPECT_FATAL(load_with_set, (void *)"noequals", "expected section.key=value");
}

// --- optimizer groups ---


TEST(optimizer_group_routing) {
    Optimizer opt;
    ModelLayout L;
    JsonConfig *c;
    tiny_optimizer(&opt, &L, &c,
                   "{\"name\": \"adamw\", \"beta1\": 0.5, \"groups\": ["
                   "{\"params\": \"matrices\", \"lr_mult\": 2, \"weight_decay\": 0.1},"
                   "{\"params\": [\"embeddings\", \"h.*.ln*\"], \"beta2\": 0.9, \"label\": \"emb\"},"
                   "{\"params\": [\"lnf.*\", \"h.*.attn.*.bias\", \"h.*.mlp.*.bias\"], \"lr\": 0.5}]}");
    CHECK(opt.n_groups == 3);
    CHECK(fabsf(opt.groups[0].lr_peak - 2e-3f) < 1e-9f);
    CHECK(opt.groups[2].lr_peak == 0.5f);
    CHECK(strcmp(opt.groups[1].label, "emb") == 0);
    for (int i = 0; i < L.num_tensors; i++) {
        const ParamTensor *t = &L.tensors[i];
        const int g = opt.group_of[i];
        if (role_is_matrix(t->role)) CHECKF(g == 0, "%s in group %d", t->name, g);
        else if (t->role == ROLE_EMBEDDING || strncmp(t->name, "h.0.ln", 6) == 0) CHECKF(g == 1, "%s in group %d", t->name, g);
        else CHECKF(g == 2, "%s in group %d", t->name, g);
    }
    // Top-level keys reach groups of the same optimizer; group keys override them.
    const float *h0 = (const float *)opt.groups[0].hyper, *h1 = (const float *)opt.groups[1].hyper;
    CHECK(h0[0] == 0.5f && h1[0] == 0.5f);  // beta1 is the first AdamW hyperparameter
    CHECK(h1[1] == 0.9f);                   // beta2 overridden in group 1
    optim_free(&opt);
    model_layout_free(&L);
    json_config_free(c);
}

TEST(optimizer_group_errors) {
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"matrices\"}]}",
                 "optimizer.groups: tensor wte (embedding) is in no group");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"all\"}, {\"params\": \"norms\"}]}",
                 "optimizer.groups[1].params: tensor h.0.ln1.weight is already in group 0:adamw");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"all\", \"name\": \"adamq\"}]}",
                 "optimizer.groups[0]: unknown optimizer \"adamq\"");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"all\", \"betta1\": 0.9}]}",
                 "optimizer.groups[0].betta1: unknown key");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"mlp.*\"}]}", "selector \"mlp.*\"");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"name\": \"sgdd\"}", "optimizer.name: unknown optimizer \"sgdd\"");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"beta1\": 1.5}", "optimizer.beta1: 1.5 is out of range [0,1)");
    EXPECT_FATAL(build_tiny_optimizer, (void *)"{\"groups\": [{\"params\": \"all\", \"lr\": 1, \"lr_mult\": 2}]}", "either lr or lr_mult");
}

// A child config that switches optimizer starts the optimizer section afresh (the base's
// AdamW keys would be unknown to Lion), and null removes an inherited key.
TEST(config_rename_resets_section_and_null_deletes) {
    write_text(tmp_path("base.json"), BASE);
    write_text(tmp_path("lion.json"), "{\"extends\": \"base.json\", \"optimizer\": {\"name\": \"lion\", \"beta1\": 0.95},"
                                      " \"train\": {\"batch_size\": null}}");
    JsonConfig *c = json_config_load(tmp_path("lion.json"), NULL, 0);
    const cJSON *opt = json_config_section(c, "optimizer");
    CHECK(cJSON_GetArraySize(opt) == 2 && cJSON_GetObjectItem(opt, "beta2") == NULL);
    CHECK(cJSON_GetObjectItem(json_config_section(c, "train"), "batch_size") == NULL);
    CHECK(cJSON_GetObjectItem(json_config_section(c, "train"), "steps") != NULL);
    json_config_free(c);
    const char *sets[] = {"optimizer.name=sgd", "optimizer.momentum=0.8", "optimizer.beta2=null"};
    c = json_config_load(tmp_path("base.json"), sets, 3);
    opt = json_config_section(c, "optimizer");
    CHECK(cJSON_GetArraySize(opt) == 2 && cJSON_GetObjectItem(opt, "beta1") == NULL); // name + momentum
    CHECK(cJSON_GetObjectItem(opt, "momentum")->valuedouble == 0.8);
    json_config_free(c);
    const char *same[] = {"optimizer.name=adamw"};  // naming the optimizer it already has keeps its keys
    c = json_config_load(tmp_path("base.json"), same, 1);
    CHECK(cJSON_GetObjectItem(json_config_section(c, "optimizer"), "beta1") != NULL);
    json_config_free(c);
}

// --set reaches into lists: optimizer.groups[1].lr changes one group only.
TEST(config_set_list_elements) {
    write_text(tmp_path("groups.json"),
               "{\"optimizer\": {\"name\": \"adamw\", \"groups\": [{\"params\": \"matrices\", \"lr\": 0.1},"
               " {\"params\": \"all\", \"lr\": 0.2}]}}");
    const char *sets[] = {"optimizer.groups[1].lr=0.5", "optimizer.groups[0]={\"params\": \"norms\"}"};
    JsonConfig *c = json_config_load(tmp_path("groups.json"), sets, 2);
    const cJSON *groups = cJSON_GetObjectItem(json_config_section(c, "optimizer"), "groups");
    CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(groups, 1), "lr")->valuedouble == 0.5);
    CHECK(strcmp(cJSON_GetObjectItem(cJSON_GetArrayItem(groups, 0), "params")->valuestring, "norms") == 0);
    CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(groups, 0), "lr") == NULL);
    CHECK(strcmp(json_config_origin(c, "optimizer.groups[1].lr"), "--set optimizer.groups[1].lr") == 0);
    json_config_free(c);
}

static void set_missing_element(void *arg) {
    const char *sets[] = {(const char *)arg};
    json_config_load(tmp_path("groups.json"), sets, 1);
}

TEST(config_set_list_errors) {
    if (!file_exists(tmp_path("groups.json"))) config_set_list_elements();
    EXPECT_FATAL(set_missing_element, (void *)"optimizer.groups[5].lr=1", "groups has no element 5");
    EXPECT_FATAL(set_missing_element, (void *)"optimizer.groups[x].lr=1", "bad list index");
}
