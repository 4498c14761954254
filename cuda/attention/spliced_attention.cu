// spliced_attention on CUDA: one warp per (query, query head) as varlen_attention's kernel
// (warp_row_attention.cuh); query i visits keys 0 .. q_positions[i].
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "attention/spliced_attention.h"
#include "attention/warp_row_attention.cuh"
#include "lmkernels/torch_dtype.h"

namespace lmkernels::attention {
namespace {

template <StorageDtype D>
__global__ void spliced_attention_kernel(const void* q, const void* k, const void* v, void* out,
                                         const int64_t* positions, int64_t total_q, int64_t heads_q,
                                         int64_t heads_kv, int64_t dim, PackedStrides st, float scale_log2) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (row >= total_q * heads_q) return;
  const int64_t token = row / heads_q;
  const int64_t head = row % heads_q;
  const int64_t kv_head = head / (heads_q / heads_kv);
  constexpr int64_t elem = elem_bytes<D>();
  const char* q_row = static_cast<const char*>(q) + (token * st.q_token + head * st.q_head) * elem;
  WarpRowAttention<D> row_state(q_row, dim, scale_log2);
  for (int64_t key = 0; key <= positions[token]; ++key) {
    row_state.visit(static_cast<const char*>(k) + (key * st.k_token + kv_head * st.k_head) * elem,
                    static_cast<const char*>(v) + (key * st.v_token + kv_head * st.v_head) * elem);
  }
  row_state.finish(static_cast<char*>(out) + (token * st.o_token + head * st.o_head) * elem, nullptr);
}

at::Tensor spliced_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& q_positions, double scale) {
  check_spliced_args(q, k, v, q_positions, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t total_q = q.size(0), heads_q = q.size(1), dim = q.size(2);
  at::Tensor out = at::empty({total_q, heads_q, dim}, q.options());
  if (total_q == 0) return out;
  const at::Tensor positions = q_positions.to(q.device(), at::kLong).contiguous();
  const PackedStrides st = packed_strides(q, k, v, out);
  const int threads = 128;
  const int64_t blocks = (total_q * heads_q * kWarp + threads - 1) / threads;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "spliced_attention: too many query rows for one launch");
  const float scale_log2 = static_cast<float>(scale) * 1.4426950408889634f;
  auto stream = c10::cuda::getCurrentCUDAStream();
  with_storage_dtype(q.scalar_type(), [&](auto tag) {
    constexpr StorageDtype D = decltype(tag)::value;
    spliced_attention_kernel<D><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), positions.data_ptr<int64_t>(), total_q, heads_q,
        k.size(1), dim, st, scale_log2);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("spliced_attention", &spliced_attention_cuda); }

}  // namespace lmkernels::attention
