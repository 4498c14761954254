// The attention engine's work-item kernel, written once over a vector type `V` and compiled
// per ISA (engine_scalar.cpp, engine_avx2.cpp, engine_avx512.cpp). Internal linkage only.
//
// V provides: T, W (lanes), R (rows per GEMM register block), zero, set1, load, store,
// fma(a, b, c) = a*b + c, sub, mul, max (NaN in `a` gives `b`, like maxps), round (to
// nearest even), pow2 (2^n for integral n in [-127, 0]), add.
//
// Every output element accumulates its products in the same order (k = 0, 1, ...) with one
// fma each on every path, and row sums run in scalar order, so all paths agree bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "attention/engine.h"
#include "lmkernels/dtype.h"
#include "lmkernels/storage.h"

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

// C[M x N] (+)= A[M x K] * B[K x N], A[i][k] at a[i * a_row + k * a_col]; B, C row-major.
// M a multiple of V::R, N of 2 * V::W.
template <class V>
void gemm(const float* a, int64_t a_row, int64_t a_col, const float* b, int64_t ldb, float* c,
          int64_t ldc, int64_t m, int64_t n, int64_t k, bool accumulate) {
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
      const float* a_block = a + i * a_row;
      for (int64_t kk = 0; kk < k; ++kk) {
        const T b0 = V::load(b + kk * ldb + j);
        const T b1 = V::load(b + kk * ldb + j + W);
        const float* a_col_k = a_block + kk * a_col;
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const T av = V::set1(a_col_k[r * a_row]);
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

// Online softmax over a tile of transposed scores st[j * ld + r] (log2 units), keys j < nk,
// query rows r < rows (a multiple of V::W), vectorized across rows. Leaves probabilities in
// st, updates the running max `m` and sum `l`, and writes each row's output rescale to `alpha`.
template <class V>
void online_softmax_columns(float* st, int64_t ld, int64_t nk, int64_t rows, float* m, float* l, float* alpha) {
  using T = typename V::T;
  // A row that has seen no key keeps max -inf; shifting it by -FLT_MAX instead of -inf
  // keeps its probabilities and rescale at 0 instead of NaN.
  const T lowest = V::set1(-std::numeric_limits<float>::max());
  for (int64_t c = 0; c < rows; c += V::W) {
    T tile_max = V::set1(kNegInf);
    for (int64_t j = 0; j < nk; ++j) tile_max = V::max(V::load(st + j * ld + c), tile_max);
    const T m_old = V::load(m + c);
    const T m_new = V::max(tile_max, m_old);
    const T shift = V::max(m_new, lowest);
    V::store(alpha + c, exp2_nonpositive<V>(V::sub(m_old, shift)));
    T sum = V::zero();
    for (int64_t j = 0; j < nk; ++j) {
      const T p = exp2_nonpositive<V>(V::sub(V::load(st + j * ld + c), shift));
      V::store(st + j * ld + c, p);
      sum = V::add(sum, p);
    }
    V::store(l + c, V::fma(V::load(l + c), V::load(alpha + c), sum));
    V::store(m + c, m_new);
  }
}

template <class V, StorageDtype D>
void run_item_typed(const Args& a, const WorkItem& item, float* scratch) {
  using T = typename V::T;
  const int64_t group = a.heads_q / a.heads_kv;
  const int64_t dim = a.head_dim;
  const int64_t dim_pad = padded(dim);
  const int64_t positions = item.q_end - item.q_begin;
  const int64_t rows = positions * group;
  const int64_t rows_pad = padded(rows);
  const int64_t rows_cap = padded(positions_per_item(group) * group);
  constexpr int64_t elem = D == StorageDtype::kFloat32 ? 4 : 2;

  float* qt_buf = scratch;                       // dim_pad x rows_pad, pre-scaled to log2 units
  float* o_buf = qt_buf + rows_cap * dim_pad;    // rows_pad x dim_pad
  float* k_buf = o_buf + rows_cap * dim_pad;     // kKeyTile x dim_pad, for tiles not read in place
  float* v_buf = k_buf + kKeyTile * dim_pad;     // kKeyTile x dim_pad
  float* st_buf = v_buf + kKeyTile * dim_pad;    // kKeyTile x rows_pad: scores, then probabilities
  float* m_buf = st_buf + kKeyTile * rows_cap;   // rows_pad each:
  float* l_buf = m_buf + rows_cap;
  float* alpha_buf = l_buf + rows_cap;
  float* limit_buf = alpha_buf + rows_cap;       // last visible key of each row (as float)
  std::memset(qt_buf, 0, sizeof(float) * rows_pad * dim_pad);
  std::memset(o_buf, 0, sizeof(float) * rows_pad * dim_pad);
  std::memset(k_buf, 0, sizeof(float) * kKeyTile * dim_pad);
  std::memset(v_buf, 0, sizeof(float) * kKeyTile * dim_pad);

  const int64_t q0 = a.q_base[item.seq];
  const int64_t k0 = a.k_base[item.seq];
  const int64_t len_q = a.cu_seqlens_q[item.seq + 1] - a.cu_seqlens_q[item.seq];
  const int64_t len_k = a.cu_seqlens_k[item.seq + 1] - a.cu_seqlens_k[item.seq];
  const int64_t diag = len_k - len_q;  // query i sees keys j <= i + diag when causal
  const float q_scale = a.scale * kLog2e;

  // Last key each row sees; padding rows take the last real row's.
  auto key_limit = [&](int64_t i) -> int64_t {
    i = std::min(i, item.q_end - 1);
    return a.q_pos != nullptr ? a.q_pos[q0 + i] : i + diag;
  };
  for (int64_t r = 0; r < rows_pad; ++r) {
    m_buf[r] = kNegInf;
    l_buf[r] = 0.0f;
    limit_buf[r] = static_cast<float>(a.causal ? key_limit(item.q_begin + r / group) : len_k - 1);
  }
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t head = item.kv_head * group + g;
      const char* src = static_cast<const char*>(a.q) + (item.seq * a.q_stride_seq +
                                                          (q0 + item.q_begin + p) * a.q_stride_token +
                                                          head * a.q_stride_head) * elem;
      const int64_t r = p * group + g;
      for (int64_t d = 0; d < dim; ++d) qt_buf[d * rows_pad + r] = load_elem<D>(src, d) * q_scale;
    }
  }

  // Full tiles are read in place when a padded row would not run into the next head.
  const bool in_place = dim == dim_pad;
  const int64_t first_limit = key_limit(item.q_begin);  // smallest key limit among the rows
  const int64_t last_limit = key_limit(item.q_end - 1);
  for (int64_t s = 0; s < item.num_spans; ++s) {
    for (int64_t kb = item.spans[s].begin; kb < item.spans[s].end; kb += kKeyTile) {
      if (a.causal && kb > last_limit) break;
      const int64_t nk = std::min(kKeyTile, item.spans[s].end - kb);
      const float* k_tile = a.k + item.seq * a.k_stride_seq + (k0 + kb) * a.k_stride_token +
                            item.kv_head * a.k_stride_head;
      const float* v_tile = a.v + item.seq * a.v_stride_seq + (k0 + kb) * a.v_stride_token +
                            item.kv_head * a.v_stride_head;
      int64_t k_row = a.k_stride_token;
      int64_t v_row = a.v_stride_token;
      if (!in_place || nk < kKeyTile) {
        for (int64_t j = 0; j < kKeyTile; ++j) {
          float* kd = k_buf + j * dim_pad;
          float* vd = v_buf + j * dim_pad;
          if (j < nk) {
            std::memcpy(kd, k_tile + j * a.k_stride_token, sizeof(float) * dim);
            std::memcpy(vd, v_tile + j * a.v_stride_token, sizeof(float) * dim);
          } else {
            std::memset(kd, 0, sizeof(float) * dim);
            std::memset(vd, 0, sizeof(float) * dim);
          }
        }
        k_tile = k_buf;
        v_tile = v_buf;
        k_row = v_row = dim_pad;
      }

      // Causal: rows [0, r0) see none of these keys (limits grow with the row), so the tile
      // skips them: a short sequence's item would otherwise spend up to half its work on
      // fully masked row blocks. r0 stays a multiple of kPad for the GEMMs' column blocks.
      int64_t r0 = 0;
      if (a.causal && kb > first_limit) {
        while (r0 < rows_pad && limit_buf[r0] < static_cast<float>(kb)) ++r0;
        r0 = r0 / kPad * kPad;
      }
      const int64_t live = rows_pad - r0;
      // scores^T [keys x rows] = K [keys x dim] . Q^T [dim x rows]
      gemm<V>(k_tile, k_row, 1, qt_buf + r0, rows_pad, st_buf + r0, rows_pad, padded(nk, V::R), live, dim, false);
      if (a.causal && kb + nk - 1 > first_limit) {
        for (int64_t j = 0; j < nk; ++j) {
          const float key = static_cast<float>(kb + j);
          float* st_row = st_buf + j * rows_pad;
          for (int64_t r = r0; r < rows_pad; ++r) {
            if (key > limit_buf[r]) st_row[r] = kNegInf;
          }
        }
      }
      if (item.span_heads != nullptr) {  // query heads of the group that do not list this span
        const uint64_t heads = item.span_heads[s];
        for (int64_t r = r0; r < rows; ++r) {
          if ((heads >> (r % group)) & 1u) continue;
          for (int64_t j = 0; j < nk; ++j) st_buf[j * rows_pad + r] = kNegInf;
        }
      }
      online_softmax_columns<V>(st_buf + r0, rows_pad, nk, live, m_buf + r0, l_buf + r0, alpha_buf + r0);
      for (int64_t r = r0; r < rows_pad; ++r) {
        if (alpha_buf[r] != 1.0f) {
          float* o_row = o_buf + r * dim_pad;
          const T scale = V::set1(alpha_buf[r]);
          for (int64_t d = 0; d < dim_pad; d += V::W) V::store(o_row + d, V::mul(V::load(o_row + d), scale));
        }
      }
      // out [rows x dim] += P [rows x keys] . V [keys x dim], P read from scores^T
      gemm<V>(st_buf + r0, 1, rows_pad, v_tile, v_row, o_buf + r0 * dim_pad, dim_pad, live, dim_pad, nk, true);
    }
  }

  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = p * group + g;
      const int64_t head = item.kv_head * group + g;
      const int64_t token = q0 + item.q_begin + p;
      const float l = l_buf[r];
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      char* dst = static_cast<char*>(a.out) + (item.seq * a.out_stride_seq + token * a.out_stride_token +
                                               head * a.out_stride_head) * elem;
      const float* o_row = o_buf + r * dim_pad;
      for (int64_t d = 0; d < dim; ++d) store_elem<D>(dst, d, o_row[d] * inv);
      if (a.lse != nullptr) {
        a.lse[item.seq * a.lse_stride_seq + token * a.lse_stride_token + head * a.lse_stride_head] =
            l > 0.0f ? (m_buf[r] + std::log2(l)) * kLn2 : kNegInf;
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
