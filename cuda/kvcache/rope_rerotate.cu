// rope_rerotate_ on CUDA: one block per (batch, token) row. The block builds the row's
// cos/sin table in shared memory once, then rotates every head with it. Per-element math
// (angle reduction, pair rotation, bf16/fp16 rounding) is the shared code the CPU tests cover.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kvcache/rope_rerotate.h"
#include "lmkernels/dtype.h"
#include "lmkernels/rope.h"
#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
__global__ void rope_rerotate_kernel(typename Storage<D>::T* __restrict__ k,
                                     const int64_t* __restrict__ old_pos,
                                     const int64_t* __restrict__ new_pos,
                                     const float* __restrict__ inv_freq, int64_t tokens,
                                     int64_t heads, int64_t stride_batch, int64_t stride_token,
                                     int64_t stride_head, int rotary_dim, bool neox) {
  extern __shared__ float table[];  // cos[half], sin[half]
  const int64_t row = blockIdx.x;
  const int64_t delta = new_pos[row] - old_pos[row];
  if (delta == 0) return;  // exactly the identity, as on CPU
  const int half = rotary_dim / 2;
  rope::block_fill_delta_table(delta, inv_freq, half, table);
  __syncthreads();
  const int64_t b = row / tokens;
  const int64_t t = row % tokens;
  auto* token = k + b * stride_batch + t * stride_token;
  for (int64_t idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int i = static_cast<int>(idx % half);
    auto* head = token + (idx / half) * stride_head;
    auto* px = head + rope::pair_first(i, rotary_dim, neox);
    auto* py = head + rope::pair_second(i, rotary_dim, neox);
    float x = Storage<D>::load(px);
    float y = Storage<D>::load(py);
    rope::rotate_pair(x, y, table[i], table[half + i]);
    Storage<D>::store(px, x);
    Storage<D>::store(py, y);
  }
}

template <StorageDtype D>
void launch(at::Tensor& k, const at::Tensor& old_pos, const at::Tensor& new_pos,
            const at::Tensor& inv_freq, bool neox) {
  using T = typename Storage<D>::T;
  const int rotary_dim = static_cast<int>(2 * inv_freq.numel());
  const int64_t rows = k.size(0) * k.size(1);
  const int64_t work = k.size(2) * (rotary_dim / 2);
  const int threads = work >= 256 ? 256 : (work >= 128 ? 128 : 64);
  const size_t smem = sizeof(float) * rotary_dim;
  auto stream = c10::cuda::getCurrentCUDAStream();
  rope_rerotate_kernel<D><<<static_cast<unsigned>(rows), threads, smem, stream>>>(
      static_cast<T*>(k.data_ptr()), old_pos.data_ptr<int64_t>(), new_pos.data_ptr<int64_t>(),
      inv_freq.data_ptr<float>(), k.size(1), k.size(2), k.stride(0), k.stride(1), k.stride(2),
      rotary_dim, neox);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void rope_rerotate_cuda(at::Tensor k, const at::Tensor& old_pos, const at::Tensor& new_pos,
                        const at::Tensor& inv_freq, bool neox) {
  check_rope_rerotate_args(k, old_pos, new_pos, inv_freq);
  if (k.numel() == 0) return;
  TORCH_CHECK(k.size(0) * k.size(1) < (int64_t(1) << 31),
              "rope_rerotate_: batch * tokens must be below 2^31 on CUDA, got ",
              k.size(0) * k.size(1));
  const c10::cuda::CUDAGuard guard(k.device());
  with_storage_dtype(k.scalar_type(), [&](auto tag) {
    launch<decltype(tag)::value>(k, old_pos, new_pos, inv_freq, neox);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("rope_rerotate_", &rope_rerotate_cuda); }

}  // namespace lmkernels
