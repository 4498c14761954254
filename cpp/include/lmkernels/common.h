// Macros for math shared by CPU and CUDA code.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LMK_HOST_DEVICE __host__ __device__
#else
#define LMK_HOST_DEVICE
#endif

// Internal linkage: each translation unit (and each ISA build of a kernel) keeps its own copy,
// so the linker can never swap an AVX-512 copy into the scalar path (see cpu_isa.h).
#define LMK_INLINE static inline
