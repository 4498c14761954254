// flex_pattern_scores on CPU. See flex_scores.h.
#include "sparse/flex_scores.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace lmkernels::sparse {
namespace {

// [B, H, N, D] float32 -> [B, H, nb, D]: the mean over each block's real tokens.
at::Tensor block_means(const at::Tensor& x, int64_t block_size, int64_t blocks) {
  const int64_t bh = x.size(0) * x.size(1), n = x.size(2), dim = x.size(3);
  at::Tensor out = at::zeros({x.size(0), x.size(1), blocks, dim}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, bh * blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / blocks, c = item % blocks;
      const int64_t first = c * block_size, last = std::min(n, first + block_size);
      float* row = dst + item * dim;
      for (int64_t t = first; t < last; ++t) {
        const float* in = src + (h * n + t) * dim;
        for (int64_t d = 0; d < dim; ++d) row[d] += in[d];
      }
      const float inv = 1.0f / static_cast<float>(last - first);
      for (int64_t d = 0; d < dim; ++d) row[d] *= inv;
    }
  });
  return out;
}

// Sets x[r][j] = -inf for keys j after row r's position (first + r): the causal mask.
void mask_future(float* x, int64_t rows, int64_t cols, int64_t first) {
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(x + r * cols + std::min(cols, first + r + 1), x + (r + 1) * cols, -std::numeric_limits<float>::infinity());
  }
}

double kl_divergence(const std::vector<double>& p, const std::vector<double>& m) {
  double out = 0.0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] > 0.0) out += p[i] * (std::log(std::max(p[i], 1e-30)) - std::log(std::max(m[i], 1e-30)));
  }
  return out;
}

}  // namespace

void check_pattern_args(const char* op, const at::Tensor& q_in, const at::Tensor& k_in, int64_t block_size,
                        double scale) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4, op, ": q and k must be [B, H, N, D], got ",
              q_in.sizes(), " and ", k_in.sizes());
  TORCH_CHECK(q_in.size(0) == k_in.size(0) && q_in.size(2) == k_in.size(2) && q_in.size(3) == k_in.size(3),
              op, ": q ", q_in.sizes(), " and k ", k_in.sizes(), " must share B, N and D");
  TORCH_CHECK(k_in.size(1) >= 1 && q_in.size(1) % k_in.size(1) == 0,
              op, ": heads_q must be a positive multiple of heads_kv, got ", q_in.size(1), " and ",
              k_in.size(1));
  TORCH_CHECK(at::isFloatingType(q_in.scalar_type()) && q_in.scalar_type() == k_in.scalar_type(),
              op, ": q and k must share a floating dtype, got ", q_in.scalar_type(), " and ",
              k_in.scalar_type());
  TORCH_CHECK(block_size >= 1, op, ": block_size must be >= 1, got ", block_size);
  TORCH_CHECK(q_in.size(2) >= 1, op, ": N must be >= 1");
  TORCH_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flex_pattern_scores_host(const at::Tensor& q_in,
                                                                                    const at::Tensor& k_in,
                                                                                    int64_t block_size, double scale) {
  check_pattern_args("flex_pattern_scores", q_in, k_in, block_size, scale);
  const at::Tensor q = q_in.cpu().to(at::kFloat).contiguous(), k = k_in.cpu().to(at::kFloat).contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), kv_heads = k.size(1), n = q.size(2), dim = q.size(3);
  const int64_t group = heads / kv_heads, blocks = (n + block_size - 1) / block_size;
  const int64_t last = std::min(block_size, n);
  const auto s = static_cast<float>(scale);

  // GEMMs (ATen): the last query block against every key, pooled q against pooled k, and the
  // mean last query against pooled k; per KV group, K never repeated.
  const at::Tensor q_last = q.narrow(2, n - last, last);                                   // [B, Hq, L, D]
  at::Tensor scores = at::matmul(q_last.reshape({batch, kv_heads, group * last, dim}).mul(s),
                                 k.transpose(-1, -2)).contiguous();                       // [B, Hkv, G*L, N]
  const at::Tensor k_pooled = block_means(k, block_size, blocks);                          // [B, Hkv, nb, D]
  const at::Tensor q_pooled = block_means(q, block_size, blocks);                          // [B, Hq, nb, D]
  at::Tensor block_attn = at::matmul(q_pooled.reshape({batch, kv_heads, group * blocks, dim}).mul(s),
                                     k_pooled.transpose(-1, -2)).contiguous();            // [B, Hkv, G*nb, nb]
  const at::Tensor q_mean = q_last.mean(2).reshape({batch, kv_heads, group, dim});
  const at::Tensor estimate_logits = at::matmul(q_mean.mul(s), k_pooled.transpose(-1, -2)).contiguous();  // [B,Hkv,G,nb]

  // Causal masks, then vectorized softmax (ATen) over the keys.
  float* scores_p = scores.data_ptr<float>();
  float* attn_p = block_attn.data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      mask_future(scores_p + bh * last * n, last, n, n - last);
      mask_future(attn_p + bh * blocks * blocks, blocks, blocks, 0);
    }
  });
  scores = at::softmax(scores, -1);
  block_attn = at::softmax(block_attn, -1);
  scores_p = scores.data_ptr<float>();

  at::Tensor vertical = at::zeros({batch, heads, blocks}, q.options());
  at::Tensor slash = at::zeros({batch, heads, blocks}, q.options());
  at::Tensor jsd = at::empty({batch, heads}, q.options());
  const float* estimate_p = estimate_logits.data_ptr<float>();
  float* vertical_p = vertical.data_ptr<float>();
  float* slash_p = slash.data_ptr<float>();
  float* jsd_p = jsd.data_ptr<float>();
  // [B, Hkv, G, ...] and [B, Hq, ...] share the same (batch, head) order.
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> column(n), truth(blocks), estimate(blocks), mid(blocks);
    for (int64_t bh = begin; bh < end; ++bh) {
      std::fill(column.begin(), column.end(), 0.0);
      float* slash_row = slash_p + bh * blocks;
      for (int64_t r = 0; r < last; ++r) {
        const int64_t pos = n - last + r;  // the query's position: it sees keys 0..pos
        const float* row = scores_p + (bh * last + r) * n;
        for (int64_t j = 0; j <= pos; ++j) column[j] += row[j];
        // Diagonal-offset block s holds keys pos - (s + 1) * block_size + 1 .. pos - s * block_size.
        for (int64_t s_block = 0, hi = pos; hi >= 0; ++s_block, hi -= block_size) {
          const int64_t lo = std::max<int64_t>(0, hi - block_size + 1);
          float acc = 0.0f;
          for (int64_t j = lo; j <= hi; ++j) acc += row[j];
          slash_row[s_block] += acc / static_cast<float>(last);
        }
      }
      float* vertical_row = vertical_p + bh * blocks;
      for (int64_t j = 0; j < n; ++j) vertical_row[j / block_size] += static_cast<float>(column[j] / last);
      double total = 0.0;
      for (int64_t c = 0; c < blocks; ++c) total += vertical_row[c];
      double peak = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (int64_t c = 0; c < blocks; ++c) peak = std::max(peak, static_cast<double>(estimate_p[bh * blocks + c]));
      for (int64_t c = 0; c < blocks; ++c) sum += estimate[c] = std::exp(estimate_p[bh * blocks + c] - peak);
      for (int64_t c = 0; c < blocks; ++c) {
        truth[c] = vertical_row[c] / std::max(total, 1e-30);
        estimate[c] /= sum;
        mid[c] = 0.5 * (truth[c] + estimate[c]);
      }
      jsd_p[bh] = static_cast<float>(std::sqrt(std::max(0.5 * kl_divergence(truth, mid) +
                                                             0.5 * kl_divergence(estimate, mid), 0.0)));
    }
  });
  return {vertical, slash, block_attn.view({batch, heads, blocks, blocks}), jsd};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flex_pattern_scores_cpu(const at::Tensor& q,
                                                                                   const at::Tensor& k,
                                                                                   int64_t block_size, double scale) {
  return flex_pattern_scores_host(q, k, block_size, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("flex_pattern_scores", &flex_pattern_scores_cpu); }

}  // namespace lmkernels::sparse
