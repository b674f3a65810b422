// Lets one inline function serve both the CPU code (gcc, C) and the CUDA kernels
// (nvcc, C++): the per-element math of layers and optimizers is written once.
#pragma once

#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif
