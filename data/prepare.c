#define _GNU_SOURCE
#include "prepare.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/common.h"
#include "shard.h"
#include "tokenizer.h"

static const char *USAGE =
    "usage: prepare_data --input FILE [FILE...] --tokenizer char|byte --out DIR [--val-fraction F (default 0.1)] "
    "[--shard-tokens N (default 100000000)]\n";

void prepare_defaults(PrepareOptions *o) {
    memset(o, 0, sizeof *o);
    o->val_fraction = 0.1;
    o->shard_tokens = 100000000;
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = (char *)xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

// Writes tokens[0..n) as prefix_000000.bin, prefix_000001.bin, ... of at most per_shard
// tokens each, removes higher-numbered leftovers of an earlier run, returns the count.
static int write_split(const PrepareOptions *o, const char *prefix, const uint32_t *tokens, int64_t n, int version) {
    int count = 0;
    char name[64];
    for (int64_t at = 0; at < n; at += o->shard_tokens, count++) {
        int64_t m = n - at < o->shard_tokens ? n - at : o->shard_tokens;
        snprintf(name, sizeof name, "%s_%06d.bin", prefix, count);
        char *path = join_path(o->out_dir, name);
        shard_write(path, tokens + at, m, version);
        free(path);
    }
    for (int i = count;; i++) {
        snprintf(name, sizeof name, "%s_%06d.bin", prefix, i);
        char *path = join_path(o->out_dir, name);
        int exists = file_exists(path);
        if (exists) {
            if (unlink(path) != 0) fatal("%s: cannot remove a stale shard of an earlier run (%s)", path, strerror(errno));
            if (!o->quiet) printf("removed stale %s\n", path);
        }
        free(path);
        if (!exists) break;
    }
    return count;
}

static void print_split(const PrepareOptions *o, const char *label, const char *prefix, int64_t tokens, int shards) {
    if (shards == 0) {
        printf("%-6s 0 tokens, no shard\n", label);
        return;
    }
    printf("%-6s %lld tokens in %d shard%s: %s/%s_000000.bin", label, (long long)tokens, shards, shards == 1 ? "" : "s",
           o->out_dir, prefix);
    if (shards > 1) printf(" .. %s_%06d.bin", prefix, shards - 1);
    putchar('\n');
}

void prepare_run(const PrepareOptions *o, PrepareResult *result) {
    if (o->num_inputs <= 0) fatal("prepare_data: no input file");
    if (!o->out_dir || !o->out_dir[0]) fatal("prepare_data: no output directory");
    if (!o->tokenizer) fatal("prepare_data: no tokenizer");
    if (!(o->val_fraction >= 0 && o->val_fraction < 1))
        fatal("prepare_data: val fraction %g is not in [0, 1)", o->val_fraction);
    if (o->shard_tokens <= 0 || o->shard_tokens > INT32_MAX)
        fatal("prepare_data: shard size %lld tokens is not in 1 .. %d", (long long)o->shard_tokens, INT32_MAX);

    // Concatenate the inputs.
    size_t total = 0, cap = 0;
    char *text = NULL;
    for (int i = 0; i < o->num_inputs; i++) {
        struct stat st;
        if (stat(o->inputs[i], &st) == 0 && !S_ISREG(st.st_mode)) fatal("%s: not a regular file", o->inputs[i]);
        size_t len;
        char *part = read_file(o->inputs[i], &len);
        if (total + len + 1 > cap) {
            cap = (total + len + 1) * 2;
            text = (char *)xrealloc(text, cap);
        }
        memcpy(text + total, part, len);
        total += len;
        free(part);
    }
    if (total == 0) fatal("%s: no text to prepare (empty input)", o->num_inputs == 1 ? o->inputs[0] : "prepare_data");
    const char *source = o->num_inputs == 1 ? o->inputs[0] : "the concatenated inputs";

    Tokenizer tok;
    tokenizer_build(&tok, o->tokenizer, text, total, source);
    int64_t n;
    uint32_t *tokens = tokenizer_encode(&tok, text, total, &n, source);
    free(text);

    int64_t n_train = o->val_fraction > 0 ? (int64_t)((double)n * (1.0 - o->val_fraction)) : n;
    int64_t n_val = n - n_train;
    if (n_train < 1) fatal("prepare_data: the train split is empty (%lld tokens, val fraction %g)", (long long)n, o->val_fraction);
    if (o->val_fraction > 0 && n_val < 1)
        fatal("prepare_data: the val split is empty (%lld tokens, val fraction %g); use more text or --val-fraction 0",
              (long long)n, o->val_fraction);

    make_dirs(o->out_dir);
    int version = tok.vocab_size - 1 > 0xFFFF ? 2 : 1;
    int train_shards = write_split(o, "train", tokens, n_train, version);
    int val_shards = write_split(o, "val", tokens + n_train, n_val, version);
    char *vocab_path = join_path(o->out_dir, "vocab.json");
    tokenizer_save(&tok, vocab_path);

    if (!o->quiet) {
        printf("prepare_data: %d input file%s, %zu bytes, %s tokenizer, vocab size %d\n", o->num_inputs,
               o->num_inputs == 1 ? "" : "s", total, o->tokenizer, tok.vocab_size);
        print_split(o, "train:", "train", n_train, train_shards);
        print_split(o, "val:", "val", n_val, val_shards);
        printf("%-6s %s\n", "vocab:", vocab_path);
        fflush(stdout);
    }
    if (result) {
        result->input_bytes = (int64_t)total;
        result->train_tokens = n_train;
        result->val_tokens = n_val;
        result->train_shards = train_shards;
        result->val_shards = val_shards;
        result->vocab_size = tok.vocab_size;
    }
    free(vocab_path);
    free(tokens);
    tokenizer_free(&tok);
}

PRINTF_LIKE(1, 2) static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("prepare_data: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fputs(USAGE, stderr);
    return 2;
}

int prepare_parse_args(int argc, char **argv, PrepareOptions *o) {
    prepare_defaults(o);
    o->inputs = (const char **)xmalloc((size_t)(argc > 0 ? argc : 1) * sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(USAGE, stdout);
            return 1;
        }
        if (strcmp(a, "--input") == 0) {
            int before = o->num_inputs;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) o->inputs[o->num_inputs++] = argv[++i];
            if (o->num_inputs == before) return usage_error("%s needs at least one file", a);
            continue;
        }
        if (strcmp(a, "--tokenizer") != 0 && strcmp(a, "--out") != 0 && strcmp(a, "--val-fraction") != 0 &&
            strcmp(a, "--shard-tokens") != 0)
            return usage_error("unknown argument \"%s\"", a);
        if (i + 1 >= argc) return usage_error("%s needs a value", a);
        const char *v = argv[++i];
        char *end;
        if (strcmp(a, "--tokenizer") == 0) {
            if (strcmp(v, "char") != 0 && strcmp(v, "byte") != 0)
                return usage_error("unknown tokenizer \"%s\" (known: char, byte)", v);
            o->tokenizer = v;
        } else if (strcmp(a, "--out") == 0) {
            if (!v[0]) return usage_error("--out needs a directory");
            o->out_dir = v;
        } else if (strcmp(a, "--val-fraction") == 0) {
            errno = 0;
            double f = strtod(v, &end);
            if (errno || end == v || *end || !(f >= 0 && f < 1))
                return usage_error("--val-fraction \"%s\" is not a number in [0, 1)", v);
            o->val_fraction = f;
        } else {
            errno = 0;
            long long s = strtoll(v, &end, 10);
            if (errno || end == v || *end || s <= 0 || s > INT32_MAX)
                return usage_error("--shard-tokens \"%s\" is not an integer in 1 .. 2147483647", v);
            o->shard_tokens = s;
        }
    }
    if (o->num_inputs == 0) return usage_error("missing --input");
    if (!o->tokenizer) return usage_error("missing --tokenizer");
    if (!o->out_dir) return usage_error("missing --out");
    return 0;
}

int prepare_main(int argc, char **argv) {
    PrepareOptions o;
    int rc = prepare_parse_args(argc, argv, &o);
    if (rc == 0) prepare_run(&o, NULL);
    free(o.inputs);
    return rc == 1 ? 0 : rc;
}
