// Crash-safe file replacement: write to "<path>.tmp", flush to disk, rename over <path>.
// A crash at any moment leaves either the old file or the new one, never half of one.
#pragma once
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    FILE *f;
    char path[4096];
    char tmp_path[4100];
} AtomicFile;

AtomicFile atomic_open(const char *path);
void atomic_commit(AtomicFile *af);

#ifdef __cplusplus
}
#endif
