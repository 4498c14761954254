// flex_select_blocks: FlexPrefill's block selection per (batch, head), host code shared by
// the CPU impl and the CUDA one (which runs it on a host copy of the small score tensors).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace lmkernels::sparse {

// vertical, slash: float32 [B, H, nb] scores per key block and per diagonal-offset block;
// block_attn: float32 [B, H, nb, nb] pooled block attention (rows causal), used for heads
// with query_aware [B, H] set. Keeps, per pattern, the fewest blocks whose cumulative share
// reaches gamma (their count clamped to [min_blocks, max_blocks]; query-aware: to [1, nb^2]),
// always the sink column and the diagonal, within the causal triangle. Returns (crow int64
// [B, H, nb + 1], col int64 [B, H, width] zero-padded, density float32 [B, H]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> flex_select_blocks_host(const at::Tensor& vertical,
                                                                       const at::Tensor& slash,
                                                                       const at::Tensor& block_attn,
                                                                       const at::Tensor& query_aware, double gamma,
                                                                       int64_t min_blocks, int64_t max_blocks);

}  // namespace lmkernels::sparse
