// flex_pattern_scores as ATen tensor ops on the inputs' device (the CUDA impl; see
// flex_scores.h). Nothing leaves the device: K is never repeated per query head (GEMMs per KV
// group), the slash sums come from a prefix sum over each scored row gathered at block edges
// instead of a loop over diagonals.
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>

#include "sparse/flex_scores.h"

namespace lmkernels::sparse {
namespace {

// Sums over blocks of `block_size` along dim -2 of x [B, H, n, C]: [B, H, blocks, C].
at::Tensor block_sums(const at::Tensor& x, int64_t block_size, int64_t blocks) {
  const int64_t n = x.size(-2);
  const at::Tensor padded = at::constant_pad_nd(x, {0, 0, 0, blocks * block_size - n});
  return padded.view({x.size(0), x.size(1), blocks, block_size, x.size(-1)}).sum(3);
}

// [B, H, n, D] -> [B, H, blocks, D]: the mean over each block's real tokens.
at::Tensor block_means(const at::Tensor& x, int64_t block_size, int64_t blocks) {
  const at::Tensor starts = at::arange(blocks, x.options()).mul(static_cast<double>(block_size));
  const at::Tensor counts = starts.neg().add(static_cast<double>(x.size(2))).clamp_max(static_cast<double>(block_size));
  return block_sums(x, block_size, blocks).div(counts.unsqueeze(-1));
}

at::Tensor kl_divergence(const at::Tensor& p, const at::Tensor& m) {
  const at::Tensor terms = p.mul(p.clamp_min(1e-30).log().sub(m.clamp_min(1e-30).log()));
  return at::where(p.gt(0), terms, at::zeros({}, p.options())).sum(-1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flex_pattern_scores_tensor_ops(const char* op,
                                                                                          const at::Tensor& q_in,
                                                                                          const at::Tensor& k_in,
                                                                                          int64_t block_size,
                                                                                          double scale) {
  check_pattern_args(op, q_in, k_in, block_size, scale);
  const at::Tensor q = q_in.to(at::kFloat), k = k_in.to(at::kFloat);
  const int64_t batch = q.size(0), heads = q.size(1), kv_heads = k.size(1), n = q.size(2), dim = q.size(3);
  const int64_t group = heads / kv_heads, blocks = (n + block_size - 1) / block_size;
  const int64_t last = std::min(block_size, n);
  const auto ints = q.options().dtype(at::kLong);
  const double inf = std::numeric_limits<double>::infinity();

  // The last query block against every key, causal: probs [B, Hq, L, n].
  const at::Tensor q_last = q.narrow(2, n - last, last);
  const at::Tensor scores = at::matmul(q_last.reshape({batch, kv_heads, group * last, dim}).mul(scale),
                                       k.transpose(-1, -2)).view({batch, heads, last, n});
  const at::Tensor keys = at::arange(n, ints);
  const at::Tensor query_pos = at::arange(n - last, n, ints);
  const at::Tensor probs = at::softmax(scores.masked_fill(keys.unsqueeze(0).gt(query_pos.unsqueeze(1)), -inf), -1);

  // Vertical: each key block's share of the rows' attention, averaged over the rows.
  const at::Tensor column = probs.sum(2).div(static_cast<double>(last));  // [B, Hq, n]
  const at::Tensor vertical = block_sums(column.unsqueeze(-1), block_size, blocks).squeeze(-1);

  // Slash: diagonal-offset block s of the row at position p holds keys (p - (s+1) bs, p - s bs];
  // prefix[j] is the row's mass on keys < j, so the block's mass is a difference of two entries.
  const at::Tensor prefix = at::constant_pad_nd(probs.cumsum(-1), {1, 0});  // [B, Hq, L, n + 1]
  const at::Tensor high = query_pos.unsqueeze(1).sub(at::arange(blocks, ints).mul(block_size).unsqueeze(0));  // [L, nb]
  const at::Tensor low = high.sub(block_size - 1).clamp_min(0);
  const at::Tensor index_shape = high.expand({batch, heads, last, blocks});
  const at::Tensor upper = prefix.gather(-1, high.clamp_min(-1).add(1).expand_as(index_shape));
  const at::Tensor lower = prefix.gather(-1, low.expand_as(index_shape));
  const at::Tensor slash = at::where(high.ge(0), upper.sub(lower), at::zeros({}, probs.options()))
                               .sum(2)
                               .div(static_cast<double>(last));

  // Pooled queries against pooled keys, causal over blocks.
  const at::Tensor k_pooled = block_means(k, block_size, blocks);
  const at::Tensor q_pooled = block_means(q, block_size, blocks);
  const at::Tensor block_ids = at::arange(blocks, ints);
  const at::Tensor block_attn = at::softmax(
      at::matmul(q_pooled.reshape({batch, kv_heads, group * blocks, dim}).mul(scale), k_pooled.transpose(-1, -2))
          .view({batch, heads, blocks, blocks})
          .masked_fill(block_ids.unsqueeze(0).gt(block_ids.unsqueeze(1)), -inf),
      -1);

  // sqrt-JSD between the pooled vertical distribution and the mean last query's estimate.
  const at::Tensor estimate_logits =
      at::matmul(q_last.mean(2).reshape({batch, kv_heads, group, dim}).mul(scale), k_pooled.transpose(-1, -2));
  const at::Tensor estimate = at::softmax(estimate_logits.view({batch, heads, blocks}).to(at::kDouble), -1);
  const at::Tensor vertical64 = vertical.to(at::kDouble);
  const at::Tensor truth = vertical64.div(vertical64.sum(-1, true).clamp_min(1e-30));
  const at::Tensor mid = truth.add(estimate).mul(0.5);
  const at::Tensor jsd =
      kl_divergence(truth, mid).add(kl_divergence(estimate, mid)).mul(0.5).clamp_min(0).sqrt().to(at::kFloat);
  return {vertical.contiguous(), slash.contiguous(), block_attn.contiguous(), jsd};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tensor_ops_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                          int64_t block_size, double scale) {
  return flex_pattern_scores_tensor_ops("_flex_pattern_scores_tensor_ops", q, k, block_size, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("_flex_pattern_scores_tensor_ops", &tensor_ops_cpu); }

}  // namespace lmkernels::sparse
