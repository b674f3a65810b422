#define _GNU_SOURCE
#include "blas_setup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *openblas_get_corename(void);

void blas_pick_kernels(int argc, char **argv) {
    (void)argc;
    if (getenv("OPENBLAS_CORETYPE")) return;  // the user's choice, or we already re-executed
    const char *core = openblas_get_corename();
    if (!core || strcmp(core, "Prescott") != 0) return;  // OpenBLAS recognised the CPU
    const char *better = __builtin_cpu_supports("avx512bf16") ? "Cooperlake"
                         : __builtin_cpu_supports("avx512f")  ? "SkylakeX"
                         : __builtin_cpu_supports("avx2")     ? "Haswell"
                                                              : NULL;
    if (!better) return;
    setenv("OPENBLAS_CORETYPE", better, 1);
    execv("/proc/self/exe", argv);
    // exec failed: carry on with the slow kernels rather than stop.
    fprintf(stderr, "warning: OpenBLAS uses its generic kernels; set OPENBLAS_CORETYPE=%s for speed\n", better);
}
