// kv_deviation: plain-data interface between the dispatcher and its per-ISA kernels.
//
// Summation order is fixed so every path gives the same bits: within a row, element d of
// each head (heads in order) is accumulated by one fma into lane d % 16; the 16 lanes are
// then added as a fixed tree (lane_tree_sum).
#pragma once

#include <cstdint>

#include "lmkernels/common.h"
#include "lmkernels/dtype.h"

namespace lmkernels {

struct KvDeviationArgs {
  const void* a;  // batch x tokens x heads x head_dim, unit stride on head_dim
  const void* b;  // same shape
  StorageDtype dtype;
  int64_t tokens, heads, head_dim;
  int64_t a_stride[3], b_stride[3];  // batch, token, head (elements)
  float* out;                        // batch x tokens, contiguous
};

constexpr int kDeviationLanes = 16;

LMK_INLINE LMK_HOST_DEVICE float lane_tree_sum(float* lanes) {
  for (int step = kDeviationLanes / 2; step >= 1; step /= 2) {
    for (int i = 0; i < step; ++i) lanes[i] = lanes[i] + lanes[i + step];
  }
  return lanes[0];
}

void kv_deviation_rows_scalar(const KvDeviationArgs& args, int64_t begin, int64_t end);
void kv_deviation_rows_avx2(const KvDeviationArgs& args, int64_t begin, int64_t end);
void kv_deviation_rows_avx512(const KvDeviationArgs& args, int64_t begin, int64_t end);

}  // namespace lmkernels
