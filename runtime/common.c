#define _GNU_SOURCE
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static NORETURN void (*fatal_hook)(int status);
static char error_prefix[64];

void set_fatal_hook(NORETURN void (*hook)(int status)) { fatal_hook = hook; }
void set_error_prefix(const char *prefix) { snprintf(error_prefix, sizeof error_prefix, "%s", prefix); }

void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fputs("error: ", stderr);
    fputs(error_prefix, stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(ap);
    if (fatal_hook) fatal_hook(1);
    exit(1);
}

void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) fatal("out of memory allocating %zu bytes", bytes);
    return p;
}

void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fatal("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *xrealloc(void *p, size_t bytes) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) fatal("out of memory reallocating %zu bytes", bytes);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)xmalloc(n);
    memcpy(d, s, n);
    return d;
}

float *xmalloc_floats(size_t count) {
    void *p = NULL;
    size_t bytes = (count ? count : 1) * sizeof(float);
    bytes = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, bytes) != 0)
        fatal("out of memory allocating %zu floats", count);
    return (float *)p;
}

FILE *xfopen(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) fatal("%s: cannot open (%s)", path, strerror(errno));
    return f;
}

void xfread(void *dst, size_t bytes, FILE *f, const char *path) {
    if (bytes && fread(dst, 1, bytes, f) != bytes)
        fatal("%s: file is truncated (wanted %zu more bytes)", path, bytes);
}

void xfwrite(const void *src, size_t bytes, FILE *f, const char *path) {
    if (bytes && fwrite(src, 1, bytes, f) != bytes)
        fatal("%s: write failed (%s)", path, strerror(errno));
}

char *read_file(const char *path, size_t *len_out) {
    FILE *f = xfopen(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) fatal("%s: cannot seek", path);
    long len = ftell(f);
    if (len < 0) fatal("%s: cannot tell size", path);
    rewind(f);
    char *buf = (char *)xmalloc((size_t)len + 1);
    xfread(buf, (size_t)len, f, path);
    buf[len] = '\0';
    fclose(f);
    if (len_out) *len_out = (size_t)len;
    return buf;
}

int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

void make_dirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0) return;
    if (n >= sizeof buf) fatal("%s: path too long", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char saved = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                fatal("%s: cannot create directory (%s)", buf, strerror(errno));
            buf[i] = saved;
        }
    }
}

double wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
