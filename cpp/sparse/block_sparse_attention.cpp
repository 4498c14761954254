// block_sparse_attention on CPU: the attention engine driven by a CSR block schedule.
//
// Each (batch, KV head, query block) becomes work items whose key spans are the union of the
// blocks listed for the group's query heads; a span listed by only some heads carries a head
// mask, so K/V tiles are still read once per group (the reference re-reads them per head).
#include "sparse/block_sparse_attention.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "attention/engine.h"
#include "attention/engine_driver.h"

namespace lmkernels::sparse {

using attention::Args;
using attention::KeySpan;
using attention::WorkItem;

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
  const int64_t heads_kv = k.size(1), group = heads_q / heads_kv;
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

  // Per (batch, KV head, query block): merge the group's sorted block lists into spans of
  // consecutive blocks seen by the same heads. Spans and masks are stored by offset first,
  // pointers are taken once the vectors stop growing.
  const uint64_t all_heads = group == 64 ? ~uint64_t{0} : (uint64_t{1} << group) - 1;
  const int64_t step = attention::positions_per_item(group);
  std::vector<KeySpan> spans;
  std::vector<uint64_t> masks;
  std::vector<WorkItem> items;
  std::vector<int64_t> span_start, cost;
  std::vector<char> needs_heads;  // per item: some span is not seen by every head of the group
  std::vector<int64_t> cursor(group);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads_kv; ++h) {
      for (int64_t i = 0; i < index.blocks; ++i) {
        const int64_t first_span = static_cast<int64_t>(spans.size());
        int64_t keys = 0;
        for (int64_t g = 0; g < group; ++g) cursor[g] = index.crow[((b * heads_q) + h * group + g) * (index.blocks + 1) + i];
        while (true) {
          int64_t block = index.blocks;
          for (int64_t g = 0; g < group; ++g) {
            const int64_t bh = b * heads_q + h * group + g;
            if (cursor[g] < index.crow[bh * (index.blocks + 1) + i + 1]) block = std::min(block, index.col[bh * index.width + cursor[g]]);
          }
          if (block == index.blocks) break;
          uint64_t seen = 0;
          for (int64_t g = 0; g < group; ++g) {
            const int64_t bh = b * heads_q + h * group + g;
            if (cursor[g] < index.crow[bh * (index.blocks + 1) + i + 1] && index.col[bh * index.width + cursor[g]] == block) {
              seen |= uint64_t{1} << g;
              ++cursor[g];
            }
          }
          if (causal && block > i) continue;  // entirely above the diagonal
          const int64_t begin = block * block_size, end = std::min(tokens, begin + block_size);
          if (static_cast<int64_t>(spans.size()) > first_span && spans.back().end == begin && masks.back() == seen) {
            spans.back().end = end;
          } else {
            spans.push_back({begin, end});
            masks.push_back(seen);
          }
          keys += end - begin;
        }
        const bool every_head = std::all_of(masks.begin() + first_span, masks.end(), [&](uint64_t m) { return m == all_heads; });
        const int64_t q_end = std::min(tokens, (i + 1) * block_size);
        for (int64_t qb = i * block_size; qb < q_end; qb += step) {
          const int64_t qe = std::min(q_end, qb + step);
          items.push_back({b, h, qb, qe, nullptr, static_cast<int64_t>(spans.size()) - first_span, nullptr});
          span_start.push_back(first_span);
          needs_heads.push_back(!every_head);
          cost.push_back((qe - qb) * group * (keys + attention::kKeyTile));
        }
      }
    }
  }
  for (size_t n = 0; n < items.size(); ++n) {
    items[n].spans = spans.data() + span_start[n];
    items[n].span_heads = needs_heads[n] ? masks.data() + span_start[n] : nullptr;
  }
  attention::run_schedule(args, items, cost);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("block_sparse_attention", &block_sparse_attention_cpu); }

}  // namespace lmkernels::sparse
