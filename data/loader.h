// The deterministic distributed data loader.
//
// Order (see docs/data.md for the long version):
//  - Shards: every file matched by the comma-separated glob patterns, sorted by name
//    (strcmp on the path) with exact duplicates removed. A shard of n tokens holds
//    (n-1)/T ROWS; row j is tokens [j*T, j*T+T] (T+1 tokens): inputs are its first T,
//    targets its last T. A shard with fewer than B*world rows cannot supply one global
//    micro-batch and is skipped (one warning line on rank 0's stderr).
//  - Each loader_next() consumes one GLOBAL micro-batch: the next G = B*world rows of the
//    row sequence. Rank r takes rows [r*B, (r+1)*B) of it, row b of those going to
//    inputs/targets[b*T .. b*T+T). Without shuffle the rows of a rank are consecutive, so
//    its micro-batch is exactly llm.c's "B*T+1 consecutive tokens split into inputs and
//    targets". Hence one rank calling twice sees what ranks 0 and 1 of a world of 2 see
//    in one call each (as long as both switch shards at the same place: see below).
//  - Within a shard, rows are taken in order (or in a permuted order, with shuffle);
//    when fewer than one optimizer step's window (G*accum rows, see loader_set_accum) is
//    left at a step boundary, those rows are dropped for this epoch and the next shard
//    starts. After the last shard the epoch is incremented and the first shard follows.
//  - Shuffle: at the start of epoch e the shard order is a permutation drawn from an RNG
//    seeded from (seed, e), and the row order of each shard is a permutation drawn from
//    an RNG seeded from (seed, e, shard's index in the sorted list). Nothing depends on
//    world or rank, so all world sizes walk the same row sequence and only slice it.
//    The rows dropped at a shard's end depend only on the step window B*world*accum, so
//    runs with the same global batch agree exactly whatever their (world, accum) split.
//  - Tokens are validated as they are read: a token >= vocab_size (vocab_size > 0) is a
//    fatal error naming the shard, the token offset in it and the vocab size.
//  - LoaderPos {epoch, shard, row}: shard is the ordinal in this epoch's shard order (not
//    the file index), row the number of rows of that shard already consumed. loader_tell
//    always returns a normalized position (a shard with fewer than G rows left has already
//    been left), so a saved position points at the next batch to be read.
#pragma once
#include <stdint.h>

#include "shard.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t epoch, shard, row;
} LoaderPos;  // saved in checkpoints

typedef struct {
    int B, T, rank, world, vocab_size, shuffle;
    int accum;             // micro-batches per optimizer step (loader_set_accum)
    uint64_t seed;
    char *key;             // config key for messages, e.g. "data.train"
    int num_shards;        // usable shards, sorted by path
    Shard *shards;
    int64_t *shard_rows;   // rows in each usable shard
    int64_t batches_per_epoch;
    LoaderPos pos;
    int *order;            // shard order of pos.epoch: order[k] = index into shards
    int64_t order_epoch;   // epoch that `order` was drawn for (-1: none)
    uint32_t *perm;        // row order of the current shard (shuffle only)
    int64_t perm_cap;
    int64_t perm_epoch;    // (epoch, shard index) that `perm` was drawn for (-1: none)
    int perm_shard;
} DataLoader;

// globs: "a/train_*.bin" or "a/*.bin,b/x.bin". A pattern that matches nothing, too few
// tokens in every shard, or bad B/T/rank/world are fatal errors naming config_key.
void loader_open(DataLoader *dl, const char *globs, int B, int T, int rank, int world, int vocab_size, int shuffle,
                 uint64_t seed, const char *config_key);
// Fills B*T ints each, for this rank, and moves on by one global micro-batch.
void loader_next(DataLoader *dl, int *inputs, int *targets);
// Micro-batches per optimizer step (default 1). Shards are then switched only between
// steps: a step's window of B*world*accum rows never straddles two shards, so the same
// global batch split as (world, accum) = (1, 2) or (2, 1) reads exactly the same rows for
// the whole run. Resets the position.
void loader_set_accum(DataLoader *dl, int accum);
// Back to epoch 0, first shard, first row (used for val before each evaluation).
void loader_reset(DataLoader *dl);
LoaderPos loader_tell(const DataLoader *dl);
// Validates pos (epoch >= 0, shard in range, row within that shard); a bad one is fatal.
void loader_seek(DataLoader *dl, LoaderPos pos);
void loader_close(DataLoader *dl);

// Global micro-batches in one epoch (the same for every epoch and rank); e.g. the number
// of loader_next calls that cover the whole val split once.
int64_t loader_batches_per_epoch(const DataLoader *dl);

#ifdef __cplusplus
}
#endif
