#define _GNU_SOURCE
#include "fileio.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

AtomicFile atomic_open(const char *path) {
    AtomicFile af;
    if (snprintf(af.path, sizeof af.path, "%s", path) >= (int)sizeof af.path) fatal("%s: path too long", path);
    snprintf(af.tmp_path, sizeof af.tmp_path, "%s.tmp", path);
    af.f = xfopen(af.tmp_path, "wb");
    return af;
}

void atomic_commit(AtomicFile *af) {
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) fatal("%s: write failed (%s)", af->tmp_path, strerror(errno));
    if (fclose(af->f) != 0) fatal("%s: close failed (%s)", af->tmp_path, strerror(errno));
    af->f = NULL;
    if (rename(af->tmp_path, af->path) != 0) fatal("%s: cannot rename to %s (%s)", af->tmp_path, af->path, strerror(errno));
}
