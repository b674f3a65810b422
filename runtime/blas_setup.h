// OpenBLAS 0.3.21 (Debian 12) does not recognise some recent Intel CPUs, Sapphire Rapids
// under KVM among them, and falls back to its generic SSE3 "Prescott" kernels, which are
// 3-4x slower than its AVX-512 ones. It reads OPENBLAS_CORETYPE only while the library
// loads, before main, so the only fix from inside the program is to set the variable and
// re-execute once. Call first thing in main.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

void blas_pick_kernels(int argc, char **argv);

#ifdef __cplusplus
}
#endif
