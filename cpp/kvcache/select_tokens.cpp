// select_tokens on CPU: per row, the k highest scores (ties: lower index first), returned as
// ascending token indices. nth_element then a sort of k: O(n + k log k) per row.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kvcache/kv_checks.h"

namespace lmkernels {

int64_t check_select_tokens_args(const at::Tensor& scores, double ratio) {
  TORCH_CHECK(scores.dim() == 2, "select_tokens: scores must be [batch, tokens], got ", scores.sizes());
  TORCH_CHECK(scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kBFloat16 ||
                  scores.scalar_type() == at::kHalf,
              "select_tokens: scores must be float32, bfloat16 or float16, got ", scores.scalar_type());
  TORCH_CHECK(std::isfinite(ratio) && ratio > 0.0 && ratio <= 1.0, "select_tokens: ratio must be in (0, 1], got ",
              ratio);
  const int64_t tokens = scores.size(1);
  if (tokens == 0) return 0;
  return std::max<int64_t>(static_cast<int64_t>(std::floor(ratio * static_cast<double>(tokens))), 1);
}

namespace {

at::Tensor select_tokens_cpu(const at::Tensor& scores, double ratio) {
  const int64_t k = check_select_tokens_args(scores, ratio);
  const at::Tensor s = scores.to(at::kFloat).contiguous();
  const int64_t batch = s.size(0), tokens = s.size(1);
  const float* data = s.data_ptr<float>();
  for (int64_t i = 0; i < s.numel(); ++i) {
    TORCH_CHECK(!std::isnan(data[i]), "select_tokens: scores has a NaN at [", i / tokens, ", ", i % tokens,
                "]; a NaN has no rank");
  }
  at::Tensor out = at::empty({batch, k}, scores.options().dtype(at::kLong));
  int64_t* result = out.data_ptr<int64_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order(tokens);
    for (int64_t row = begin; row < end; ++row) {
      const float* r = data + row * tokens;
      std::iota(order.begin(), order.end(), int64_t{0});
      // Higher score first; equal scores: lower index first (a strict weak order without NaN).
      auto before = [r](int64_t a, int64_t b) { return r[a] > r[b] || (r[a] == r[b] && a < b); };
      if (k < tokens) std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
      std::sort(order.begin(), order.begin() + k);
      std::copy(order.begin(), order.begin() + k, result + row * k);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("select_tokens", &select_tokens_cpu); }

}  // namespace lmkernels
