// Error handling, checked allocation and file I/O shared by every program here.
// A user error (bad config, missing file, corrupt shard) ends the run through fatal():
// one line naming the problem, then a non-zero exit. Distributed runs install a hook
// so that one failing rank takes the whole job down instead of leaving it hanging.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define NORETURN __attribute__((noreturn))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define NORETURN
#define PRINTF_LIKE(f, a)
#endif

// Prints "error: <message>" to stderr and exits with status 1 (or runs the hook).
NORETURN void fatal(const char *fmt, ...) PRINTF_LIKE(1, 2);
// Called by fatal() after printing; used by runtime/dist to abort all ranks.
void set_fatal_hook(NORETURN void (*hook)(int status));
// Text put after "error: " in every fatal message (e.g. "rank 1: "); copied.
void set_error_prefix(const char *prefix);

void *xmalloc(size_t bytes);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t bytes);
char *xstrdup(const char *s);
// 64-byte aligned allocation for SIMD-friendly buffers; free with free().
float *xmalloc_floats(size_t count);

FILE *xfopen(const char *path, const char *mode);
// Reads exactly `bytes` or fails naming `path`.
void xfread(void *dst, size_t bytes, FILE *f, const char *path);
void xfwrite(const void *src, size_t bytes, FILE *f, const char *path);
// Whole file into a NUL-terminated buffer; *len_out may be NULL.
char *read_file(const char *path, size_t *len_out);
int file_exists(const char *path);
// mkdir -p; fails with a message naming the path.
void make_dirs(const char *path);

// Seconds on a monotonic clock.
double wall_time(void);

#ifdef __cplusplus
}
#endif
