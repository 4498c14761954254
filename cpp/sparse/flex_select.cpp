// flex_select_blocks on CPU: cumulative-attention block selection and CSR conversion,
// one (batch, head) per task across threads.
#include "sparse/flex_select.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace lmkernels::sparse {
namespace {

// keep[i] for the top entries (descending, ties to the lower index) whose cumulative share
// of the total first reaches gamma; their count clamped to [lo, hi].
void keep_until(const float* scores, int64_t n, double gamma, int64_t lo, int64_t hi, std::vector<char>& keep,
                std::vector<int64_t>& order) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += scores[i];
  total = std::max(total, 1e-38);
  int64_t count = 0;
  double running = 0.0;
  while (count < n) {
    running += scores[order[count]];
    ++count;
    if (running / total >= gamma) break;
  }
  count = std::clamp(count, lo, hi);
  keep.assign(n, 0);
  for (int64_t i = 0; i < count; ++i) keep[order[i]] = 1;
}

void check_scores(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.dim() == dims, "flex_select_blocks: ", name, " must be ", dims, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "flex_select_blocks: ", name, " must be float32, got ", t.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> flex_select_blocks_host(const at::Tensor& vertical_in,
                                                                       const at::Tensor& slash_in,
                                                                       const at::Tensor& block_attn_in,
                                                                       const at::Tensor& query_aware_in, double gamma,
                                                                       int64_t min_blocks, int64_t max_blocks) {
  check_scores(vertical_in, "vertical", 3);
  check_scores(slash_in, "slash", 3);
  check_scores(block_attn_in, "block_attn", 4);
  TORCH_CHECK(slash_in.sizes() == vertical_in.sizes(), "flex_select_blocks: slash must have vertical's shape ",
              vertical_in.sizes(), ", got ", slash_in.sizes());
  const int64_t batch = vertical_in.size(0), heads = vertical_in.size(1), nb = vertical_in.size(2);
  TORCH_CHECK(nb >= 1, "flex_select_blocks: there must be at least one block");
  TORCH_CHECK(block_attn_in.sizes() == at::IntArrayRef({batch, heads, nb, nb}),
              "flex_select_blocks: block_attn must be [B, H, nb, nb] = [", batch, ", ", heads, ", ", nb, ", ", nb,
              "], got ", block_attn_in.sizes());
  TORCH_CHECK(query_aware_in.scalar_type() == at::kBool && query_aware_in.sizes() == at::IntArrayRef({batch, heads}),
              "flex_select_blocks: query_aware must be a bool [B, H] tensor, got ", query_aware_in.scalar_type(), " ",
              query_aware_in.sizes());
  TORCH_CHECK(gamma > 0.0 && gamma <= 1.0, "flex_select_blocks: gamma must be in (0, 1], got ", gamma);
  TORCH_CHECK(min_blocks >= 1 && max_blocks >= min_blocks, "flex_select_blocks: need 1 <= min_blocks <= max_blocks, got ",
              min_blocks, " and ", max_blocks);
  const at::Tensor vertical = vertical_in.cpu().contiguous(), slash = slash_in.cpu().contiguous();
  const at::Tensor block_attn = block_attn_in.cpu().contiguous(), query_aware = query_aware_in.cpu().contiguous();
  for (const auto* t : {&vertical, &slash, &block_attn}) {
    const float* p = t->data_ptr<float>();
    for (int64_t i = 0; i < t->numel(); ++i) {
      TORCH_CHECK(std::isfinite(p[i]) && p[i] >= 0.0f, "flex_select_blocks: scores must be finite and >= 0");
    }
  }
  const int64_t lo = std::min(min_blocks, nb), hi = std::min(max_blocks, nb);

  std::vector<std::vector<int64_t>> cols(batch * heads);
  at::Tensor crow = at::empty({batch, heads, nb + 1}, at::TensorOptions().dtype(at::kLong));
  at::Tensor density = at::empty({batch, heads}, at::TensorOptions().dtype(at::kFloat));
  int64_t* crow_p = crow.data_ptr<int64_t>();
  float* density_p = density.data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<char> vkeep, skeep, qkeep;
    std::vector<int64_t> order;
    std::vector<float> off_diagonal(nb);
    for (int64_t bh = begin; bh < end; ++bh) {
      const float* v = vertical.data_ptr<float>() + bh * nb;
      // The last query block's own key block is its diagonal, which the slash pattern
      // covers; ranking it as a column too would let the local band alone reach gamma.
      std::copy(v, v + nb, off_diagonal.begin());
      off_diagonal[nb - 1] = 0.0f;
      keep_until(off_diagonal.data(), nb, gamma, lo, hi, vkeep, order);
      keep_until(slash.data_ptr<float>() + bh * nb, nb, gamma, lo, hi, skeep, order);
      vkeep[0] = skeep[0] = 1;
      const bool aware = query_aware.data_ptr<bool>()[bh];
      if (aware) keep_until(block_attn.data_ptr<float>() + bh * nb * nb, nb * nb, gamma, 1, nb * nb, qkeep, order);
      std::vector<int64_t>& col = cols[bh];
      int64_t* row_ptr = crow_p + bh * (nb + 1);
      row_ptr[0] = 0;
      for (int64_t i = 0; i < nb; ++i) {
        for (int64_t c = 0; c <= i; ++c) {
          if (c == 0 || c == i || vkeep[c] || skeep[i - c] || (aware && qkeep[i * nb + c])) col.push_back(c);
        }
        row_ptr[i + 1] = static_cast<int64_t>(col.size());
      }
      density_p[bh] = static_cast<float>(col.size()) / static_cast<float>(nb * (nb + 1) / 2);
    }
  });
  int64_t width = 1;
  for (const auto& c : cols) width = std::max<int64_t>(width, static_cast<int64_t>(c.size()));
  at::Tensor col = at::zeros({batch, heads, width}, at::TensorOptions().dtype(at::kLong));
  int64_t* col_p = col.data_ptr<int64_t>();
  for (int64_t bh = 0; bh < batch * heads; ++bh) std::copy(cols[bh].begin(), cols[bh].end(), col_p + bh * width);
  return {crow, col, density};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> flex_select_blocks_cpu(const at::Tensor& vertical,
                                                                      const at::Tensor& slash,
                                                                      const at::Tensor& block_attn,
                                                                      const at::Tensor& query_aware, double gamma,
                                                                      int64_t min_blocks, int64_t max_blocks) {
  return flex_select_blocks_host(vertical, slash, block_attn, query_aware, gamma, min_blocks, max_blocks);
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("flex_select_blocks", &flex_select_blocks_cpu); }

}  // namespace lmkernels::sparse
