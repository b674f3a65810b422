#define _GNU_SOURCE
#include "shard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/common.h"

int shard_version_for(const uint32_t *tokens, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] > 0xFFFFu) return 2;
    return 1;
}

void shard_write(const char *path, const uint32_t *tokens, int64_t n, int version) {
    if (n <= 0) fatal("%s: cannot write a shard of %lld tokens (need at least 1)", path, (long long)n);
    if (n > INT32_MAX)
        fatal("%s: %lld tokens do not fit one shard (at most %d); use smaller shards", path, (long long)n, INT32_MAX);
    if (version == 0) version = shard_version_for(tokens, n);
    if (version != 1 && version != 2) fatal("%s: cannot write shard version %d (known: 1, 2)", path, version);
    if (version == 1)
        for (int64_t i = 0; i < n; i++)
            if (tokens[i] > 0xFFFFu)
                fatal("%s: token %u at offset %lld does not fit a version 1 (uint16) shard", path, tokens[i], (long long)i);

    int32_t header[SHARD_HEADER_INTS] = {0};
    header[0] = SHARD_MAGIC;
    header[1] = version;
    header[2] = (int32_t)n;

    size_t tmp_len = strlen(path) + 5;
    char *tmp = (char *)xmalloc(tmp_len);
    snprintf(tmp, tmp_len, "%s.tmp", path);
    FILE *f = xfopen(tmp, "wb");
    xfwrite(header, sizeof header, f, tmp);
    if (version == 2) {
        xfwrite(tokens, (size_t)n * sizeof(uint32_t), f, tmp);
    } else {
        enum { CHUNK = 1 << 16 };
        uint16_t *buf = (uint16_t *)xmalloc(CHUNK * sizeof(uint16_t));
        for (int64_t at = 0; at < n; at += CHUNK) {
            int64_t m = n - at < CHUNK ? n - at : CHUNK;
            for (int64_t i = 0; i < m; i++) buf[i] = (uint16_t)tokens[at + i];
            xfwrite(buf, (size_t)m * sizeof(uint16_t), f, tmp);
        }
        free(buf);
    }
    if (fclose(f) != 0) fatal("%s: write failed (%s)", tmp, strerror(errno));
    if (rename(tmp, path) != 0) fatal("%s: cannot rename %s into place (%s)", path, tmp, strerror(errno));
    free(tmp);
}

void shard_open(Shard *s, const char *path) {
    memset(s, 0, sizeof *s);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fatal("%s: cannot open token shard (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) fatal("%s: cannot stat (%s)", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fatal("%s: not a regular file: not a token shard", path);
    size_t size = (size_t)st.st_size;
    if (size < SHARD_HEADER_BYTES)
        fatal("%s: file is %zu bytes, smaller than the %d-byte header: not a token shard (truncated?)", path, size,
              SHARD_HEADER_BYTES);
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) fatal("%s: cannot mmap (%s)", path, strerror(errno));
    close(fd);

    const int32_t *header = (const int32_t *)map;
    if (header[0] != SHARD_MAGIC)
        fatal("%s: bad magic %d (expected %d): not a token shard", path, header[0], SHARD_MAGIC);
    int version = header[1];
    if (version != 1 && version != 2)
        fatal("%s: unknown shard version %d (known: 1 = uint16 tokens, 2 = uint32 tokens)", path, version);
    int64_t n = header[2];
    if (n <= 0) fatal("%s: header says %lld tokens: a shard needs at least one (zero tokens)", path, (long long)n);
    size_t elem = version == 1 ? 2 : 4;
    size_t expected = SHARD_HEADER_BYTES + (size_t)n * elem;
    if (size < expected)
        fatal("%s: file is truncated: %zu bytes, but the header's %lld tokens of version %d need %zu", path, size,
              (long long)n, version, expected);
    if (size > expected)
        fatal("%s: file has %zu trailing bytes after the header's %lld tokens of version %d (%zu bytes expected)",
              path, size - expected, (long long)n, version, expected);

    s->path = xstrdup(path);
    s->version = version;
    s->num_tokens = n;
    s->map = map;
    s->map_bytes = size;
    s->tokens = (const char *)map + SHARD_HEADER_BYTES;
}

void shard_close(Shard *s) {
    if (s->map) munmap((void *)s->map, s->map_bytes);
    free(s->path);
    memset(s, 0, sizeof *s);
}
