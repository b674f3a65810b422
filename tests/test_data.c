// Tests of the data layer: token shards, the distributed loader, tokenizers, prepare_data.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../data/loader.h"
#include "../data/prepare.h"
#include "../data/shard.h"
#include "../data/tokenizer.h"
#include "../runtime/common.h"
#include "../runtime/rng.h"
#include "harness.h"

// ---------------------------------------------------------------- helpers

// Runs with stderr sent to a file; the text it got is returned by stderr_end() (malloc'd).
static int saved_stderr = -1;
static char stderr_file[512];
static void stderr_begin(void) {
    fflush(stderr);
    snprintf(stderr_file, sizeof stderr_file, "%s", tmp_path("captured_stderr.txt"));
    int fd = open(stderr_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    saved_stderr = dup(2);
    dup2(fd, 2);
    close(fd);
}
static char *stderr_end(void) {
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    return read_file(stderr_file, NULL);
}

// The children that EXPECT_FATAL forks leave through _exit: a plain exit() would run the
// parent's atexit handlers there (the harness's removes test_tmpdir()).
static NORETURN void child_exit(int status) { _exit(status); }
static void in_child(void) { set_fatal_hook(child_exit); }

// A version 2 shard whose token i is base + i, holding `rows` rows of T plus `extra` (< T)
// spare tokens, so the loader's rows can be recognised from their tokens.
static void make_rows_shard(const char *path, int64_t rows, int T, int extra, uint32_t base) {
    int64_t n = rows * T + 1 + extra;
    uint32_t *t = (uint32_t *)xmalloc((size_t)n * sizeof(uint32_t));
    for (int64_t i = 0; i < n; i++) t[i] = base + (uint32_t)i;
    shard_write(path, t, n, 2);
    free(t);
}

static void write_header_file(const char *path, int32_t magic, int32_t version, int32_t n, size_t payload) {
    int32_t h[SHARD_HEADER_INTS] = {magic, version, n};
    FILE *f = xfopen(path, "wb");
    xfwrite(h, sizeof h, f, path);
    for (size_t i = 0; i < payload; i++) fputc(1, f);
    fclose(f);
}

// ---------------------------------------------------------------- shards

static void shard_roundtrip(int version, uint32_t max_token) {
    int64_t n = 12345;
    uint32_t *t = (uint32_t *)xmalloc((size_t)n * sizeof(uint32_t));
    Rng r;
    rng_seed(&r, 42 + version);
    for (int64_t i = 0; i < n; i++) t[i] = (uint32_t)rng_below(&r, (uint64_t)max_token + 1);
    t[n / 2] = max_token;
    const char *path = tmp_path(version == 1 ? "rt_v1.bin" : "rt_v2.bin");
    shard_write(path, t, n, 0);  // version chosen from the largest token
    Shard s;
    shard_open(&s, path);
    CHECK(s.version == version);
    CHECK(s.num_tokens == n);
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += shard_token(&s, i) != t[i];
    CHECKF(bad == 0, "%lld tokens differ after a version %d round trip", (long long)bad, version);
    CHECK(s.map_bytes == SHARD_HEADER_BYTES + (size_t)n * (version == 1 ? 2 : 4));
    const int32_t *h = (const int32_t *)s.map;
    CHECK(h[0] == 20240520 && h[1] == version && h[2] == n && h[3] == 0 && h[255] == 0);
    shard_close(&s);
    free(t);
}

TEST(data_shard_roundtrip_v1) { shard_roundtrip(1, 65535); }
TEST(data_shard_roundtrip_v2) { shard_roundtrip(2, 4000000000u); }

TEST(data_shard_explicit_version) {
    uint32_t t[5] = {1, 2, 3, 4, 5};
    const char *path = tmp_path("explicit_v2.bin");
    shard_write(path, t, 5, 2);  // small tokens, version 2 forced
    Shard s;
    shard_open(&s, path);
    CHECK(s.version == 2 && s.num_tokens == 5 && shard_token(&s, 4) == 5);
    shard_close(&s);
    uint32_t big = 70000;
    CHECK(shard_version_for(t, 5) == 1);
    CHECK(shard_version_for(&big, 1) == 2);
}

static void open_shard_fn(void *arg) {
    in_child();
    Shard s;
    shard_open(&s, (const char *)arg);
}
static void write_v1_big_fn(void *arg) {
    in_child();
    uint32_t t[3] = {1, 65536, 2};
    shard_write((const char *)arg, t, 3, 1);
}

TEST(data_shard_errors) {
    uint32_t t[100];
    for (int i = 0; i < 100; i++) t[i] = (uint32_t)i;

    const char *magic = tmp_path("bad_magic.bin");
    write_header_file(magic, 12345, 1, 10, 20);
    EXPECT_FATAL(open_shard_fn, (void *)magic, "bad_magic.bin: bad magic 12345 (expected 20240520)");

    const char *trunc = tmp_path("truncated.bin");
    shard_write(trunc, t, 100, 1);
    CHECK(truncate(trunc, SHARD_HEADER_BYTES + 199) == 0);
    EXPECT_FATAL(open_shard_fn, (void *)trunc, "truncated.bin: file is truncated");

    const char *trail = tmp_path("trailing.bin");
    shard_write(trail, t, 100, 1);
    FILE *f = xfopen(trail, "ab");
    fputs("xyz", f);
    fclose(f);
    EXPECT_FATAL(open_shard_fn, (void *)trail, "trailing.bin: file has 3 trailing bytes");

    const char *zero = tmp_path("zero.bin");
    write_header_file(zero, SHARD_MAGIC, 1, 0, 0);
    EXPECT_FATAL(open_shard_fn, (void *)zero, "zero.bin: header says 0 tokens");

    const char *ver = tmp_path("version.bin");
    write_header_file(ver, SHARD_MAGIC, 3, 10, 40);
    EXPECT_FATAL(open_shard_fn, (void *)ver, "version.bin: unknown shard version 3");

    const char *tiny = tmp_path("tiny.bin");
    f = xfopen(tiny, "wb");
    fputs("hello", f);
    fclose(f);
    EXPECT_FATAL(open_shard_fn, (void *)tiny, "tiny.bin: file is 5 bytes, smaller than the 1024-byte header");

    EXPECT_FATAL(open_shard_fn, (void *)tmp_path("missing.bin"), "missing.bin: cannot open");
    EXPECT_FATAL(open_shard_fn, (void *)test_tmpdir(), "not a regular file");
    EXPECT_FATAL(write_v1_big_fn, (void *)tmp_path("v1big.bin"), "token 65536 at offset 1 does not fit a version 1");
}

// ---------------------------------------------------------------- loader order

typedef struct {
    uint32_t base;
    int64_t rows;
} ShardSpec;

// The expected contents of call `call` (0-based) for `rank`, from the row formula: the
// global micro-batch k of the run is the k-th G-row block of the usable shards in order,
// each shard giving floor(rows/G) blocks, epochs repeating. Returns the tell() position after it.
static LoaderPos expected_batch(const ShardSpec *sh, int ns, int B, int T, int rank, int world, int64_t call,
                                int *in, int *tg) {
    int64_t G = (int64_t)B * world, per_epoch = 0;
    for (int s = 0; s < ns; s++) per_epoch += sh[s].rows / G;
    int64_t k = call % per_epoch;
    int s = 0;
    while (k >= sh[s].rows / G) k -= sh[s++].rows / G;
    for (int b = 0; b < B; b++) {
        int64_t row = k * G + (int64_t)rank * B + b;
        for (int t = 0; t < T; t++) {
            in[b * T + t] = (int)(sh[s].base + row * T + t);
            tg[b * T + t] = (int)(sh[s].base + row * T + t + 1);
        }
    }
    // Position of the next call.
    int64_t next = call + 1, ne = next / per_epoch, nk = next % per_epoch;
    int n_s = 0;
    while (nk >= sh[n_s].rows / G) nk -= sh[n_s++].rows / G;
    return (LoaderPos){ne, n_s, nk * G};
}

static void check_order(const char *globs, const ShardSpec *sh, int ns, int B, int T, int rank, int world,
                        int calls) {
    DataLoader dl;
    stderr_begin();  // skipped shards warn
    loader_open(&dl, globs, B, T, rank, world, 0, 0, 0, "data.test");
    free(stderr_end());
    size_t n = (size_t)B * T;
    int *in = (int *)xmalloc(n * sizeof(int)), *tg = (int *)xmalloc(n * sizeof(int));
    int *ein = (int *)xmalloc(n * sizeof(int)), *etg = (int *)xmalloc(n * sizeof(int));
    int64_t G = (int64_t)B * world, per_epoch = 0;
    for (int s = 0; s < ns; s++) per_epoch += sh[s].rows / G;
    CHECK(loader_batches_per_epoch(&dl) == per_epoch);
    for (int c = 0; c < calls; c++) {
        loader_next(&dl, in, tg);
        LoaderPos e = expected_batch(sh, ns, B, T, rank, world, c, ein, etg);
        CHECKF(memcmp(in, ein, n * sizeof(int)) == 0 && memcmp(tg, etg, n * sizeof(int)) == 0,
               "B=%d T=%d rank %d/%d: call %d differs from the row formula (got first input %d, expected %d)", B, T,
               rank, world, c, in[0], ein[0]);
        LoaderPos p = loader_tell(&dl);
        CHECKF(p.epoch == e.epoch && p.shard == e.shard && p.row == e.row,
               "call %d: tell = (%lld, %lld, %lld), expected (%lld, %lld, %lld)", c, (long long)p.epoch,
               (long long)p.shard, (long long)p.row, (long long)e.epoch, (long long)e.shard, (long long)e.row);
    }
    free(in);
    free(tg);
    free(ein);
    free(etg);
    loader_close(&dl);
}

TEST(data_loader_order_no_shuffle) {
    int T = 4;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/order", test_tmpdir());
    make_dirs(dir);
    char pa[700], pb[700], pc[700], pd[700], globs[2000];
    snprintf(pa, sizeof pa, "%s/shard_a.bin", dir);
    snprintf(pb, sizeof pb, "%s/shard_b.bin", dir);
    snprintf(pc, sizeof pc, "%s/shard_c.bin", dir);
    snprintf(pd, sizeof pd, "%s/other_d.bin", dir);
    make_rows_shard(pa, 7, T, 2, 1000000);   // 7 rows: with G=3, 2 blocks and 1 row dropped
    make_rows_shard(pb, 2, T, 3, 2000000);   // 2 rows < G=3: skipped
    make_rows_shard(pc, 10, T, 0, 3000000);  // 10 rows: 3 blocks
    make_rows_shard(pd, 6, T, 0, 4000000);
    // Two patterns, overlapping (shard_a twice), given out of order: sorted and de-duplicated.
    snprintf(globs, sizeof globs, "%s/shard_*.bin, %s/other_d.bin,%s", dir, dir, pa);
    ShardSpec sh[] = {{4000000, 6}, {1000000, 7}, {3000000, 10}};  // other_d < shard_a < shard_c by name
    check_order(globs, sh, 3, 3, T, 0, 1, 25);                       // 7 blocks per epoch: 3+ epochs
    // A world of 2 with B=1: G=2, shard_b (2 rows) is usable now.
    ShardSpec sh2[] = {{4000000, 6}, {1000000, 7}, {2000000, 2}, {3000000, 10}};
    check_order(globs, sh2, 4, 1, T, 0, 2, 25);
    check_order(globs, sh2, 4, 1, T, 1, 2, 25);
    ShardSpec sh3[] = {{4000000, 6}, {1000000, 7}, {3000000, 10}};
    check_order(globs, sh3, 3, 1, T, 2, 3, 20);

    // Without shuffle a rank's micro-batch is B*T+1 consecutive tokens (llm.c).
    DataLoader dl;
    snprintf(globs, sizeof globs, "%s/shard_c.bin", dir);
    loader_open(&dl, globs, 2, T, 1, 2, 0, 0, 0, "data.test");
    int in[8], tg[8];
    loader_next(&dl, in, tg);
    for (int i = 0; i < 8; i++) CHECK(in[i] == 3000000 + 8 + i && tg[i] == 3000000 + 9 + i);
    loader_close(&dl);
}

TEST(data_loader_skip_warning) {
    int T = 8;
    const char *small = tmp_path("warn_small.bin"), *big = tmp_path("warn_big.bin");
    make_rows_shard(small, 3, T, 0, 0);
    make_rows_shard(big, 20, T, 0, 100);
    char globs[1200];
    snprintf(globs, sizeof globs, "%s,%s", small, big);
    DataLoader dl;
    stderr_begin();
    loader_open(&dl, globs, 2, T, 0, 2, 0, 0, 0, "data.val");
    char *err = stderr_end();
    CHECKF(strstr(err, "warning: data.val:") && strstr(err, "warn_small.bin has 25 tokens") && strstr(err, "skipped"),
           "unexpected warning: %s", err);
    CHECKF(strchr(err, '\n') == err + strlen(err) - 1, "expected one warning line, got: %s", err);
    CHECK(dl.num_shards == 1 && loader_batches_per_epoch(&dl) == 5);
    free(err);
    loader_close(&dl);
}

// ---------------------------------------------------------------- ranks

// Concatenates `calls` batches of one loader into out (calls * B*T inputs then targets interleaved per call).
static void run_loader(const char *globs, int B, int T, int rank, int world, int shuffle, uint64_t seed, int calls,
                       int *out) {
    DataLoader dl;
    loader_open(&dl, globs, B, T, rank, world, 0, shuffle, seed, "data.test");
    size_t n = (size_t)B * T;
    for (int c = 0; c < calls; c++) loader_next(&dl, out + 2 * n * c, out + 2 * n * c + n);
    loader_close(&dl);
}

// One rank calling `world` times per step sees what ranks 0..world-1 of a world see in one call each.
static void check_world_equivalence(const char *globs, int B, int T, int world, int shuffle, uint64_t seed,
                                    int steps) {
    size_t n = (size_t)B * T;
    int *single = (int *)xmalloc(2 * n * (size_t)(steps * world) * sizeof(int));
    run_loader(globs, B, T, 0, 1, shuffle, seed, steps * world, single);
    int *ranked = (int *)xmalloc(2 * n * (size_t)steps * sizeof(int));
    for (int r = 0; r < world; r++) {
        run_loader(globs, B, T, r, world, shuffle, seed, steps, ranked);
        for (int s = 0; s < steps; s++) {
            const int *a = ranked + 2 * n * s, *b = single + 2 * n * (s * world + r);
            CHECKF(memcmp(a, b, 2 * n * sizeof(int)) == 0,
                   "world %d shuffle %d: rank %d step %d differs from single-rank call %d", world, shuffle, r, s,
                   s * world + r);
        }
    }
    free(single);
    free(ranked);
}

TEST(data_loader_rank_slicing) {
    int B = 2, T = 3;
    char globs2[2000], globs3[2000];
    // World 2: G = 4 and 2, every shard's rows a multiple of 4, so both switch shards together.
    make_rows_shard(tmp_path("w2_a.bin"), 8, T, 1, 10000);
    make_rows_shard(tmp_path("w2_b.bin"), 4, T, 0, 20000);
    make_rows_shard(tmp_path("w2_c.bin"), 12, T, 2, 30000);
    snprintf(globs2, sizeof globs2, "%s/w2_*.bin", test_tmpdir());
    check_world_equivalence(globs2, B, T, 2, 0, 0, 15);  // 6 global batches per epoch: wraps twice
    // World 3: rows multiples of 6.
    make_rows_shard(tmp_path("w3_a.bin"), 6, T, 0, 10000);
    make_rows_shard(tmp_path("w3_b.bin"), 12, T, 2, 20000);
    make_rows_shard(tmp_path("w3_c.bin"), 18, T, 1, 30000);
    snprintf(globs3, sizeof globs3, "%s/w3_*.bin", test_tmpdir());
    check_world_equivalence(globs3, B, T, 3, 0, 0, 14);  // 6 per epoch
}

// ---------------------------------------------------------------- shuffle

TEST(data_loader_shuffle) {
    int B = 2, T = 3;
    const char *spec[3] = {"sh_a.bin", "sh_b.bin", "sh_c.bin"};
    int64_t rows[3] = {8, 12, 16};
    for (int s = 0; s < 3; s++) make_rows_shard(tmp_path(spec[s]), rows[s], T, s, (uint32_t)(s + 1) * 1000000u);
    char globs[1000];
    snprintf(globs, sizeof globs, "%s/sh_*.bin", test_tmpdir());
    int per_epoch = (8 + 12 + 16) / B, calls = 3 * per_epoch;
    size_t n = (size_t)B * T, total = 2 * n * (size_t)calls;
    int *a = (int *)xmalloc(total * sizeof(int)), *b = (int *)xmalloc(total * sizeof(int));
    int *c = (int *)xmalloc(total * sizeof(int)), *plain = (int *)xmalloc(total * sizeof(int));
    run_loader(globs, B, T, 0, 1, 1, 1234, calls, a);
    run_loader(globs, B, T, 0, 1, 1, 1234, calls, b);
    run_loader(globs, B, T, 0, 1, 1, 1235, calls, c);
    run_loader(globs, B, T, 0, 1, 0, 1234, calls, plain);
    CHECKF(memcmp(a, b, total * sizeof(int)) == 0, "shuffle is not deterministic for a seed");
    CHECKF(memcmp(a, c, total * sizeof(int)) != 0, "another seed gives the same order");
    CHECKF(memcmp(a, plain, total * sizeof(int)) != 0, "shuffle gives the unshuffled order");
    CHECKF(memcmp(a, a + 2 * n * per_epoch, 2 * n * per_epoch * sizeof(int)) != 0, "epochs 0 and 1 have the same order");

    // Every row exactly once per epoch, and each row intact (T+1 consecutive tokens).
    for (int e = 0; e < 3; e++) {
        int seen[3][16] = {{0}};
        int bad_rows = 0, first_shard_changes = 0, prev_shard = -1;
        for (int k = 0; k < per_epoch; k++) {
            const int *in = a + 2 * n * (size_t)(e * per_epoch + k), *tg = in + n;
            for (int r = 0; r < B; r++) {
                int s = in[r * T] / 1000000 - 1, off = in[r * T] % 1000000;
                if (s < 0 || s > 2 || off % T != 0 || off / T >= rows[s]) {
                    bad_rows++;
                    continue;
                }
                seen[s][off / T]++;
                if (s != prev_shard) first_shard_changes++, prev_shard = s;
                for (int t = 0; t < T; t++)
                    bad_rows += in[r * T + t] != in[r * T] + t || tg[r * T + t] != in[r * T] + t + 1;
            }
        }
        CHECKF(bad_rows == 0, "epoch %d: %d malformed rows", e, bad_rows);
        int wrong = 0;
        for (int s = 0; s < 3; s++)
            for (int r = 0; r < rows[s]; r++) wrong += seen[s][r] != 1;
        CHECKF(wrong == 0, "epoch %d: %d rows not visited exactly once", e, wrong);
        CHECKF(first_shard_changes == 3, "epoch %d: shards interleaved (%d runs)", e, first_shard_changes);
    }
    // The shard order itself is permuted in some epoch (3 epochs x 3 shards).
    int firsts[3];
    for (int e = 0; e < 3; e++) firsts[e] = a[2 * n * (size_t)(e * per_epoch)] / 1000000;
    CHECKF(!(firsts[0] == 1 && firsts[1] == 1 && firsts[2] == 1), "shard order never permuted");

    // Independent of world size: the same row sequence, sliced.
    check_world_equivalence(globs, B, T, 2, 1, 99, 2 * per_epoch / 2 + 3);
    make_rows_shard(tmp_path("s3_a.bin"), 12, T, 0, 1000000);
    make_rows_shard(tmp_path("s3_b.bin"), 18, T, 2, 2000000);
    snprintf(globs, sizeof globs, "%s/s3_*.bin", test_tmpdir());
    check_world_equivalence(globs, B, T, 3, 1, 7, 12);
    free(a);
    free(b);
    free(c);
    free(plain);
}

TEST(data_loader_shuffle_dropped_rows) {
    // 11 rows with G=4: 8 rows a epoch, each at most once, a different leftover per epoch.
    int B = 4, T = 2;
    const char *path = tmp_path("drop.bin");
    make_rows_shard(path, 11, T, 0, 0);
    DataLoader dl;
    loader_open(&dl, path, B, T, 0, 1, 0, 1, 5, "data.test");
    CHECK(loader_batches_per_epoch(&dl) == 2);
    int in[8], tg[8], leftovers = 0;
    for (int e = 0; e < 6; e++) {
        int seen[11] = {0};
        for (int k = 0; k < 2; k++) {
            loader_next(&dl, in, tg);
            for (int r = 0; r < B; r++) seen[in[r * T] / T]++;
        }
        int once = 0, more = 0;
        for (int r = 0; r < 11; r++) once += seen[r] == 1, more += seen[r] > 1;
        CHECK(once == 8 && more == 0);
        for (int r = 0; r < 11; r++) leftovers |= (seen[r] == 0) << r;
    }
    CHECKF(__builtin_popcount((unsigned)leftovers) > 3, "the dropped rows are always the same");
    loader_close(&dl);
}

// ---------------------------------------------------------------- tell / seek / reset

static void bad_seek_fn(void *arg) {
    in_child();
    DataLoader dl;
    loader_open(&dl, tmp_path("seek_b.bin"), 2, 3, 0, 1, 0, 1, 3, "data.train");
    loader_seek(&dl, *(LoaderPos *)arg);
}

TEST(data_loader_tell_seek) {
    int B = 2, T = 3;
    make_rows_shard(tmp_path("seek_a.bin"), 9, T, 0, 1000000);
    make_rows_shard(tmp_path("seek_b.bin"), 14, T, 1, 2000000);
    char globs[1000];
    snprintf(globs, sizeof globs, "%s/seek_*.bin", test_tmpdir());
    size_t n = (size_t)B * T;
    for (int shuffle = 0; shuffle <= 1; shuffle++) {
        for (int world = 1; world <= 2; world++) {
            for (int rank = 0; rank < world; rank++) {
                DataLoader a, b;
                loader_open(&a, globs, B, T, rank, world, 0, shuffle, 77, "data.train");
                loader_open(&b, globs, B, T, rank, world, 0, shuffle, 77, "data.train");
                int in1[6], tg1[6], in2[6], tg2[6];
                for (int skip = 0; skip < 23; skip += 5) {
                    loader_reset(&a);
                    for (int i = 0; i < skip; i++) loader_next(&a, in1, tg1);
                    LoaderPos p = loader_tell(&a);
                    loader_next(&b, in2, tg2);  // b is somewhere else, with other state cached
                    loader_seek(&b, p);
                    int diffs = 0;
                    for (int i = 0; i < 25; i++) {
                        loader_next(&a, in1, tg1);
                        loader_next(&b, in2, tg2);
                        diffs += memcmp(in1, in2, n * sizeof(int)) != 0 || memcmp(tg1, tg2, n * sizeof(int)) != 0;
                    }
                    CHECKF(diffs == 0, "shuffle %d rank %d/%d: after seeking to the position after %d batches, %d "
                           "batches differ", shuffle, rank, world, skip, diffs);
                }
                // reset goes back to the very first batch
                DataLoader fresh;
                loader_open(&fresh, globs, B, T, rank, world, 0, shuffle, 77, "data.train");
                loader_next(&fresh, in1, tg1);
                loader_reset(&a);
                LoaderPos p = loader_tell(&a);
                CHECK(p.epoch == 0 && p.shard == 0 && p.row == 0);
                loader_next(&a, in2, tg2);
                CHECK(memcmp(in1, in2, sizeof in1) == 0 && memcmp(tg1, tg2, sizeof tg1) == 0);
                loader_close(&fresh);
                loader_close(&a);
                loader_close(&b);
            }
        }
    }
    static LoaderPos bad[4] = {{-1, 0, 0}, {0, 1, 0}, {0, 0, 15}, {2, 0, -2}};
    EXPECT_FATAL(bad_seek_fn, &bad[0], "data.train: bad loader position (epoch -1, shard 0, row 0)");
    EXPECT_FATAL(bad_seek_fn, &bad[1], "bad loader position (epoch 0, shard 1, row 0)");
    EXPECT_FATAL(bad_seek_fn, &bad[2], "that shard has only 14 rows");
    EXPECT_FATAL(bad_seek_fn, &bad[3], "row -2");
}

// ---------------------------------------------------------------- loader errors

typedef struct {
    const char *globs;
    int B, T, rank, world, vocab, calls;
} OpenArgs;

static void open_and_read_fn(void *arg) {
    in_child();
    OpenArgs *o = (OpenArgs *)arg;
    DataLoader dl;
    loader_open(&dl, o->globs, o->B, o->T, o->rank, o->world, o->vocab, 0, 0, "data.train");
    int *in = (int *)xmalloc((size_t)o->B * o->T * sizeof(int)), *tg = (int *)xmalloc((size_t)o->B * o->T * sizeof(int));
    for (int i = 0; i < o->calls; i++) loader_next(&dl, in, tg);
    free(in);
    free(tg);
    loader_close(&dl);
}

TEST(data_loader_errors) {
    char missing[1000];
    snprintf(missing, sizeof missing, "%s/nothing_*.bin", test_tmpdir());
    OpenArgs a = {missing, 2, 4, 0, 1, 0, 0};
    EXPECT_FATAL(open_and_read_fn, &a, "data.train: pattern");
    EXPECT_FATAL(open_and_read_fn, &a, "nothing_*.bin\" matches no file");

    // One good pattern and one that matches nothing is still an error.
    const char *good = tmp_path("err_good.bin");
    make_rows_shard(good, 20, 4, 0, 0);
    char two[2200];
    snprintf(two, sizeof two, "%s,%s", good, missing);
    OpenArgs a2 = {two, 2, 4, 0, 1, 0, 0};
    EXPECT_FATAL(open_and_read_fn, &a2, "matches no file");

    // Too few tokens: 10 tokens = 2 rows of T=4 < B*world = 4.
    const char *few = tmp_path("err_few.bin");
    make_rows_shard(few, 2, 4, 1, 0);
    OpenArgs b = {few, 2, 4, 0, 2, 0, 0};
    EXPECT_FATAL(open_and_read_fn, &b, "data.train: too few tokens");

    // A token >= vocab_size, found when its row is read.
    uint32_t t[200];
    for (int i = 0; i < 200; i++) t[i] = (uint32_t)(i % 65);
    t[137] = 70;
    const char *vocab = tmp_path("err_vocab.bin");
    shard_write(vocab, t, 200, 1);
    OpenArgs c = {vocab, 2, 8, 0, 1, 65, 12};
    EXPECT_FATAL(open_and_read_fn, &c, "err_vocab.bin: token 70 at offset 137 is >= vocab_size 65");
    OpenArgs c_ok = {vocab, 2, 8, 0, 1, 71, 12};
    EXPECT_FATAL(open_and_read_fn, &c, "vocab_size 65");
    open_and_read_fn(&c_ok);  // a vocab of 71 holds token 70

    OpenArgs d = {good, 2, 4, 2, 2, 0, 0};
    EXPECT_FATAL(open_and_read_fn, &d, "data.train: rank 2 is not in a world of 2");
    OpenArgs e = {good, 0, 4, 0, 1, 0, 0};
    EXPECT_FATAL(open_and_read_fn, &e, "must be positive");
    const char *corrupt = tmp_path("err_corrupt.bin");
    write_header_file(corrupt, 7, 1, 10, 20);
    OpenArgs f = {corrupt, 1, 4, 0, 1, 0, 0};
    EXPECT_FATAL(open_and_read_fn, &f, "err_corrupt.bin: bad magic 7");
}

// ---------------------------------------------------------------- tokenizer

static char *corpus(size_t *len) {
    const char *path = tinyshakespeare_path();
    if (!file_exists(path)) return NULL;
    return read_file(path, len);
}

TEST(data_tokenizer_char_corpus) {
    size_t len;
    char *text = corpus(&len);
    CHECKF(text, "corpus not found at %s (set TINYSHAKESPEARE)", tinyshakespeare_path());
    if (!text) return;
    CHECK(len == 1115394);
    Tokenizer tok;
    tokenizer_build(&tok, "char", text, len, "tinyshakespeare");
    CHECK(tokenizer_vocab_size(&tok) == 65);
    CHECK(tok.codepoints[0] == '\n' && tok.codepoints[1] == ' ' && tok.codepoints[64] == 'z');
    int64_t n;
    uint32_t *ids = tokenizer_encode(&tok, text, len, &n, "tinyshakespeare");
    CHECK(n == (int64_t)len);
    int *iids = (int *)xmalloc((size_t)n * sizeof(int));
    int max = 0;
    for (int64_t i = 0; i < n; i++) iids[i] = (int)ids[i], max = iids[i] > max ? iids[i] : max;
    CHECK(max == 64);
    size_t back_len;
    char *back = tokenizer_decode_all(&tok, iids, n, &back_len);
    CHECK(back_len == len && memcmp(back, text, len) == 0);
    int l;
    CHECK(strcmp(tokenizer_decode(&tok, 13, &l), "A") == 0 && l == 1);
    free(back);
    free(iids);
    free(ids);
    free(text);
    tokenizer_free(&tok);
}

TEST(data_tokenizer_char_unicode_and_byte) {
    // Multi-byte characters, sorted by code point.
    const char *s = "h\xc3\xa9llo w\xc3\xb6rld \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80!";
    size_t len = strlen(s);
    Tokenizer tok;
    tokenizer_build(&tok, "char", s, len, "unicode");
    uint32_t want[] = {' ', '!', 'd', 'h', 'l', 'o', 'r', 'w', 0xE9, 0xF6, 0x65E5, 0x672C, 0x1F600};
    CHECK(tok.vocab_size == 13);
    for (int i = 0; i < 13 && i < tok.vocab_size; i++) CHECK(tok.codepoints[i] == want[i]);
    int64_t n;
    uint32_t *ids = tokenizer_encode(&tok, s, len, &n, "unicode");
    CHECK(n == 17);
    int iids[64];
    for (int64_t i = 0; i < n; i++) iids[i] = (int)ids[i];
    size_t bl;
    char *back = tokenizer_decode_all(&tok, iids, n, &bl);
    CHECK(bl == len && strcmp(back, s) == 0);
    int l;
    CHECK(strcmp(tokenizer_decode(&tok, 12, &l), "\xf0\x9f\x98\x80") == 0 && l == 4);
    free(back);
    free(ids);
    tokenizer_free(&tok);

    // Bytes: every value, including 0 and invalid UTF-8, comes back.
    unsigned char raw[1000];
    Rng r;
    rng_seed(&r, 5);
    for (int i = 0; i < 1000; i++) raw[i] = (unsigned char)(i < 256 ? (uint64_t)i : rng_below(&r, 256));
    tokenizer_build(&tok, "byte", NULL, 0, "bytes");
    CHECK(tokenizer_vocab_size(&tok) == 256);
    ids = tokenizer_encode(&tok, (const char *)raw, sizeof raw, &n, "bytes");
    CHECK(n == 1000);
    int bids[1000];
    int byte_diffs = 0;
    for (int i = 0; i < 1000; i++) bids[i] = (int)ids[i], byte_diffs += ids[i] != raw[i];
    CHECK(byte_diffs == 0);
    back = tokenizer_decode_all(&tok, bids, n, &bl);
    CHECK(bl == 1000 && memcmp(back, raw, 1000) == 0);
    CHECK(tokenizer_decode(&tok, 0, &l)[0] == 0 && l == 1);
    free(back);
    free(ids);
    tokenizer_free(&tok);
}

static int same_vocab(const Tokenizer *a, const Tokenizer *b) {
    if (a->kind != b->kind || a->vocab_size != b->vocab_size) return 0;
    for (int i = 0; i < a->vocab_size; i++) {
        if (a->codepoints[i] != b->codepoints[i] || a->lens[i] != b->lens[i]) return 0;
        if (memcmp(a->bytes[i], b->bytes[i], a->lens[i]) != 0) return 0;
    }
    return 1;
}

TEST(data_vocab_roundtrip) {
    // Characters that need escaping in JSON, including U+0000, controls and an emoji.
    const char special[] = "\0a\"b\\c\n\t\r\x01\x7f\xc2\x85\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80/";
    Tokenizer a, b;
    tokenizer_build(&a, "char", special, sizeof special - 1, "special");
    CHECK(a.vocab_size == 16 && a.codepoints[0] == 0 && a.codepoints[15] == 0x1F600);
    const char *path = tmp_path("vocab_special.json");
    tokenizer_save(&a, path);
    tokenizer_load(&b, path);
    CHECK(same_vocab(&a, &b));
    tokenizer_free(&a);
    tokenizer_free(&b);

    tokenizer_build(&a, "byte", NULL, 0, "x");
    path = tmp_path("vocab_byte.json");
    tokenizer_save(&a, path);
    tokenizer_load(&b, path);
    CHECK(same_vocab(&a, &b) && b.kind == TOKENIZER_BYTE);
    tokenizer_free(&a);
    tokenizer_free(&b);

    size_t len;
    char *text = corpus(&len);
    if (text) {
        tokenizer_build(&a, "char", text, len, "tinyshakespeare");
        path = tmp_path("vocab_corpus.json");
        tokenizer_save(&a, path);
        tokenizer_load(&b, path);
        CHECK(same_vocab(&a, &b) && b.vocab_size == 65 && b.kind == TOKENIZER_CHAR);
        char *json = read_file(path, NULL);
        CHECK(strstr(json, "\"tokenizer\": \"char\"") && strstr(json, "\"vocab_size\": 65"));
        free(json);
        tokenizer_free(&a);
        tokenizer_free(&b);
        free(text);
    }
}

static void load_vocab_fn(void *arg) {
    in_child();
    Tokenizer t;
    tokenizer_load(&t, (const char *)arg);
}
static const char *write_text(const char *name, const char *text) {
    const char *path = tmp_path(name);
    FILE *f = xfopen(path, "wb");
    fputs(text, f);
    fclose(f);
    return path;
}
static void encode_unknown_fn(void *arg) {
    in_child();
    Tokenizer t;
    tokenizer_build(&t, "char", "abc", 3, "x");
    int64_t n;
    tokenizer_encode(&t, "abxc", 4, &n, "sample.txt");
}
static void build_invalid_utf8_fn(void *arg) {
    in_child();
    Tokenizer t;
    tokenizer_build(&t, "char", "ab\xff", 3, "binary.dat");
}
static void decode_range_fn(void *arg) {
    in_child();
    Tokenizer t;
    tokenizer_build(&t, "char", "abc", 3, "x");
    tokenizer_decode(&t, 3, NULL);
}
static void unknown_kind_fn(void *arg) {
    in_child();
    Tokenizer t;
    tokenizer_build(&t, "bpe", "abc", 3, "x");
}

TEST(data_tokenizer_errors) {
    EXPECT_FATAL(load_vocab_fn, (void *)write_text("v1.json", "{\"tokenizer\": \"char\", "), "v1.json: malformed JSON");
    EXPECT_FATAL(load_vocab_fn, (void *)write_text("v2.json", "[1, 2]"), "v2.json: vocabulary file must hold a JSON object");
    EXPECT_FATAL(load_vocab_fn, (void *)write_text("v3.json", "{\"vocab_size\": 2, \"tokens\": [\"a\", \"b\"]}"),
                 "v3.json: missing string field \"tokenizer\"");
    EXPECT_FATAL(load_vocab_fn,
                 (void *)write_text("v4.json", "{\"tokenizer\": \"bpe\", \"vocab_size\": 2, \"tokens\": [\"a\", \"b\"]}"),
                 "v4.json: unknown tokenizer \"bpe\"");
    EXPECT_FATAL(load_vocab_fn,
                 (void *)write_text("v5.json", "{\"tokenizer\": \"char\", \"vocab_size\": 3, \"tokens\": [\"a\", \"b\"]}"),
                 "v5.json: \"tokens\" has 2 entries but \"vocab_size\" is 3");
    EXPECT_FATAL(load_vocab_fn,
                 (void *)write_text("v6.json", "{\"tokenizer\": \"char\", \"vocab_size\": 2, \"tokens\": [\"b\", \"a\"]}"),
                 "v6.json: tokens must be distinct characters sorted by code point");
    EXPECT_FATAL(load_vocab_fn,
                 (void *)write_text("v7.json", "{\"tokenizer\": \"char\", \"vocab_size\": 2, \"tokens\": [\"a\", \"bc\"]}"),
                 "v7.json: token 1 is not exactly one character");
    EXPECT_FATAL(load_vocab_fn,
                 (void *)write_text("v8.json", "{\"tokenizer\": \"char\", \"vocab_size\": 2.5, \"tokens\": [\"a\", \"b\"]}"),
                 "v8.json: \"vocab_size\" must be a positive integer");
    EXPECT_FATAL(load_vocab_fn,
                 (void *)write_text("v9.json", "{\"tokenizer\": \"char\", \"vocab_size\": 2, \"tokens\": [\"a\", 5]}"),
                 "v9.json: token 1 is not a string");
    EXPECT_FATAL(load_vocab_fn,
                 (void *)write_text("v10.json", "{\"tokenizer\": \"byte\", \"vocab_size\": 2, \"tokens\": [\"a\", \"b\"]}"),
                 "v10.json: a byte vocabulary has 256 tokens");
    EXPECT_FATAL(load_vocab_fn, (void *)tmp_path("absent.json"), "absent.json: cannot open");
    EXPECT_FATAL(encode_unknown_fn, NULL, "sample.txt: character U+0078 at byte offset 2 is not in the vocabulary");
    EXPECT_FATAL(build_invalid_utf8_fn, NULL, "binary.dat: invalid UTF-8 at byte offset 2");
    EXPECT_FATAL(decode_range_fn, NULL, "token id 3 is outside the char vocabulary of 3 tokens");
    EXPECT_FATAL(unknown_kind_fn, NULL, "unknown tokenizer \"bpe\"");
}

// ---------------------------------------------------------------- prepare_data

static uint32_t *read_all_shards(const char *dir, const char *prefix, int count, int64_t *total) {
    uint32_t *out = NULL;
    *total = 0;
    for (int i = 0; i < count; i++) {
        char path[800];
        snprintf(path, sizeof path, "%s/%s_%06d.bin", dir, prefix, i);
        Shard s;
        shard_open(&s, path);
        CHECK(s.version == 1);
        out = (uint32_t *)xrealloc(out, (size_t)(*total + s.num_tokens) * sizeof(uint32_t));
        for (int64_t j = 0; j < s.num_tokens; j++) out[*total + j] = shard_token(&s, j);
        *total += s.num_tokens;
        shard_close(&s);
    }
    return out;
}

TEST(data_prepare_end_to_end) {
    size_t len;
    char *text = corpus(&len);
    CHECKF(text, "corpus not found at %s (set TINYSHAKESPEARE)", tinyshakespeare_path());
    if (!text) return;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/prepared", test_tmpdir());
    const char *inputs[1] = {tinyshakespeare_path()};
    PrepareOptions o;
    prepare_defaults(&o);
    o.inputs = inputs;
    o.num_inputs = 1;
    o.tokenizer = "char";
    o.out_dir = dir;
    o.quiet = 1;
    o.shard_tokens = 300000;  // 4 train shards
    PrepareResult r;
    prepare_run(&o, &r);
    CHECK(r.vocab_size == 65 && r.input_bytes == (int64_t)len);
    CHECK(r.train_tokens + r.val_tokens == (int64_t)len);
    CHECK(r.train_tokens == 1003854 && r.val_tokens == 111540);  // nanoGPT: int(n * 0.9)
    CHECK(r.train_shards == 4 && r.val_shards == 1);

    Tokenizer tok;
    char vpath[700];
    snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
    tokenizer_load(&tok, vpath);
    CHECK(tok.vocab_size == 65);
    int64_t nt, nv;
    uint32_t *train = read_all_shards(dir, "train", r.train_shards, &nt);
    uint32_t *val = read_all_shards(dir, "val", r.val_shards, &nv);
    CHECK(nt == r.train_tokens && nv == r.val_tokens);
    // train is the first 90% of the text, val the last 10%.
    int64_t bad = 0;
    for (int64_t i = 0; i < nt; i++) bad += (unsigned char)tokenizer_decode(&tok, (int)train[i], NULL)[0] != (unsigned char)text[i];
    for (int64_t i = 0; i < nv; i++)
        bad += (unsigned char)tokenizer_decode(&tok, (int)val[i], NULL)[0] != (unsigned char)text[nt + i];
    CHECKF(bad == 0, "%lld prepared tokens do not decode to the corpus", (long long)bad);

    // The loader on the prepared train split gives llm.c's first batch: tokens 0..B*T.
    char globs[700];
    snprintf(globs, sizeof globs, "%s/train_*.bin", dir);
    DataLoader dl;
    loader_open(&dl, globs, 4, 64, 0, 1, 65, 0, 0, "data.train");
    int in[256], tg[256];
    loader_next(&dl, in, tg);
    for (int i = 0; i < 256; i++) CHECK(in[i] == (int)train[i] && tg[i] == (int)train[i + 1]);
    loader_close(&dl);

    // A second run with the default shard size leaves one train shard and removes the stale ones.
    o.shard_tokens = 100000000;
    prepare_run(&o, &r);
    CHECK(r.train_shards == 1 && r.val_shards == 1);
    char stale[700];
    snprintf(stale, sizeof stale, "%s/train_000001.bin", dir);
    CHECK(!file_exists(stale));
    int64_t nt2;
    uint32_t *train2 = read_all_shards(dir, "train", 1, &nt2);
    CHECK(nt2 == nt && memcmp(train, train2, (size_t)nt * sizeof(uint32_t)) == 0);

    free(train2);
    free(train);
    free(val);
    free(text);
    tokenizer_free(&tok);
}

static int parse(const char *line) {
    char buf[512], *argv[32];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", line);
    for (char *save = NULL, *t = strtok_r(buf, " ", &save); t && argc < 32; t = strtok_r(NULL, " ", &save)) argv[argc++] = t;
    PrepareOptions o;
    stderr_begin();
    int rc = prepare_parse_args(argc, argv, &o);
    free(stderr_end());
    free(o.inputs);
    return rc;
}

static void prepare_missing_fn(void *arg) {
    in_child();
    const char *inputs[1] = {tmp_path("no_such_input.txt")};
    PrepareOptions o;
    prepare_defaults(&o);
    o.inputs = inputs;
    o.num_inputs = 1;
    o.tokenizer = "char";
    o.out_dir = tmp_path("prep_missing");
    o.quiet = 1;
    prepare_run(&o, NULL);
}

TEST(data_prepare_args) {
    CHECK(parse("prepare_data --input a.txt b.txt --tokenizer char --out d") == 0);
    CHECK(parse("prepare_data --input a.txt --tokenizer byte --out d --val-fraction 0.2 --shard-tokens 1000") == 0);
    CHECK(parse("prepare_data --input a.txt --tokenizer bpe --out d") == 2);
    CHECK(parse("prepare_data --input --tokenizer char --out d") == 2);
    CHECK(parse("prepare_data --input a.txt --out d") == 2);
    CHECK(parse("prepare_data --input a.txt --tokenizer char") == 2);
    CHECK(parse("prepare_data --input a.txt --tokenizer char --out d --val-fraction 1.5") == 2);
    CHECK(parse("prepare_data --input a.txt --tokenizer char --out d --val-fraction x") == 2);
    CHECK(parse("prepare_data --input a.txt --tokenizer char --out d --shard-tokens 0") == 2);
    CHECK(parse("prepare_data --input a.txt --tokenizer char --out d --frobnicate") == 2);
    CHECK(parse("prepare_data --input a.txt --tokenizer char --out") == 2);
    char *argv[] = {"prepare_data", "--input", "a", "b", "--tokenizer", "char", "--out", "d", "--val-fraction", "0.25"};
    PrepareOptions o;
    CHECK(prepare_parse_args(10, argv, &o) == 0);
    CHECK(o.num_inputs == 2 && strcmp(o.inputs[1], "b") == 0 && o.val_fraction == 0.25 && o.shard_tokens == 100000000);
    free(o.inputs);
    EXPECT_FATAL(prepare_missing_fn, NULL, "no_such_input.txt: cannot open");
}

// With grad_accum, shard switches happen only between steps, so (world 1, accum 2) and
// (world 2, accum 1) read the same rows even when a shard's rows are not a multiple of
// either micro-batch: here each shard has 7 rows of T = 4 and B = 2, so a step of 4 rows
// fits once per shard and the rest is dropped at the same place in both splits.
TEST(data_loader_accum_matches_world) {
    const char *dir = tmp_path("accum");
    make_dirs(dir);
    for (int s = 0; s < 2; s++) {
        uint32_t tok[29];
        for (int i = 0; i < 29; i++) tok[i] = (uint32_t)(100 * s + i);
        char path[600];
        snprintf(path, sizeof path, "%s/a_%d.bin", dir, s);
        shard_write(path, tok, 29, 0);
    }
    char glob[600];
    snprintf(glob, sizeof glob, "%s/a_*.bin", dir);
    DataLoader one, r0, r1;
    loader_open(&one, glob, 2, 4, 0, 1, 0, 0, 0, "t");
    loader_set_accum(&one, 2);
    loader_open(&r0, glob, 2, 4, 0, 2, 0, 0, 0, "t");
    loader_open(&r1, glob, 2, 4, 1, 2, 0, 0, 0, "t");
    int a[8], at[8], b[8], bt[8];
    for (int step = 0; step < 5; step++) {  // crosses both shard ends and an epoch wrap
        for (int micro = 0; micro < 2; micro++) {
            loader_next(&one, a, at);
            loader_next(micro ? &r1 : &r0, b, bt);
            CHECKF(memcmp(a, b, sizeof a) == 0 && memcmp(at, bt, sizeof at) == 0, "step %d micro %d differ", step, micro);
            // Each shard supplies exactly one 4-row step: even steps read shard 0, odd ones shard 1.
            CHECKF((a[0] >= 100) == (step % 2 == 1), "step %d read token %d", step, a[0]);
        }
    }
    loader_close(&one);
    loader_close(&r0);
    loader_close(&r1);
}
