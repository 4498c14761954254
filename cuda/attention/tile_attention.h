// Host side of the CUDA attention engine (tile_attention.cuh): which calls it takes, and the
// launch of a host schedule (attention/schedule.h) on it.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "attention/schedule.h"

namespace lmkernels::attention {

// Work items for the tiled kernel hold at most 64 query rows (positions x group heads).
inline int64_t tile_positions(int64_t group) { return group >= 64 ? 1 : 64 / group; }

// Element offsets of each sequence (batch entry) in q, k, v, out and lse, the sequence lengths,
// and the token and head strides of each tensor.
struct TileLayout {
  std::vector<int64_t> q_off, k_off, v_off, o_off, lse_off, len_q, len_k;
  int64_t q_tok = 0, q_head = 0, k_tok = 0, k_head = 0, v_tok = 0, v_head = 0, o_tok = 0, o_head = 0;
  int64_t lse_tok = 0, lse_head = 0;
};

// The tiled kernel takes fp16/bf16 with head_dim <= 256 and at most 64 query heads per KV
// head on compute capability 8.0+; other calls keep the exact fp32 warp-per-row kernel.
bool tile_attention_applies(const at::Tensor& q, int64_t group);

// Runs `schedule` (built with tile_positions(group) positions per item) into `out` and, when
// `lse` is not null, the natural-log LSE.
void run_tile_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, float* lse,
                        const Schedule& schedule, const TileLayout& layout, bool causal, double scale);

}  // namespace lmkernels::attention
