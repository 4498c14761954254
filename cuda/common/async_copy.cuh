// cp.async (sm_80+) with a plain-copy fallback for older architectures, shared by the CUDA
// kernels that prefetch their next tile into shared memory while the current one is used.
#pragma once

namespace lmkernels {

// 16 bytes global -> shared; both addresses 16-byte aligned.
__device__ inline void cp_async16(void* smem_dst, const void* global_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src));
#else
  *static_cast<uint4*>(smem_dst) = *static_cast<const uint4*>(global_src);
#endif
}

__device__ inline void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ inline void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

}  // namespace lmkernels
