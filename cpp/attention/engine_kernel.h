// The attention engine's work-item kernel, written once over a vector type `V` and compiled
// per ISA (engine_scalar.cpp, engine_avx2.cpp, engine_avx512.cpp). Internal linkage only.
//
// V provides: T, W (lanes), R (rows per GEMM register block), zero, set1, load, store,
// fma(a, b, c) = a*b + c, sub, mul, max (NaN in `a` gives `b`, like maxps), round (to
// nearest even), pow2 (2^n for integral n in [-127, 0]), reduce_max.
//
// Every output element accumulates its products in the same order (k = 0, 1, ...) with one
// fma each on every path, and row sums run in scalar order, so all paths agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "attention/engine.h"
#include "lmkernels/dtype.h"

namespace lmkernels::attention {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// 2^x for x <= 0 (x = -inf gives 0). Degree-6 polynomial on the fraction in [-0.5, 0.5]:
// relative error below 2e-7.
template <class V>
typename V::T exp2_nonpositive(typename V::T x) {
  x = V::max(x, V::set1(-127.0f));
  const typename V::T n = V::round(x);
  const typename V::T f = V::sub(x, n);
  typename V::T p = V::set1(1.5403530393381606e-4f);
  p = V::fma(p, f, V::set1(1.3333558146428443e-3f));
  p = V::fma(p, f, V::set1(9.6181291076284772e-3f));
  p = V::fma(p, f, V::set1(5.5504108664821580e-2f));
  p = V::fma(p, f, V::set1(2.4022650695910071e-1f));
  p = V::fma(p, f, V::set1(6.9314718055994531e-1f));
  p = V::fma(p, f, V::set1(1.0f));
  return V::mul(p, V::pow2(n));
}

// C[M x N] (+)= A[M x K] * B[K x N]; M a multiple of V::R, N of 2 * V::W; row-major.
template <class V>
void gemm(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
          int64_t m, int64_t n, int64_t k, bool accumulate) {
  using T = typename V::T;
  constexpr int R = V::R;
  constexpr int W = V::W;
  for (int64_t i = 0; i < m; i += R) {
    for (int64_t j = 0; j < n; j += 2 * W) {
      T acc[R][2];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        float* row = c + (i + r) * ldc + j;
        acc[r][0] = accumulate ? V::load(row) : V::zero();
        acc[r][1] = accumulate ? V::load(row + W) : V::zero();
      }
      const float* a_block = a + i * lda;
      for (int64_t kk = 0; kk < k; ++kk) {
        const T b0 = V::load(b + kk * ldb + j);
        const T b1 = V::load(b + kk * ldb + j + W);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const T av = V::set1(a_block[r * lda + kk]);
          acc[r][0] = V::fma(av, b0, acc[r][0]);
          acc[r][1] = V::fma(av, b1, acc[r][1]);
        }
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        float* row = c + (i + r) * ldc + j;
        V::store(row, acc[r][0]);
        V::store(row + W, acc[r][1]);
      }
    }
  }
}

template <StorageDtype D>
float load_elem(const void* base, int64_t i) {
  if constexpr (D == StorageDtype::kFloat32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (D == StorageDtype::kBFloat16) {
    return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
  } else {
    return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
  }
}

template <StorageDtype D>
void store_elem(void* base, int64_t i, float value) {
  if constexpr (D == StorageDtype::kFloat32) {
    static_cast<float*>(base)[i] = value;
  } else if constexpr (D == StorageDtype::kBFloat16) {
    static_cast<uint16_t*>(base)[i] = f32_to_bf16(value);
  } else {
    static_cast<uint16_t*>(base)[i] = f32_to_f16(value);
  }
}

// Softmax update of one score row (log2 domain) against running max `m` and sum `l`;
// leaves the probabilities in `s` and returns the factor the row's output must be scaled by.
template <class V>
float online_softmax_row(float* s, int64_t n, float& m, float& l) {
  using T = typename V::T;
  T vmax = V::set1(kNegInf);
  for (int64_t j = 0; j < n; j += V::W) vmax = V::max(V::load(s + j), vmax);
  const float tile_max = V::reduce_max(vmax);
  const float m_new = tile_max > m ? tile_max : m;
  if (m_new == kNegInf) {  // nothing visible yet in this row
    std::memset(s, 0, sizeof(float) * n);
    return 1.0f;
  }
  const T shift = V::set1(m_new);
  for (int64_t j = 0; j < n; j += V::W) V::store(s + j, exp2_nonpositive<V>(V::sub(V::load(s + j), shift)));
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) sum += s[j];
  float alpha_lane[V::W];
  V::store(alpha_lane, exp2_nonpositive<V>(V::set1(m - m_new)));
  const float alpha = alpha_lane[0];
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}

template <class V, StorageDtype D>
void run_item_typed(const Args& a, const WorkItem& item, float* scratch) {
  using T = typename V::T;
  const int64_t group = a.heads_q / a.heads_kv;
  const int64_t dim = a.head_dim;
  const int64_t dim_pad = padded(dim);
  const int64_t positions = item.q_end - item.q_begin;
  const int64_t rows = positions * group;
  const int64_t rows_pad = padded(rows, V::R);
  const int64_t rows_cap = padded(positions_per_item(group) * group);

  float* q_buf = scratch;                        // rows_cap x dim_pad, pre-scaled to log2 units
  float* o_buf = q_buf + rows_cap * dim_pad;     // rows_cap x dim_pad
  float* kt_buf = o_buf + rows_cap * dim_pad;    // dim_pad x kKeyTile (k transposed)
  float* v_buf = kt_buf + dim_pad * kKeyTile;    // kKeyTile x dim_pad
  float* s_buf = v_buf + kKeyTile * dim_pad;     // rows_cap x kKeyTile
  float* m_buf = s_buf + rows_cap * kKeyTile;    // rows_cap
  float* l_buf = m_buf + rows_cap;               // rows_cap
  std::memset(q_buf, 0, sizeof(float) * rows_pad * dim_pad);
  std::memset(o_buf, 0, sizeof(float) * rows_pad * dim_pad);
  std::memset(kt_buf, 0, sizeof(float) * dim_pad * kKeyTile);
  std::memset(v_buf, 0, sizeof(float) * kKeyTile * dim_pad);
  for (int64_t r = 0; r < rows_pad; ++r) {
    m_buf[r] = kNegInf;
    l_buf[r] = 0.0f;
  }

  const int64_t q0 = a.cu_seqlens_q[item.seq];
  const int64_t k0 = a.cu_seqlens_k[item.seq];
  const int64_t len_q = a.cu_seqlens_q[item.seq + 1] - q0;
  const int64_t len_k = a.cu_seqlens_k[item.seq + 1] - k0;
  const int64_t diag = len_k - len_q;  // query i sees keys j <= i + diag when causal
  const float q_scale = a.scale * kLog2e;

  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t head = item.kv_head * group + g;
      const void* src = static_cast<const char*>(a.q) +
                        ((q0 + item.q_begin + p) * a.q_stride_token + head * a.q_stride_head) *
                            (D == StorageDtype::kFloat32 ? 4 : 2);
      float* dst = q_buf + (p * group + g) * dim_pad;
      for (int64_t d = 0; d < dim; ++d) dst[d] = load_elem<D>(src, d) * q_scale;
    }
  }

  const int64_t first_limit = item.q_begin + diag;  // smallest key limit among the rows
  const int64_t last_limit = item.q_end - 1 + diag;
  for (int64_t s = 0; s < item.num_spans; ++s) {
    for (int64_t kb = item.spans[s].begin; kb < item.spans[s].end; kb += kKeyTile) {
      if (a.causal && kb > last_limit) break;
      const int64_t nk = std::min(kKeyTile, item.spans[s].end - kb);
      for (int64_t j = 0; j < nk; ++j) {
        const int64_t token = k0 + kb + j;
        const char* k_src = static_cast<const char*>(a.k) +
                            (token * a.k_stride_token + item.kv_head * a.k_stride_head) *
                                (D == StorageDtype::kFloat32 ? 4 : 2);
        const char* v_src = static_cast<const char*>(a.v) +
                            (token * a.v_stride_token + item.kv_head * a.v_stride_head) *
                                (D == StorageDtype::kFloat32 ? 4 : 2);
        float* v_row = v_buf + j * dim_pad;
        for (int64_t d = 0; d < dim; ++d) {
          kt_buf[d * kKeyTile + j] = load_elem<D>(k_src, d);
          v_row[d] = load_elem<D>(v_src, d);
        }
      }
      if (nk < kKeyTile) {  // a short last tile: clear what the previous tile left
        for (int64_t d = 0; d < dim; ++d) {
          std::memset(kt_buf + d * kKeyTile + nk, 0, sizeof(float) * (kKeyTile - nk));
        }
        std::memset(v_buf + nk * dim_pad, 0, sizeof(float) * (kKeyTile - nk) * dim_pad);
      }

      gemm<V>(q_buf, dim_pad, kt_buf, kKeyTile, s_buf, kKeyTile, rows_pad, kKeyTile, dim_pad, false);

      const bool crosses_diagonal = a.causal && kb + nk - 1 > first_limit;
      if (nk < kKeyTile || crosses_diagonal) {
        for (int64_t r = 0; r < rows_pad; ++r) {
          const int64_t limit = a.causal ? std::min(item.q_begin + r / group + diag, len_k - 1) : len_k - 1;
          float* s_row = s_buf + r * kKeyTile;
          for (int64_t j = 0; j < kKeyTile; ++j) {
            if (j >= nk || kb + j > limit) s_row[j] = kNegInf;
          }
        }
      }
      for (int64_t r = 0; r < rows_pad; ++r) {
        const float alpha = online_softmax_row<V>(s_buf + r * kKeyTile, kKeyTile, m_buf[r], l_buf[r]);
        if (alpha != 1.0f) {
          float* o_row = o_buf + r * dim_pad;
          const T scale = V::set1(alpha);
          for (int64_t d = 0; d < dim_pad; d += V::W) V::store(o_row + d, V::mul(V::load(o_row + d), scale));
        }
      }
      gemm<V>(s_buf, kKeyTile, v_buf, dim_pad, o_buf, dim_pad, rows_pad, dim_pad, kKeyTile, true);
    }
  }

  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = p * group + g;
      const int64_t head = item.kv_head * group + g;
      const int64_t token = q0 + item.q_begin + p;
      const float l = l_buf[r];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      void* dst = static_cast<char*>(a.out) + (token * a.out_stride_token + head * a.out_stride_head) *
                                                  (D == StorageDtype::kFloat32 ? 4 : 2);
      const float* o_row = o_buf + r * dim_pad;
      for (int64_t d = 0; d < dim; ++d) store_elem<D>(dst, d, o_row[d] * inv);
      if (a.lse != nullptr) {
        a.lse[token * a.heads_q + head] = l > 0.0f ? (m_buf[r] + std::log2(l)) * kLn2 : kNegInf;
      }
    }
  }
}

template <class V>
void run_item(const Args& a, const WorkItem& item, float* scratch) {
  switch (a.dtype) {
    case StorageDtype::kFloat32:
      return run_item_typed<V, StorageDtype::kFloat32>(a, item, scratch);
    case StorageDtype::kBFloat16:
      return run_item_typed<V, StorageDtype::kBFloat16>(a, item, scratch);
    case StorageDtype::kFloat16:
      return run_item_typed<V, StorageDtype::kFloat16>(a, item, scratch);
  }
}

}  // namespace
}  // namespace lmkernels::attention
