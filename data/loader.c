#define _GNU_SOURCE
#include "loader.h"

#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/common.h"
#include "../runtime/rng.h"

// Streams of random numbers derived from (seed, epoch, stream); stream 0 orders the
// shards, stream 1 + i orders the rows of shard i (index in the sorted list).
static uint64_t derive_seed(uint64_t seed, uint64_t epoch, uint64_t stream) {
    Rng r;
    rng_seed(&r, seed);
    uint64_t h = rng_u64(&r);
    rng_seed(&r, h ^ epoch);
    h = rng_u64(&r);
    rng_seed(&r, h ^ stream);
    return rng_u64(&r);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Expands the comma-separated patterns into a sorted, de-duplicated list of paths.
static char **expand_globs(const char *globs, const char *key, int *count) {
    char **paths = NULL;
    size_t n = 0, cap = 0;
    char *copy = xstrdup(globs);
    int patterns = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        char *end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t')) *--end = '\0';
        if (!*tok) fatal("%s: empty pattern in \"%s\"", key, globs);
        patterns++;
        glob_t g;
        int rc = glob(tok, 0, NULL, &g);
        if (rc == GLOB_NOMATCH) fatal("%s: pattern \"%s\" matches no file", key, tok);
        if (rc != 0) fatal("%s: cannot expand pattern \"%s\" (glob error %d)", key, tok, rc);
        for (size_t i = 0; i < g.gl_pathc; i++) {
            if (n == cap) {
                cap = cap ? 2 * cap : 16;
                paths = (char **)xrealloc(paths, cap * sizeof *paths);
            }
            paths[n++] = xstrdup(g.gl_pathv[i]);
        }
        globfree(&g);
    }
    free(copy);
    if (patterns == 0) fatal("%s: no file pattern given (\"%s\")", key, globs);
    qsort(paths, n, sizeof *paths, cmp_str);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && strcmp(paths[m - 1], paths[i]) == 0) {
            free(paths[i]);
            continue;
        }
        paths[m++] = paths[i];
    }
    if (m > INT_MAX) fatal("%s: too many files (%zu)", key, m);
    *count = (int)m;
    return paths;
}

static void shuffle_u32(uint32_t *a, int64_t n, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(&r, (uint64_t)i + 1);
        uint32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

// Makes dl->order hold the shard order of dl->pos.epoch.
static void ensure_order(DataLoader *dl) {
    if (dl->order_epoch == dl->pos.epoch) return;
    for (int i = 0; i < dl->num_shards; i++) dl->order[i] = i;
    if (dl->shuffle) {
        Rng r;
        rng_seed(&r, derive_seed(dl->seed, (uint64_t)dl->pos.epoch, 0));
        for (int i = dl->num_shards - 1; i > 0; i--) {
            int j = (int)rng_below(&r, (uint64_t)i + 1);
            int t = dl->order[i];
            dl->order[i] = dl->order[j];
            dl->order[j] = t;
        }
    }
    dl->order_epoch = dl->pos.epoch;
}

// Makes dl->perm hold the row order of shard `si` in dl->pos.epoch (shuffle only).
static void ensure_perm(DataLoader *dl, int si) {
    if (dl->perm_epoch == dl->pos.epoch && dl->perm_shard == si) return;
    int64_t rows = dl->shard_rows[si];
    if (rows > dl->perm_cap) {
        free(dl->perm);
        dl->perm = (uint32_t *)xmalloc((size_t)rows * sizeof(uint32_t));
        dl->perm_cap = rows;
    }
    for (int64_t i = 0; i < rows; i++) dl->perm[i] = (uint32_t)i;
    shuffle_u32(dl->perm, rows, derive_seed(dl->seed, (uint64_t)dl->pos.epoch, 1 + (uint64_t)si));
    dl->perm_epoch = dl->pos.epoch;
    dl->perm_shard = si;
}

// Leaves a shard that cannot supply the next step's window (and the epoch after its last
// shard). Only step boundaries (rows at multiples of the window) are checked: a window
// that fitted when it started is finished in the same shard.
static void normalize(DataLoader *dl) {
    const int64_t W = (int64_t)dl->B * dl->world * dl->accum;
    for (;;) {
        ensure_order(dl);
        int64_t rows = dl->shard_rows[dl->order[dl->pos.shard]];
        if (dl->pos.row % W != 0 || dl->pos.row + W <= rows) return;
        dl->pos.row = 0;
        if (++dl->pos.shard == dl->num_shards) {
            dl->pos.shard = 0;
            dl->pos.epoch++;
        }
    }
}

void loader_open(DataLoader *dl, const char *globs, int B, int T, int rank, int world, int vocab_size, int shuffle,
                 uint64_t seed, const char *config_key) {
    memset(dl, 0, sizeof *dl);
    const char *key = config_key && config_key[0] ? config_key : "data";
    if (!globs) fatal("%s: no file pattern given", key);
    if (B <= 0 || T <= 0) fatal("%s: batch size B=%d and sequence length T=%d must be positive", key, B, T);
    if (world <= 0 || rank < 0 || rank >= world) fatal("%s: rank %d is not in a world of %d", key, rank, world);
    if ((int64_t)B * world > INT32_MAX) fatal("%s: B*world = %lld rows is too large", key, (long long)B * world);
    int64_t G = (int64_t)B * world;

    int nfiles = 0;
    char **paths = expand_globs(globs, key, &nfiles);
    dl->shards = (Shard *)xcalloc((size_t)nfiles, sizeof(Shard));
    dl->shard_rows = (int64_t *)xcalloc((size_t)nfiles, sizeof(int64_t));
    int64_t largest = 0;
    for (int i = 0; i < nfiles; i++) {
        Shard s;
        shard_open(&s, paths[i]);
        int64_t rows = (s.num_tokens - 1) / T;
        if (s.num_tokens > largest) largest = s.num_tokens;
        if (rows < G) {
            if (rank == 0)
                fprintf(stderr,
                        "warning: %s: %s has %lld tokens = %lld rows of T+1 = %d tokens, fewer than B*world = %lld "
                        "rows: skipped\n",
                        key, paths[i], (long long)s.num_tokens, (long long)rows, T + 1, (long long)G);
            shard_close(&s);
        } else {
            dl->shard_rows[dl->num_shards] = rows;
            dl->shards[dl->num_shards++] = s;
            dl->batches_per_epoch += rows / G;
        }
        free(paths[i]);
    }
    free(paths);
    if (dl->num_shards == 0)
        fatal("%s: too few tokens: none of the %d file(s) matched by \"%s\" has B*world = %lld rows of T = %d "
              "(needs at least %lld tokens; the largest has %lld)",
              key, nfiles, globs, (long long)G, T, (long long)(G * T + 1), (long long)largest);

    dl->B = B;
    dl->T = T;
    dl->rank = rank;
    dl->world = world;
    dl->accum = 1;
    dl->vocab_size = vocab_size;
    dl->shuffle = shuffle != 0;
    dl->seed = seed;
    dl->key = xstrdup(key);
    dl->order = (int *)xmalloc((size_t)dl->num_shards * sizeof(int));
    dl->order_epoch = -1;
    dl->perm_epoch = -1;
    dl->perm_shard = -1;
    loader_reset(dl);
}

static NORETURN void bad_token(const DataLoader *dl, const Shard *s, int64_t offset, uint32_t tok) {
    if (dl->vocab_size > 0)
        fatal("%s: %s: token %u at offset %lld is >= vocab_size %d", dl->key, s->path, tok, (long long)offset,
              dl->vocab_size);
    fatal("%s: %s: token %u at offset %lld does not fit an int", dl->key, s->path, tok, (long long)offset);
}

void loader_next(DataLoader *dl, int *inputs, int *targets) {
    ensure_order(dl);
    int si = dl->order[dl->pos.shard];
    const Shard *s = &dl->shards[si];
    if (dl->shuffle) ensure_perm(dl, si);
    const int T = dl->T;
    const uint32_t limit = dl->vocab_size > 0 ? (uint32_t)dl->vocab_size : (uint32_t)INT_MAX + 1u;
    int64_t first = dl->pos.row + (int64_t)dl->rank * dl->B;
    for (int b = 0; b < dl->B; b++) {
        int64_t k = first + b;
        int64_t row = dl->shuffle ? (int64_t)dl->perm[k] : k;
        int64_t base = row * T;
        int *in = inputs + (size_t)b * T, *tg = targets + (size_t)b * T;
        for (int t = 0; t <= T; t++) {
            uint32_t tok = shard_token(s, base + t);
            if (tok >= limit) bad_token(dl, s, base + t, tok);
            if (t < T) in[t] = (int)tok;
            if (t > 0) tg[t - 1] = (int)tok;
        }
    }
    dl->pos.row += (int64_t)dl->B * dl->world;
    normalize(dl);
}

void loader_set_accum(DataLoader *dl, int accum) {
    if (accum < 1) fatal("%s: grad_accum %d must be positive", dl->key, accum);
    const int64_t W = (int64_t)dl->B * dl->world * accum;
    int64_t steps = 0;
    for (int i = 0; i < dl->num_shards; i++) steps += dl->shard_rows[i] / W;
    if (steps == 0)
        fatal("%s: too few tokens: no shard holds one optimizer step of B*world*grad_accum = %lld rows of T = %d",
              dl->key, (long long)W, dl->T);
    dl->accum = accum;
    dl->batches_per_epoch = steps * accum;
    loader_reset(dl);
}

void loader_reset(DataLoader *dl) {
    dl->pos = (LoaderPos){0, 0, 0};
    normalize(dl);
}

LoaderPos loader_tell(const DataLoader *dl) { return dl->pos; }

void loader_seek(DataLoader *dl, LoaderPos pos) {
    if (pos.epoch < 0 || pos.shard < 0 || pos.shard >= dl->num_shards || pos.row < 0)
        fatal("%s: bad loader position (epoch %lld, shard %lld, row %lld): needs epoch >= 0, 0 <= shard < %d, "
              "row >= 0",
              dl->key, (long long)pos.epoch, (long long)pos.shard, (long long)pos.row, dl->num_shards);
    dl->pos = pos;
    ensure_order(dl);
    int64_t rows = dl->shard_rows[dl->order[pos.shard]];
    if (pos.row > rows)
        fatal("%s: bad loader position (epoch %lld, shard %lld, row %lld): that shard has only %lld rows", dl->key,
              (long long)pos.epoch, (long long)pos.shard, (long long)pos.row, (long long)rows);
    normalize(dl);
}

void loader_close(DataLoader *dl) {
    for (int i = 0; i < dl->num_shards; i++) shard_close(&dl->shards[i]);
    free(dl->shards);
    free(dl->shard_rows);
    free(dl->order);
    free(dl->perm);
    free(dl->key);
    memset(dl, 0, sizeof *dl);
}

int64_t loader_batches_per_epoch(const DataLoader *dl) { return dl->batches_per_epoch; }
