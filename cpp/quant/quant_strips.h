// The strip path of quant_linear, for batches, shared by its AMX and AVX-512 VNNI products.
// Per strip of 16 output rows:
//   1. each row's codes become u8 codes times their unit's scale (at most 15 * 15), 64 k per
//      tile row, by the pshufb tables of the VNNI row path: one shuffle per two units, no
//      dequantization to floats; the 4-bit groups' units then get 4 * scale * high code added;
//   2. per super-block b, the strip's 16 x 256 codes times the int8 activations' tiles give
//      ISUM_b[n][m] exactly in int32 (the `Product`), combined in fp32 as
//      acc[n][m] += d_b[n] * (xscale_b[m] * ISUM_b[n][m]);
//   3. the min term: acc[n][m] -= sum_g (dmin * min code)[n][g] * group_sums[g][m], with the
//      activations' scaled group sums prepared once per call.
// The weight is read and unpacked once per call whatever the batch; the products are int8
// GEMM micro-kernels on data that stays in L1/L2.
//
// A Product is a callable
//   product(strip, x_tiles, super_blocks, d, xscale_t, x_stride, c, acc)
// that sets acc[16][16] (output row, activation row of the tile) to step 2's sum over all
// super-blocks, calling combine_block for each block in order (c: 2 x 256 int32 of scratch).
// Included by AVX-512 VNNI translation units only.
#pragma once

#include <algorithm>
#include <cstring>

#include "quant/quant_linear_avx512_parts.h"

namespace lmkernels {
namespace {

constexpr int64_t kStripTileBytes = 1024;  // 16 rows x 64 bytes

// dmin_b * min code of every group of a row (the min term's weights), and d_b per super-block.
inline void strip_row_scales(const QuantShape& s, const uint8_t* packed, const uint16_t* halves, float* min_weights,
                             float* d) {
  for (int64_t b = 0; b < s.super_blocks; ++b) d[b] = _cvtsh_ss(halves[2 * b]);
  int64_t g = 0;
  if (s.units_per_group == 1) {  // a super-block's 8 groups in one 8-lane step
    for (; g + kQuantSuperUnits <= s.groups; g += kQuantSuperUnits) {
      const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + g)));
      const __m256 dmin = _mm256_set1_ps(_cvtsh_ss(halves[2 * (g / kQuantSuperUnits) + 1]));
      _mm256_storeu_ps(min_weights + g, _mm256_mul_ps(dmin, _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4))));
    }
  }
  for (; g < s.groups; ++g) {
    min_weights[g] = _cvtsh_ss(halves[2 * super_block_of_group(g, s.units_per_group) + 1]) *
                     static_cast<float>(min_code(packed[g]));
  }
}

// Row n's scaled codes into the strip, unit u at dst + u / 2 * 1024 + u % 2 * 32 (dst: the row's
// 64 bytes in the strip's first tile); chunks past the row's quads are zeroed.
template <bool kDirect>
void strip_row_codes(const QuantStripArgs& a, int64_t n, bool high_ok, uint8_t* dst) {
  const QuantShape& s = a.base.shape;
  const UnitScales unit_scales{a.base.scales + n * s.groups, __builtin_ctzll(static_cast<uint64_t>(s.units_per_group))};
  auto scale = [&](int64_t u) { return u < s.units ? unit_scale<kDirect>(unit_scales, u) : 0; };
  const uint8_t* lo = a.base.codes_lo + n * s.lo_stride;
  const __m512i nibble = _mm512_set1_epi8(15);
  const int64_t quads = (s.units + kQuantQuadUnits - 1) / kQuantQuadUnits;
  for (int64_t q = 0; q < quads; ++q) {
    const int64_t u = q * kQuantQuadUnits;
    const __m512i quad = _mm512_broadcast_i64x4(load_quad(lo + q * kQuantQuadBytes));
    _mm512_store_si512(dst + 2 * q * kStripTileBytes,
                       _mm512_shuffle_epi8(pair_tables(scale(u), scale(u + 1)), _mm512_and_si512(quad, nibble)));
    _mm512_store_si512(dst + (2 * q + 1) * kStripTileBytes,
                       _mm512_shuffle_epi8(pair_tables(scale(u + 2), scale(u + 3)),
                                           _mm512_and_si512(_mm512_srli_epi16(quad, 4), nibble)));
  }
  for (int64_t chunk = 2 * quads; chunk < s.super_blocks * 4; ++chunk) {
    _mm512_store_si512(dst + chunk * kStripTileBytes, _mm512_setzero_si512());
  }
  if (!high_ok) return;
  const int16_t* hi_groups = a.base.hi_groups + n * s.num_hi;
  const __m256i low_nibble = _mm256_set1_epi8(15);
  for (int64_t j = 0; j < s.num_hi; ++j) {
    for (int64_t k = 0; k < s.units_per_group; ++k) {
      const int64_t u = hi_groups[j] * s.units_per_group + k, i = n * s.hi_units + j * s.units_per_group + k;
      const __m256i high = load_quad(a.base.codes_hi + i / kQuantQuadUnits * kQuantQuadBytes);
      const int slot = static_cast<int>(i % kQuantQuadUnits);
      const __m256i nibbles = _mm256_and_si256(slot < 2 ? high : _mm256_srli_epi16(high, 4), low_nibble);
      // 4 * scale * code: at most 180 per byte, no carry from the 16-bit shift; plus the low
      // part at most 225.
      const __m256i scaled = _mm256_slli_epi16(scaled_codes(nibbles, slot & 1, static_cast<int16_t>(scale(u))), 2);
      auto* p = reinterpret_cast<__m256i*>(dst + u / 2 * kStripTileBytes + u % 2 * kQuantUnit);
      _mm256_store_si256(p, _mm256_add_epi8(_mm256_load_si256(p), scaled));
    }
  }
}

// acc[r][j] += d_b[r] * (xscale_b[j] * float(ISUM[r][j])) for the strip's 16 rows.
inline void combine_block(const int32_t* isum, const float* d, int64_t d_stride, const float* xscale, float* acc) {
  const __m512 xs = _mm512_loadu_ps(xscale);
  for (int r = 0; r < kQuantStripRows; ++r) {
    const __m512 t = _mm512_mul_ps(xs, _mm512_cvtepi32_ps(_mm512_load_si512(isum + r * 16)));
    _mm512_store_ps(acc + r * 16, _mm512_fmadd_ps(t, _mm512_set1_ps(d[r * d_stride]), _mm512_load_ps(acc + r * 16)));
  }
}

// acc[r][j] -= sum_g min_weights[r][g] * group_sums[g][j] for the strip's 16 rows (in registers).
inline void subtract_min_term(const float* min_weights, int64_t groups, const float* group_sums, int64_t gs_stride,
                              float* acc) {
  __m512 rows[kQuantStripRows];
  for (int r = 0; r < kQuantStripRows; ++r) rows[r] = _mm512_load_ps(acc + r * 16);
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 sums = _mm512_loadu_ps(group_sums + g * gs_stride);
    for (int r = 0; r < kQuantStripRows; ++r) {
      rows[r] = _mm512_fnmadd_ps(_mm512_set1_ps(min_weights[r * groups + g]), sums, rows[r]);
    }
  }
  for (int r = 0; r < kQuantStripRows; ++r) _mm512_store_ps(acc + r * 16, rows[r]);
}

template <class Product>
bool strip_rows(const QuantStripArgs& a, int64_t begin, int64_t end, void* scratch, Product product) {
  const QuantShape& s = a.base.shape;
  const int64_t S = s.super_blocks, kp = S * kQuantSuperBlock;
  const int64_t m_tiles = (a.base.rows + kQuantStripCols - 1) / kQuantStripCols;
  auto* strip = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) / 64 * 64);
  auto* c = reinterpret_cast<int32_t*>(strip + kQuantStripRows * kp);
  float* acc = reinterpret_cast<float*>(c + 2 * 256);
  float* d = acc + kQuantStripRows * 16;            // [16][S]
  float* min_weights = d + kQuantStripRows * S;     // [16][groups]
  bool ok = true;
  for (int64_t n0 = begin; n0 < end; n0 += kQuantStripRows) {
    const int64_t rows = std::min<int64_t>(kQuantStripRows, end - n0);
    for (int64_t r = 0; r < kQuantStripRows; ++r) {
      uint8_t* dst = strip + r * 64;
      if (r >= rows) {  // past the last row: zero codes
        for (int64_t chunk = 0; chunk < S * 4; ++chunk) _mm512_store_si512(dst + chunk * kStripTileBytes, _mm512_setzero_si512());
        std::memset(d + r * S, 0, S * sizeof(float));
        std::memset(min_weights + r * s.groups, 0, s.groups * sizeof(float));
        continue;
      }
      const int64_t n = n0 + r;
      // A bad row skips its high plane (nothing is read through its hi_groups); the caller raises.
      const bool high_ok = hi_groups_valid(s, a.base.hi_groups + n * s.num_hi);
      ok &= high_ok;
      if (s.units_per_group == 1) {
        strip_row_codes<true>(a, n, high_ok, dst);
      } else {
        strip_row_codes<false>(a, n, high_ok, dst);
      }
      strip_row_scales(s, a.base.scales + n * s.groups, a.base.super_scales + n * S * 2, min_weights + r * s.groups,
                       d + r * S);
    }
    for (int64_t t = 0; t < m_tiles; ++t) {
      product(strip, a.x_tiles + t * kp * kQuantStripCols, S, d, a.xscale_t + t * kQuantStripCols, a.x_stride, c, acc);
      subtract_min_term(min_weights, s.groups, a.group_sums + t * kQuantStripCols, a.x_stride, acc);
      // acc[output row r][activation row j] -> out[m][n0 + r].
      for (int64_t j = 0; j < kQuantStripCols; ++j) {
        const int64_t m = t * kQuantStripCols + j;
        if (m >= a.base.rows) break;
        float* y = a.base.out + m * s.out_features + n0;
        for (int64_t r = 0; r < rows; ++r) y[r] = acc[r * 16 + j] + (a.base.bias ? a.base.bias[n0 + r] : 0.0f);
      }
    }
  }
  return ok;
}

}  // namespace
}  // namespace lmkernels
