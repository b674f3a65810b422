#define _GNU_SOURCE
#include "checkpoint.h"

#include <cJSON.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

static const char MAGIC[8] = {'G', 'P', 'T', 'C', 'K', 'P', 'T', '\0'};
enum { VERSION = 1, NAME_BYTES = 16 };

static void write_section(AtomicFile *af, const char *name, const void *data, uint64_t bytes) {
    char padded[NAME_BYTES] = {0};
    snprintf(padded, sizeof padded, "%s", name);
    xfwrite(padded, NAME_BYTES, af->f, af->tmp_path);
    xfwrite(&bytes, sizeof bytes, af->f, af->tmp_path);
    xfwrite(data, (size_t)bytes, af->f, af->tmp_path);
}

static void write_json_section(AtomicFile *af, const char *name, cJSON *obj) {
    char *text = cJSON_PrintUnformatted(obj);
    write_section(af, name, text, strlen(text));
    free(text);
    cJSON_Delete(obj);
}

// The model's shape as the checkpoint records it; resuming compares it field by field.
static cJSON *model_json(const ModelLayout *layout) {
    const ModelConfig *c = &layout->cfg;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "arch", arch_name(c->arch));
    cJSON_AddNumberToObject(o, "n_layer", c->n_layer);
    cJSON_AddNumberToObject(o, "n_head", c->n_head);
    cJSON_AddNumberToObject(o, "n_kv_head", c->n_kv_head);
    cJSON_AddNumberToObject(o, "n_embd", c->n_embd);
    cJSON_AddNumberToObject(o, "block_size", c->block_size);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "padded_vocab_size", c->padded_vocab_size);
    cJSON_AddNumberToObject(o, "hidden", c->hidden);
    cJSON_AddBoolToObject(o, "tie_embeddings", c->tie_embeddings);
    cJSON_AddNumberToObject(o, "num_params", (double)layout->num_params);
    return o;
}

static cJSON *optim_json(const Optimizer *opt) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < opt->n_tensors; i++) {
        const OptimGroup *g = &opt->groups[opt->group_of[i]];
        size_t next = i + 1 < opt->n_tensors ? opt->state_offset[i + 1] : opt->state_floats;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "tensor", opt->tensors[i].name);
        cJSON_AddStringToObject(o, "optimizer", g->def->name);
        cJSON_AddNumberToObject(o, "floats", (double)(next - opt->state_offset[i]));
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static cJSON *train_json(const TrainState *ts) {
    char buf[32];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", (double)ts->step);
    cJSON_AddNumberToObject(o, "data_epoch", (double)ts->train_pos.epoch);
    cJSON_AddNumberToObject(o, "data_shard", (double)ts->train_pos.shard);
    cJSON_AddNumberToObject(o, "data_row", (double)ts->train_pos.row);
    // 64-bit RNG states as hex strings: JSON numbers are doubles and would lose bits.
    snprintf(buf, sizeof buf, "%016" PRIx64, ts->rng_train);
    cJSON_AddStringToObject(o, "rng_train", buf);
    snprintf(buf, sizeof buf, "%016" PRIx64, ts->rng_sample);
    cJSON_AddStringToObject(o, "rng_sample", buf);
    return o;
}

void checkpoint_save(const char *path, const char *config_json, const ModelLayout *layout, const float *params,
                     const Optimizer *opt, const float *opt_state, const TrainState *ts) {
    AtomicFile af = atomic_open(path);
    uint32_t head[2] = {VERSION, 6};
    xfwrite(MAGIC, sizeof MAGIC, af.f, af.tmp_path);
    xfwrite(head, sizeof head, af.f, af.tmp_path);
    write_section(&af, "config", config_json, strlen(config_json));
    write_json_section(&af, "model", model_json(layout));
    write_section(&af, "params", params, layout->num_params * sizeof(float));
    write_json_section(&af, "optim", optim_json(opt));
    write_section(&af, "optim_state", opt_state, opt->state_floats * sizeof(float));
    write_json_section(&af, "train", train_json(ts));
    atomic_commit(&af);
}

typedef struct {
    char name[NAME_BYTES + 1];
    uint64_t bytes;
    long offset;  // of the data in the file
} Section;

typedef struct {
    FILE *f;
    const char *path;
    Section sections[16];
    int n;
} Reader;

static void reader_open(Reader *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->path = path;
    r->f = xfopen(path, "rb");
    char magic[8];
    uint32_t head[2];
    if (fread(magic, 1, sizeof magic, r->f) != sizeof magic || memcmp(magic, MAGIC, sizeof magic) != 0)
        fatal("%s: not a checkpoint of this trainer (bad magic)", path);
    xfread(head, sizeof head, r->f, path);
    if (head[0] != VERSION) fatal("%s: checkpoint version %u, this build reads version %d", path, head[0], VERSION);
    if (head[1] > 16) fatal("%s: corrupt checkpoint (%u sections)", path, head[1]);
    fseek(r->f, 0, SEEK_END);
    const long file_size = ftell(r->f);
    long pos = (long)(sizeof magic + sizeof head);
    for (uint32_t i = 0; i < head[1]; i++) {
        Section *s = &r->sections[r->n++];
        fseek(r->f, pos, SEEK_SET);
        xfread(s->name, NAME_BYTES, r->f, path);
        s->name[NAME_BYTES] = '\0';
        xfread(&s->bytes, sizeof s->bytes, r->f, path);
        s->offset = pos + NAME_BYTES + (long)sizeof s->bytes;
        if (s->bytes > (uint64_t)(file_size - s->offset)) fatal("%s: checkpoint is truncated (section %s)", path, s->name);
        pos = s->offset + (long)s->bytes;
    }
    if (pos != file_size) fatal("%s: checkpoint has %ld unexpected trailing bytes", path, file_size - pos);
}

static const Section *reader_find(const Reader *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->sections[i].name, name) == 0) return &r->sections[i];
    fatal("%s: checkpoint has no \"%s\" section", r->path, name);
}

static void reader_read(const Reader *r, const char *name, void *dst, uint64_t bytes, const char *what) {
    const Section *s = reader_find(r, name);
    if (s->bytes != bytes) fatal("%s: checkpoint %s has %" PRIu64 " bytes, this run needs %" PRIu64 " (%s)", r->path, name,
                                 s->bytes, bytes, what);
    fseek(r->f, s->offset, SEEK_SET);
    xfread(dst, (size_t)bytes, r->f, r->path);
}

static char *reader_text(const Reader *r, const char *name) {
    const Section *s = reader_find(r, name);
    char *text = (char *)xmalloc((size_t)s->bytes + 1);
    fseek(r->f, s->offset, SEEK_SET);
    xfread(text, (size_t)s->bytes, r->f, r->path);
    text[s->bytes] = '\0';
    return text;
}

static cJSON *reader_json(const Reader *r, const char *name) {
    char *text = reader_text(r, name);
    cJSON *j = cJSON_Parse(text);
    free(text);
    if (!j) fatal("%s: corrupt checkpoint (section %s is not JSON)", r->path, name);
    return j;
}

char *checkpoint_read_config(const char *path) {
    Reader r;
    reader_open(&r, path);
    char *text = reader_text(&r, "config");
    fclose(r.f);
    return text;
}

static void compare_json_fields(const char *path, const char *what, const cJSON *have, const cJSON *want) {
    for (const cJSON *w = want->child; w; w = w->next) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(have, w->string);
        if (!h || !cJSON_Compare(h, w, 1)) {
            char *hs = h ? cJSON_PrintUnformatted(h) : xstrdup("(missing)");
            char *ws = cJSON_PrintUnformatted(w);
            fatal("%s: %s.%s is %s in the checkpoint but %s in this run's config", path, what, w->string, hs, ws);
        }
    }
}

static uint64_t parse_hex(const char *path, const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) fatal("%s: corrupt checkpoint (train.%s)", path, key);
    return strtoull(v->valuestring, NULL, 16);
}

static int64_t json_int(const char *path, const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fatal("%s: corrupt checkpoint (train.%s)", path, key);
    return (int64_t)v->valuedouble;
}

void checkpoint_load(const char *path, const ModelLayout *layout, float *params, const Optimizer *opt, float *opt_state,
                     TrainState *ts) {
    Reader r;
    reader_open(&r, path);
    cJSON *have = reader_json(&r, "model"), *want = model_json(layout);
    compare_json_fields(path, "model", have, want);
    cJSON_Delete(have);
    cJSON_Delete(want);
    reader_read(&r, "params", params, layout->num_params * sizeof(float), "parameters");

    cJSON *ho = reader_json(&r, "optim"), *wo = optim_json(opt);
    const int nh = cJSON_GetArraySize(ho), nw = cJSON_GetArraySize(wo);
    if (nh != nw) fatal("%s: checkpoint has optimizer state for %d tensors, this run has %d", path, nh, nw);
    for (int i = 0; i < nw; i++) {
        const cJSON *h = cJSON_GetArrayItem(ho, i), *w = cJSON_GetArrayItem(wo, i);
        if (!cJSON_Compare(h, w, 1)) {
            char *hs = cJSON_PrintUnformatted(h), *ws = cJSON_PrintUnformatted(w);
            fatal("%s: optimizer state differs: checkpoint has %s, this run's optimizer config needs %s", path, hs, ws);
        }
    }
    cJSON_Delete(ho);
    cJSON_Delete(wo);
    reader_read(&r, "optim_state", opt_state, opt->state_floats * sizeof(float), "optimizer state");

    cJSON *t = reader_json(&r, "train");
    ts->step = json_int(path, t, "step");
    ts->train_pos.epoch = json_int(path, t, "data_epoch");
    ts->train_pos.shard = json_int(path, t, "data_shard");
    ts->train_pos.row = json_int(path, t, "data_row");
    ts->rng_train = parse_hex(path, t, "rng_train");
    ts->rng_sample = parse_hex(path, t, "rng_sample");
    cJSON_Delete(t);
    fclose(r.f);
}

void checkpoint_path(char *out, size_t cap, const char *dir, long step) { snprintf(out, cap, "%s/ckpt_%08ld.bin", dir, step); }

// Checkpoint steps in dir, ascending; returns the count (caller frees *steps).
static int list_checkpoints(const char *dir, long **steps) {
    DIR *d = opendir(dir);
    int n = 0, cap = 0;
    *steps = NULL;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long step;
        char tail[8];
        if (sscanf(e->d_name, "ckpt_%ld.%7s", &step, tail) == 2 && strcmp(tail, "bin") == 0) {
            if (n == cap) *steps = (long *)xrealloc(*steps, (size_t)(cap = cap ? 2 * cap : 16) * sizeof(long));
            (*steps)[n++] = step;
        }
    }
    closedir(d);
    for (int i = 1; i < n; i++)  // insertion sort: a handful of files
        for (int j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            long tmp = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = tmp;
        }
    return n;
}

int checkpoint_latest(const char *dir, char *out, size_t cap) {
    long *steps;
    int n = list_checkpoints(dir, &steps);
    if (n) checkpoint_path(out, cap, dir, steps[n - 1]);
    free(steps);
    return n > 0;
}

void checkpoint_prune(const char *dir, int keep) {
    if (keep <= 0) return;
    long *steps;
    int n = list_checkpoints(dir, &steps);
    for (int i = 0; i < n - keep; i++) {
        char path[4096];
        checkpoint_path(path, sizeof path, dir, steps[i]);
        unlink(path);
    }
    free(steps);
}
