// block_sparse_attention on CPU: the attention engine driven by a CSR block schedule.
//
// Each (batch, KV head, query block) becomes work items whose key spans are the union of the
// blocks listed for the group's query heads (attention/schedule.h); a span listed by only some
// heads carries a head mask, so K/V tiles are still read once per group (the reference re-reads
// them per head).
#include "sparse/block_sparse_attention.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "attention/engine.h"
#include "attention/engine_driver.h"
#include "attention/schedule.h"

namespace lmkernels::sparse {

using attention::Args;

BlockIndex check_block_sparse_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& crow, const at::Tensor& col, int64_t block_size,
                                   double scale) {
  const char* op = "block_sparse_attention: ";
  TORCH_CHECK(q.dim() == 4, op, "q must be [batch, heads_q, tokens, head_dim], got ", q.sizes());
  TORCH_CHECK(k.dim() == 4, op, "k must be [batch, heads_kv, tokens, head_dim], got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), op, "v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(2) == q.size(2) && k.size(3) == q.size(3), op,
              "k must match q in batch, tokens and head_dim: q ", q.sizes(), ", k ", k.sizes());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              "q must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype, op, "q, k and v must share a dtype");
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op, "q, k and v must be on one device");
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= 512, op, "head_dim must be in [1, 512], got ", q.size(3));
  TORCH_CHECK(k.size(1) >= 1 && q.size(1) >= 1 && q.size(1) % k.size(1) == 0, op, "heads_q (", q.size(1),
              ") must be a positive multiple of heads_kv (", k.size(1), ")");
  TORCH_CHECK(q.size(1) / k.size(1) <= 64, op, "at most 64 query heads per KV head, got ", q.size(1) / k.size(1));
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->size(3) <= 1 || t->stride(3) == 1, op, "q, k and v need unit stride on head_dim");
  }
  TORCH_CHECK(std::isfinite(scale), op, "scale must be finite, got ", scale);
  TORCH_CHECK(block_size == 16 || block_size == 32 || block_size == 64 || block_size == 128 || block_size == 256,
              op, "block_size must be one of 16, 32, 64, 128, 256, got ", block_size);

  const int64_t batch = q.size(0), heads = q.size(1), tokens = q.size(2);
  const int64_t blocks = (tokens + block_size - 1) / block_size;
  for (const auto* t : {&crow, &col}) {
    const char* name = t == &crow ? "crow" : "col";
    TORCH_CHECK(t->dim() == 3 && t->size(0) == batch && t->size(1) == heads, op, name,
                " must be [batch, heads_q, ...] = [", batch, ", ", heads, ", ...], got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == at::kInt || t->scalar_type() == at::kLong, op, name,
                " must be int32 or int64, got ", t->scalar_type());
  }
  TORCH_CHECK(crow.size(2) == blocks + 1, op, "crow must have ceil(tokens / block_size) + 1 = ", blocks + 1,
              " entries per head, got ", crow.size(2));
  BlockIndex index;
  index.blocks = blocks;
  index.width = col.size(2);
  const at::Tensor crow_host = crow.to(at::kCPU).to(at::kLong).contiguous();
  const at::Tensor col_host = col.to(at::kCPU).to(at::kLong).contiguous();
  index.crow.assign(crow_host.data_ptr<int64_t>(), crow_host.data_ptr<int64_t>() + crow_host.numel());
  index.col.assign(col_host.data_ptr<int64_t>(), col_host.data_ptr<int64_t>() + col_host.numel());
  for (int64_t bh = 0; bh < batch * heads; ++bh) {
    const int64_t* rp = index.crow.data() + bh * (blocks + 1);
    const int64_t* cols = index.col.data() + bh * index.width;
    TORCH_CHECK(rp[0] == 0, op, "crow must start at 0 for every head (batch ", bh / heads, ", head ",
                bh % heads, ")");
    TORCH_CHECK(rp[blocks] <= index.width, op, "crow ends at ", rp[blocks], " but col has only ",
                index.width, " entries per head");
    for (int64_t i = 0; i < blocks; ++i) {
      TORCH_CHECK(rp[i + 1] >= rp[i], op, "crow must be non-decreasing (batch ", bh / heads, ", head ",
                  bh % heads, ", query block ", i, ")");
      for (int64_t e = rp[i]; e < rp[i + 1]; ++e) {
        TORCH_CHECK(cols[e] >= 0 && cols[e] < blocks, op, "col entry ", cols[e], " is not a key block in [0, ",
                    blocks, ") (batch ", bh / heads, ", head ", bh % heads, ", query block ", i, ")");
        TORCH_CHECK(e == rp[i] || cols[e] > cols[e - 1], op,
                    "the key blocks of a query block must be sorted and unique (batch ", bh / heads,
                    ", head ", bh % heads, ", query block ", i, ")");
      }
    }
  }
  return index;
}

namespace {

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const at::Tensor& crow,
                                                              const at::Tensor& col, int64_t block_size,
                                                              bool causal, double scale, bool return_lse) {
  const BlockIndex index = check_block_sparse_args(q, k, v, crow, col, block_size, scale);
  const int64_t batch = q.size(0), heads_q = q.size(1), tokens = q.size(2), dim = q.size(3);
  const int64_t heads_kv = k.size(1);
  at::Tensor out = at::empty({batch, heads_q, tokens, dim}, q.options());
  at::Tensor lse = at::empty({return_lse ? batch : 0, heads_q, tokens}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  const at::Tensor k32 = k.to(at::kFloat);
  const at::Tensor v32 = v.to(at::kFloat);
  std::vector<int64_t> zero_base(batch, 0), cu(batch + 1);
  for (int64_t b = 0; b <= batch; ++b) cu[b] = b * tokens;
  Args args = attention::engine_args(q, k32, v32, out, return_lse ? &lse : nullptr, causal, scale);
  args.q_stride_seq = q.stride(0), args.q_stride_head = q.stride(1), args.q_stride_token = q.stride(2);
  args.k_stride_seq = k32.stride(0), args.k_stride_head = k32.stride(1), args.k_stride_token = k32.stride(2);
  args.v_stride_seq = v32.stride(0), args.v_stride_head = v32.stride(1), args.v_stride_token = v32.stride(2);
  args.out_stride_seq = out.stride(0), args.out_stride_head = out.stride(1), args.out_stride_token = out.stride(2);
  args.lse_stride_seq = heads_q * tokens, args.lse_stride_head = tokens, args.lse_stride_token = 1;
  args.q_base = zero_base.data();
  args.k_base = zero_base.data();
  args.cu_seqlens_q = cu.data();
  args.cu_seqlens_k = cu.data();

  const attention::Schedule schedule = attention::block_sparse_schedule(
      index.crow.data(), index.col.data(), index.blocks, index.width, batch, heads_q, heads_kv, tokens, block_size,
      causal, attention::positions_per_item(heads_q / heads_kv));
  attention::run_schedule(args, schedule.items, schedule.cost);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("block_sparse_attention", &block_sparse_attention_cpu); }

}  // namespace lmkernels::sparse
