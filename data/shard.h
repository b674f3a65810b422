// Token shards, in llm.c's format: a header of 256 int32 (little-endian, as written by
// this machine), then the tokens.
//   header[0] = 20240520 (magic)
//   header[1] = version: 1 = tokens are uint16, 2 = tokens are uint32 (vocabularies over 65,535)
//   header[2] = number of tokens (1 .. 2^31-1)
//   header[3..255] = 0
// The file size is exactly 1024 + n * (2 or 4) bytes. Readers map the file read-only
// (mmap), so opening a shard of hundreds of MB costs nothing until tokens are touched.
#pragma once
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SHARD_MAGIC 20240520
#define SHARD_HEADER_INTS 256
#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * 4)

typedef struct {
    char *path;          // owned copy, for error messages
    int version;         // 1 (uint16 tokens) or 2 (uint32 tokens)
    int64_t num_tokens;  // > 0
    const void *map;     // the whole file, mapped read-only
    size_t map_bytes;
    const void *tokens;  // map + SHARD_HEADER_BYTES
} Shard;

// The smallest version that can hold every token: 1 when all are <= 65535, else 2.
int shard_version_for(const uint32_t *tokens, int64_t n);

// Writes a shard. version 0 picks shard_version_for(tokens, n); 1 or 2 forces it (a token
// that does not fit version 1 is a fatal error). n must be in 1 .. 2^31-1. The file is written
// to "<path>.tmp" and renamed into place, so a reader never sees a half-written shard.
void shard_write(const char *path, const uint32_t *tokens, int64_t n, int version);

// Maps and validates a shard: magic, version, zero tokens, and file size against the
// header (truncated or trailing bytes) are fatal errors naming the file.
void shard_open(Shard *s, const char *path);
void shard_close(Shard *s);

// Token i (0 <= i < num_tokens; not checked here).
static inline uint32_t shard_token(const Shard *s, int64_t i) {
    return s->version == 1 ? ((const uint16_t *)s->tokens)[i] : ((const uint32_t *)s->tokens)[i];
}

#ifdef __cplusplus
}
#endif
