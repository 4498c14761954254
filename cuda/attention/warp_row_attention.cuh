// One warp computes softmax attention for one query row: lanes split head_dim, scores are warp
// sums, online softmax in fp32 (exp2, scale folded into q). Shared by the correctness-first
// CUDA kernels of varlen_attention and block_sparse_attention, which differ only in which
// keys they visit.
#pragma once

#include <cmath>
#include <cstdint>

#include "lmkernels/dtype.h"
#include "lmkernels/storage.h"

namespace lmkernels::attention {

constexpr int kWarp = 32;
constexpr int kMaxPerLane = 16;  // head_dim <= 512

template <StorageDtype D>
constexpr int64_t elem_bytes() { return D == StorageDtype::kFloat32 ? 4 : 2; }

// Token and head strides of the packed layout: q, out [tokens, H, D] and k, v [tokens, Hkv, D].
struct PackedStrides {
  int64_t q_token, q_head, k_token, k_head, v_token, v_head, o_token, o_head;
};

template <class Tensor>
PackedStrides packed_strides(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out) {
  return {q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1)};
}

template <StorageDtype D>
struct WarpRowAttention {
  float q[kMaxPerLane], acc[kMaxPerLane];
  float m = -INFINITY, l = 0.0f;
  int lane;
  int64_t dim;

  __device__ WarpRowAttention(const void* q_row, int64_t head_dim, float scale_log2)
      : lane(threadIdx.x % kWarp), dim(head_dim) {
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) {
      const int64_t d = lane + t * kWarp;
      q[t] = d < dim ? load_elem<D>(q_row, d) * scale_log2 : 0.0f;
      acc[t] = 0.0f;
    }
  }

  __device__ void visit(const void* k_row, const void* v_row) {
    float partial = 0.0f;
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) {
      const int64_t d = lane + t * kWarp;
      if (d < dim) partial = fmaf(q[t], load_elem<D>(k_row, d), partial);
    }
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) partial += __shfl_xor_sync(0xffffffffu, partial, offset);
    const float m_new = fmaxf(m, partial);
    const float alpha = exp2f(m - m_new);
    const float p = exp2f(partial - m_new);
    l = l * alpha + p;
    m = m_new;
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) {
      const int64_t d = lane + t * kWarp;
      if (d < dim) acc[t] = fmaf(p, load_elem<D>(v_row, d), acc[t] * alpha);
    }
  }

  // Rows that saw no key write 0 and LSE -inf.
  __device__ void finish(void* out_row, float* lse) const {
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
    for (int t = 0; t < kMaxPerLane; ++t) {
      const int64_t d = lane + t * kWarp;
      if (d < dim) store_elem<D>(out_row, d, acc[t] * inv);
    }
    if (lse != nullptr && lane == 0) *lse = l > 0.0f ? (m + log2f(l)) * 0.6931471805599453f : -INFINITY;
  }
};

}  // namespace lmkernels::attention
