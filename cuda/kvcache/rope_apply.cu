// rope_apply_ on CUDA: one block per (batch, token) row, rotating every head by the row's
// given cos/sin (neox pairing) with the shared rope::rotate_pair the CPU tests cover.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kvcache/rope_apply.h"
#include "lmkernels/dtype.h"
#include "lmkernels/rope.h"
#include "lmkernels/storage.h"
#include "lmkernels/torch_dtype.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
__global__ void rope_apply_kernel(RopeRerotateArgs a) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / a.tokens;
  const int64_t t = row % a.tokens;
  const int half = a.rotary_dim / 2;
  const float* cos_row = a.cos_table + b * a.table_stride_batch + t * a.table_stride_token;
  const float* sin_row = a.sin_table + b * a.table_stride_batch + t * a.table_stride_token;
  auto* token = static_cast<typename Storage<D>::T*>(a.k) + b * a.stride_batch + t * a.stride_token;
  for (int64_t idx = threadIdx.x; idx < a.heads * half; idx += blockDim.x) {
    const int i = static_cast<int>(idx % half);
    auto* head = token + (idx / half) * a.stride_head;
    float x = Storage<D>::load(head + i);
    float y = Storage<D>::load(head + i + half);
    rope::rotate_pair(x, y, cos_row[i], sin_row[i]);
    Storage<D>::store(head + i, x);
    Storage<D>::store(head + i + half, y);
  }
}

void rope_apply_cuda(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin) {
  check_rope_apply_args(x, cos, sin);
  if (x.numel() == 0) return;
  TORCH_CHECK(x.size(0) * x.size(1) < (int64_t(1) << 31), "rope_apply_: batch * tokens must be below 2^31 on CUDA, got ",
              x.size(0) * x.size(1));
  const c10::cuda::CUDAGuard guard(x.device());
  const RopeTables tables = rope_tables_with_shared_strides(cos, sin);
  const RopeRerotateArgs args = rope_apply_args(x, tables);
  const int64_t work = args.heads * (args.rotary_dim / 2);
  const int threads = work >= 256 ? 256 : (work >= 128 ? 128 : 64);
  auto stream = c10::cuda::getCurrentCUDAStream();
  with_storage_dtype(x.scalar_type(), [&](auto tag) {
    rope_apply_kernel<decltype(tag)::value>
        <<<static_cast<unsigned>(args.batch * args.tokens), threads, 0, stream>>>(args);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("rope_apply_", &rope_apply_cuda); }

}  // namespace lmkernels
