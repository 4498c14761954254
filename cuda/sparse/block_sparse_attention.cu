// block_sparse_attention on CUDA. fp16/bf16 run the FA2-style tiled engine
// (attention/tile_attention.cuh: cp.async prefetch of the next listed K/V tile, each tile read
// once per GQA group) on the CPU engine's CSR schedule; fp32 (and head_dim > 256) keep the exact
// kernel of one warp per (batch, query head, query token) walking the blocks its query block
// lists (warp_row_attention.cuh).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "attention/schedule.h"
#include "attention/tile_attention.h"
#include "attention/warp_row_attention.cuh"
#include "lmkernels/torch_dtype.h"
#include "sparse/block_sparse_attention.h"

namespace lmkernels::sparse {
namespace {

using attention::WarpRowAttention;
using attention::elem_bytes;
using attention::kWarp;

struct Strides {
  int64_t q[3], k[3], v[3], o[3];  // batch, head, token
};

template <StorageDtype D>
__global__ void block_sparse_attention_kernel(const void* q, const void* k, const void* v, void* out,
                                              float* lse, const int64_t* crow, const int64_t* col,
                                              int64_t batch, int64_t heads_q, int64_t heads_kv,
                                              int64_t tokens, int64_t dim, int64_t block_size,
                                              int64_t blocks, int64_t width, Strides st, bool causal,
                                              float scale_log2) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  if (row >= batch * heads_q * tokens) return;
  const int64_t n = row % tokens;
  const int64_t head = (row / tokens) % heads_q;
  const int64_t b = row / (tokens * heads_q);
  const int64_t kv_head = head / (heads_q / heads_kv);
  const int64_t i = n / block_size;
  const int64_t bh = b * heads_q + head;
  constexpr int64_t elem = elem_bytes<D>();
  const char* q_row = static_cast<const char*>(q) + (b * st.q[0] + head * st.q[1] + n * st.q[2]) * elem;
  WarpRowAttention<D> row_state(q_row, dim, scale_log2);
  for (int64_t e = crow[bh * (blocks + 1) + i]; e < crow[bh * (blocks + 1) + i + 1]; ++e) {
    const int64_t block = col[bh * width + e];
    const int64_t begin = block * block_size;
    int64_t end = begin + block_size < tokens ? begin + block_size : tokens;
    if (causal && end > n + 1) end = n + 1;
    for (int64_t j = begin; j < end; ++j) {
      row_state.visit(static_cast<const char*>(k) + (b * st.k[0] + kv_head * st.k[1] + j * st.k[2]) * elem,
                      static_cast<const char*>(v) + (b * st.v[0] + kv_head * st.v[1] + j * st.v[2]) * elem);
    }
  }
  row_state.finish(static_cast<char*>(out) + (b * st.o[0] + head * st.o[1] + n * st.o[2]) * elem,
                   lse != nullptr ? lse + row : nullptr);
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                               const at::Tensor& v, const at::Tensor& crow,
                                                               const at::Tensor& col, int64_t block_size,
                                                               bool causal, double scale, bool return_lse) {
  const BlockIndex index = check_block_sparse_args(q, k, v, crow, col, block_size, scale);
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t batch = q.size(0), heads_q = q.size(1), tokens = q.size(2), dim = q.size(3);
  at::Tensor out = at::empty({batch, heads_q, tokens, dim}, q.options());
  at::Tensor lse = at::empty({return_lse ? batch : 0, heads_q, tokens}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const int64_t heads_kv = k.size(1), group = heads_q / heads_kv;
  if (attention::tile_attention_applies(q, group)) {
    attention::TileLayout layout;
    for (int64_t b = 0; b < batch; ++b) {
      layout.q_off.push_back(b * q.stride(0));
      layout.k_off.push_back(b * k.stride(0));
      layout.v_off.push_back(b * v.stride(0));
      layout.o_off.push_back(b * out.stride(0));
      layout.lse_off.push_back(b * heads_q * tokens);
      layout.len_q.push_back(tokens);
      layout.len_k.push_back(tokens);
    }
    layout.q_tok = q.stride(2), layout.q_head = q.stride(1);
    layout.k_tok = k.stride(2), layout.k_head = k.stride(1);
    layout.v_tok = v.stride(2), layout.v_head = v.stride(1);
    layout.o_tok = out.stride(2), layout.o_head = out.stride(1);
    layout.lse_tok = 1, layout.lse_head = tokens;
    const attention::Schedule schedule =
        attention::block_sparse_schedule(index.crow.data(), index.col.data(), index.blocks, index.width, batch,
                                         heads_q, heads_kv, tokens, block_size, causal, attention::tile_positions(group));
    attention::run_tile_attention(q, k, v, out, return_lse ? lse.data_ptr<float>() : nullptr, schedule, layout,
                                  causal, scale);
    return {out, lse};
  }
  const at::Tensor crow_dev = crow.to(at::kLong).contiguous();
  const at::Tensor col_dev = col.to(at::kLong).contiguous();
  const Strides st{{q.stride(0), q.stride(1), q.stride(2)}, {k.stride(0), k.stride(1), k.stride(2)},
                   {v.stride(0), v.stride(1), v.stride(2)}, {out.stride(0), out.stride(1), out.stride(2)}};
  const int threads = 128;
  const int64_t rows = batch * heads_q * tokens;
  const int64_t grid = (rows * kWarp + threads - 1) / threads;
  TORCH_CHECK(grid < (int64_t(1) << 31), "block_sparse_attention: too many query rows for one launch");
  const float scale_log2 = static_cast<float>(scale) * 1.4426950408889634f;
  auto stream = c10::cuda::getCurrentCUDAStream();
  with_storage_dtype(q.scalar_type(), [&](auto tag) {
    constexpr StorageDtype D = decltype(tag)::value;
    block_sparse_attention_kernel<D><<<static_cast<unsigned>(grid), threads, 0, stream>>>(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), return_lse ? lse.data_ptr<float>() : nullptr,
        crow_dev.data_ptr<int64_t>(), col_dev.data_ptr<int64_t>(), batch, heads_q, k.size(1), tokens, dim,
        block_size, index.blocks, index.width, st, causal, scale_log2);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CUDA, m) { m.impl("block_sparse_attention", &block_sparse_attention_cuda); }

}  // namespace lmkernels::sparse
