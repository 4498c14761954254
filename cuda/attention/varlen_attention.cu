// varlen_attention on CUDA. fp16/bf16 run the FA2-style tiled engine (tile_attention.cuh) on
// the CPU engine's varlen schedule; fp32 (and head_dim > 256) keep the exact kernel of one warp
// per (query token, query head) (warp_row_attention.cuh). Same checks, same masking convention
// (causal aligned bottom right), same outputs (0 and -inf LSE for rows that see no key).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

#include "attention/tile_attention.h"
#include "attention/varlen_attention.h"
#include "attention/warp_row_attention.cuh"
#include "lmkernels/torch_dtype.h"

namespace lmkernels::attention {
namespace {

template <StorageDtype D>
__global__ void varlen_attention_kernel(const void* q, const void* k, const void* v, void* out,
                                        float* lse, const int64_t* cu_q, const int64_t* cu_k,
                                        int64_t batch, int64_t total_q, int64_t heads_q,
                                        int64_t heads_kv, int64_t dim, PackedStrides st, bool causal,
                                        float scale_log2) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (row >= total_q * heads_q) return;
  const int64_t token = row / heads_q;
  const int64_t head = row % heads_q;
  const int64_t kv_head = head / (heads_q / heads_kv);
  int64_t lo = 0, hi = batch;  // sequence b with cu_q[b] <= token < cu_q[b + 1]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (cu_q[mid] <= token) lo = mid; else hi = mid;
  }
  const int64_t b = lo;
  const int64_t len_q = cu_q[b + 1] - cu_q[b];
  const int64_t len_k = cu_k[b + 1] - cu_k[b];
  const int64_t i = token - cu_q[b];
  int64_t key_end = causal ? i + (len_k - len_q) + 1 : len_k;
  key_end = key_end < 0 ? 0 : (key_end > len_k ? len_k : key_end);

  constexpr int64_t elem = elem_bytes<D>();
  const char* q_row = static_cast<const char*>(q) + (token * st.q_token + head * st.q_head) * elem;
  WarpRowAttention<D> row_state(q_row, dim, scale_log2);
  for (int64_t j = 0; j < key_end; ++j) {
    const int64_t key = cu_k[b] + j;
    row_state.visit(static_cast<const char*>(k) + (key * st.k_token + kv_head * st.k_head) * elem,
                    static_cast<const char*>(v) + (key * st.v_token + kv_head * st.v_head) * elem);
  }
  row_state.finish(static_cast<char*>(out) + (token * st.o_token + head * st.o_head) * elem,
                   lse != nullptr ? lse + token * heads_q + head : nullptr);
}

std::tuple<at::Tensor, at::Tensor> varlen_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const at::Tensor& cu_seqlens_q,
                                                         const at::Tensor& cu_seqlens_k, bool causal,
                                                         double scale, bool return_lse) {
  const auto [cu_q_host, cu_k_host] = check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t total_q = q.size(0), heads_q = q.size(1), dim = q.size(2);
  at::Tensor out = at::empty({total_q, heads_q, dim}, q.options());
  at::Tensor lse = at::empty({return_lse ? total_q : 0, heads_q}, q.options().dtype(at::kFloat));
  if (total_q == 0) return {out, lse};
  const int64_t group = heads_q / k.size(1);
  if (tile_attention_applies(q, group)) {
    TileLayout layout;
    for (size_t b = 0; b + 1 < cu_q_host.size(); ++b) {
      layout.q_off.push_back(cu_q_host[b] * q.stride(0));
      layout.k_off.push_back(cu_k_host[b] * k.stride(0));
      layout.v_off.push_back(cu_k_host[b] * v.stride(0));
      layout.o_off.push_back(cu_q_host[b] * out.stride(0));
      layout.lse_off.push_back(cu_q_host[b] * heads_q);
      layout.len_q.push_back(cu_q_host[b + 1] - cu_q_host[b]);
      layout.len_k.push_back(cu_k_host[b + 1] - cu_k_host[b]);
    }
    layout.q_tok = q.stride(0), layout.q_head = q.stride(1);
    layout.k_tok = k.stride(0), layout.k_head = k.stride(1);
    layout.v_tok = v.stride(0), layout.v_head = v.stride(1);
    layout.o_tok = out.stride(0), layout.o_head = out.stride(1);
    layout.lse_tok = heads_q, layout.lse_head = 1;
    const Schedule schedule = varlen_schedule(cu_q_host, cu_k_host, k.size(1), causal, tile_positions(group));
    run_tile_attention(q, k, v, out, return_lse ? lse.data_ptr<float>() : nullptr, schedule, layout, causal, scale);
    return {out, lse};
  }
  const at::Tensor cu_q = cu_seqlens_q.to(at::kLong).contiguous();
  const at::Tensor cu_k = cu_seqlens_k.to(at::kLong).contiguous();
  const PackedStrides st = packed_strides(q, k, v, out);
  const int threads = 128;
  const int64_t rows = total_q * heads_q;
  const int64_t blocks = (rows * kWarp + threads - 1) / threads;
  TORCH_CHECK(blocks < (int64_t(1) << 31), "varlen_attention: too many query rows for one launch");
  const float scale_log2 = static_cast<float>(scale) * 1.4426950408889634f;
  auto stream = c10::cuda::getCurrentCUDAStream();
  with_storage_dtype(q.scalar_type(), [&](auto tag) {
    constexpr StorageDtype D = decltype(tag)::value;
    varlen_attention_kernel<D><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
        return_lse ? lse.data_ptr<float>() : nullptr, cu_q.data_ptr<int64_t>(),
        cu_k.data_ptr<int64_t>(), cu_q.numel() - 1, total_q, heads_q, k.size(1), dim, st, causal,
        scale_log2);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("varlen_attention", &varlen_attention_cuda); }

}  // namespace lmkernels::attention
