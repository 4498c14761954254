// spliced_attention on CPU: queries at given positions of one sequence, each attending to
// every key up to its own position. Chunk reuse runs only some tokens of a prompt through the
// model (the rest spliced in from stored KV); this is their causal attention, on the engine.
#include "attention/spliced_attention.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "attention/engine.h"
#include "attention/engine_driver.h"
#include "attention/varlen_attention.h"

namespace lmkernels::attention {

std::vector<int64_t> check_spliced_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const at::Tensor& q_positions, double scale) {
  check_attention_tensors("spliced_attention", q, k, v, scale);
  TORCH_CHECK(q_positions.dim() == 1 && q_positions.numel() == q.size(0),
              "spliced_attention: q_positions must be a 1-D tensor with one position per query (",
              q.size(0), "), got shape ", q_positions.sizes());
  TORCH_CHECK(!at::isFloatingType(q_positions.scalar_type()) && q_positions.scalar_type() != at::kBool,
              "spliced_attention: q_positions must hold integers, got ", q_positions.scalar_type());
  const at::Tensor host = q_positions.to(at::kCPU).to(at::kLong).contiguous();
  std::vector<int64_t> pos(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
  for (size_t i = 0; i < pos.size(); ++i) {
    TORCH_CHECK(pos[i] >= 0 && pos[i] < k.size(0), "spliced_attention: q_positions[", i, "] = ", pos[i],
                " is outside the ", k.size(0), " keys");
    TORCH_CHECK(i == 0 || pos[i] >= pos[i - 1], "spliced_attention: q_positions must be non-decreasing, but entry ",
                i, " (", pos[i], ") < entry ", i - 1, " (", pos[i - 1], ")");
  }
  return pos;
}

namespace {

at::Tensor spliced_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& q_positions, double scale) {
  std::vector<int64_t> pos = check_spliced_args(q, k, v, q_positions, scale);
  const int64_t total_q = q.size(0), heads_q = q.size(1), heads_kv = k.size(1), dim = q.size(2);
  at::Tensor out = at::empty({total_q, heads_q, dim}, q.options());
  if (total_q == 0) return out;
  const at::Tensor k32 = k.to(at::kFloat);
  const at::Tensor v32 = v.to(at::kFloat);
  Args args = packed_engine_args(q, k32, v32, out, nullptr, /*causal=*/true, scale);
  const int64_t zero = 0;
  const int64_t cu_q[2] = {0, total_q}, cu_k[2] = {0, k.size(0)};
  args.q_base = &zero;
  args.k_base = &zero;
  args.cu_seqlens_q = cu_q;
  args.cu_seqlens_k = cu_k;
  args.q_pos = pos.data();

  // One key span per item, up to the last key its latest query sees.
  const int64_t step = positions_per_item(heads_q / heads_kv);
  std::vector<WorkItem> items;
  std::vector<KeySpan> spans;
  std::vector<int64_t> cost;
  for (int64_t qb = 0; qb < total_q; qb += step) {
    const int64_t qe = std::min(total_q, qb + step);
    const int64_t key_end = pos[qe - 1] + 1;
    for (int64_t h = 0; h < heads_kv; ++h) {
      items.push_back({0, h, qb, qe, nullptr, 1, nullptr});
      spans.push_back({0, key_end});
      cost.push_back((qe - qb) * (key_end + kKeyTile));
    }
  }
  for (size_t i = 0; i < items.size(); ++i) items[i].spans = &spans[i];
  run_schedule(args, items, cost);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("spliced_attention", &spliced_attention_cpu); }

}  // namespace lmkernels::attention
