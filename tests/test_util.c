#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>

#include "../data/shard.h"
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
