// AMX path of quant_linear, for batches. Per strip of 16 output rows:
//   1. each row is dequantized to bf16 into a strip buffer (16 x padded K, in L2): per group a
//      16-entry table of bf16(scale * q - min), then per unit its 32 codes (low plane, plus
//      4 * high plane for 4-bit groups) widened to 16 bits index the table (vpermw);
//   2. per 32 k the strip's tile (A: 16 rows x 32 bf16, row-major as stored) multiplies the
//      activations' tile (B: 16 pairs of k x 16 rows, prepared once per call) into fp32 C tiles
//      of 16 output rows x 16 activation rows (tdpbf16ps), up to three activation tiles per
//      pass.
// The weight is read once per call whatever the batch, and the multiply costs one tile
// instruction per 8192 multiply-adds, so a batch costs about what its dequantization does.
#include <immintrin.h>

#include <cstring>

#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

inline __m256i load_quad(const uint8_t* quad) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad)); }

// Unit `slot` (0..3) of a quad: one 2-bit code per byte.
inline __m256i quad_unit(const uint8_t* quad, int64_t slot) {
  return _mm256_and_si256(_mm256_srl_epi16(load_quad(quad), _mm_cvtsi32_si128(static_cast<int>(2 * slot))),
                          _mm256_set1_epi8(3));
}

// bf16(scale * q - min) for q = 0..15 (the float ops of dequantize_weight_at), as a vpermw table.
inline __m512i group_table(const GroupScale& gs) {
  const __m512 q = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 v = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(gs.scale), q), _mm512_set1_ps(gs.min));
  return _mm512_zextsi256_si512(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

// (scale, min) of every group of row n into scale[g], min[g]: dequantize_weight_at's float
// ops, 16 groups a step (decoding them per group in software cost more than the codes).
void group_scales(const QuantShape& s, const uint8_t* packed, const uint16_t* halves, float* supers, float* scale,
                  float* min) {
  for (int64_t i = 0; i < 2 * s.super_blocks; ++i) supers[i] = _cvtsh_ss(halves[i]);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int shift = __builtin_ctzll(static_cast<uint64_t>(kQuantSuperUnits / s.units_per_group));  // groups per block
  int64_t g = 0;
  for (; g + 16 <= s.groups; g += 16) {
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + g)));
    const __m512i pair = _mm512_slli_epi32(_mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(g)), iota), shift), 1);
    const __m512 d = _mm512_i32gather_ps(pair, supers, 4), dmin = _mm512_i32gather_ps(pair, supers + 1, 4);
    _mm512_storeu_ps(scale + g, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(15)))));
    _mm512_storeu_ps(min + g, _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_srli_epi32(bytes, 4))));
  }
  for (; g < s.groups; ++g) {
    const float* pair = supers + 2 * super_block_of_group(g, s.units_per_group);
    scale[g] = pair[0] * static_cast<float>(scale_code(packed[g]));
    min[g] = pair[1] * static_cast<float>(min_code(packed[g]));
  }
}

// 32 codes (bytes) through a 32-entry bf16 table.
inline void store_codes(uint16_t* dst, __m256i codes, __m512i table) {
  _mm512_storeu_si512(dst, _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(codes), table));
}

// bf16 of 32 codes (bytes, 0..15) through the table of group g.
inline void store_unit(uint16_t* dst, __m256i codes, const float* scale, const float* min, int64_t g) {
  store_codes(dst, codes, group_table({scale[g], min[g]}));
}

// The tables of groups g and g + 1 as entries 0..15 and 16..31.
inline __m512i pair_table(const float* scale, const float* min) {
  const __m512 q = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 a = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(scale[0]), q), _mm512_set1_ps(min[0]));
  const __m512 b = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(scale[1]), q), _mm512_set1_ps(min[1]));
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));
}

// Row n of the weight as bf16 over the padded K (the padding's values meet zero activations):
// every unit from its low codes, then the 4-bit groups' units again with their high codes (no
// per-unit branch on whether a group is 4-bit).
void dequantize_row(const QuantLinearAmxArgs& a, int64_t n, bool high_ok, float* work, uint16_t* dst) {
  const QuantShape& s = a.shape;
  float* scale = work;
  float* min = scale + s.groups;
  float* supers = min + s.groups;
  group_scales(s, a.scales + n * s.groups, a.super_scales + n * s.super_blocks * 2, supers, scale, min);
  const uint8_t* lo = a.codes_lo + n * s.lo_stride;
  const __m256i three = _mm256_set1_epi8(3), upper = _mm256_set1_epi8(16);
  int64_t q = 0;
  if (s.units_per_group == 1) {
    // One group per unit: two groups' tables in one conversion ([a | b], b's codes + 16), and
    // shifts by immediates.
    for (; (q + 1) * kQuantQuadUnits <= s.units; ++q) {
      const __m256i quad = load_quad(lo + q * kQuantQuadBytes);
      const int64_t u = q * kQuantQuadUnits;
      const __m512i t01 = pair_table(scale + u, min + u), t23 = pair_table(scale + u + 2, min + u + 2);
      uint16_t* out = dst + u * kQuantUnit;
      store_codes(out, _mm256_and_si256(quad, three), t01);
      store_codes(out + kQuantUnit, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(quad, 2), three), upper), t01);
      store_codes(out + 2 * kQuantUnit, _mm256_and_si256(_mm256_srli_epi16(quad, 4), three), t23);
      store_codes(out + 3 * kQuantUnit, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(quad, 6), three), upper), t23);
    }
  }
  for (; q * kQuantQuadUnits < s.units; ++q) {
    const __m256i quad = load_quad(lo + q * kQuantQuadBytes);
    const int64_t u0 = q * kQuantQuadUnits, count = std::min<int64_t>(kQuantQuadUnits, s.units - u0);
    for (int64_t i = 0; i < count; ++i) {
      const __m256i codes = _mm256_and_si256(_mm256_srl_epi16(quad, _mm_cvtsi32_si128(static_cast<int>(2 * i))), three);
      store_unit(dst + (u0 + i) * kQuantUnit, codes, scale, min, (u0 + i) / s.units_per_group);
    }
  }
  if (!high_ok) return;
  const int16_t* hi_groups = a.hi_groups + n * s.num_hi;
  for (int64_t j = 0; j < s.num_hi; ++j) {
    const int64_t g = hi_groups[j];
    for (int64_t k = 0; k < s.units_per_group; ++k) {
      const int64_t u = g * s.units_per_group + k, i = n * s.hi_units + j * s.units_per_group + k;
      const __m256i low = quad_unit(lo + u / kQuantQuadUnits * kQuantQuadBytes, u % kQuantQuadUnits);
      const __m256i high = quad_unit(a.codes_hi + i / kQuantQuadUnits * kQuantQuadBytes, i % kQuantQuadUnits);
      // at most 3 + 12 per byte: no carry into the next byte
      store_unit(dst + u * kQuantUnit, _mm256_or_si256(low, _mm256_slli_epi16(high, 2)), scale, min, g);
    }
  }
}

// C tiles 4 .. 3 + MT = the strip (tile 0) times activation tiles 1 .. MT, over the padded K.
template <int MT>
void strip_product(const uint16_t* strip, int64_t kp, const uint16_t* x_tiles, int64_t x_tile_elems, float* c) {
  _tile_zero(4);
  if constexpr (MT > 1) _tile_zero(5);
  if constexpr (MT > 2) _tile_zero(6);
  for (int64_t k = 0; k < kp; k += 32) {
    _tile_loadd(0, strip + k, kp * 2);
    const uint16_t* b = x_tiles + k * 16;  // k / 2 pairs of 16 rows x 2
    _tile_loadd(1, b, 64);
    _tile_dpbf16ps(4, 0, 1);
    if constexpr (MT > 1) {
      _tile_loadd(2, b + x_tile_elems, 64);
      _tile_dpbf16ps(5, 0, 2);
    }
    if constexpr (MT > 2) {
      _tile_loadd(3, b + 2 * x_tile_elems, 64);
      _tile_dpbf16ps(6, 0, 3);
    }
  }
  _tile_stored(4, c, 64);
  if constexpr (MT > 1) _tile_stored(5, c + 256, 64);
  if constexpr (MT > 2) _tile_stored(6, c + 512, 64);
}

}  // namespace

bool quant_linear_rows_amx(const QuantLinearAmxArgs& a, int64_t begin, int64_t end, void* scratch) {
  const QuantShape& s = a.shape;
  const int64_t kp = quant_amx_padded_k(s), m_tiles = (a.rows + kQuantAmxTileCols - 1) / kQuantAmxTileCols;
  const int64_t x_tile_elems = kp * kQuantAmxTileCols;
  auto* strip = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) / 64 * 64);
  float* c = reinterpret_cast<float*>(strip + kQuantAmxStripRows * kp);
  float* work = c + 3 * 16 * 16;

  TileConfig config;
  std::memset(&config, 0, sizeof(config));
  config.palette_id = 1;
  for (int t = 0; t < 7; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
  bool ok = true;
  for (int64_t n0 = begin; n0 < end; n0 += kQuantAmxStripRows) {
    const int64_t rows = std::min<int64_t>(kQuantAmxStripRows, end - n0);
    for (int64_t r = 0; r < rows; ++r) {
      // A bad row skips its high plane (nothing is read through its hi_groups); the caller raises.
      const bool high_ok = hi_groups_valid(s, a.hi_groups + (n0 + r) * s.num_hi);
      ok &= high_ok;
      dequantize_row(a, n0 + r, high_ok, work, strip + r * kp);
    }
    if (rows < kQuantAmxStripRows) std::memset(strip + rows * kp, 0, (kQuantAmxStripRows - rows) * kp * 2);
    for (int64_t t = 0; t < m_tiles; t += 3) {
      const int64_t mt = std::min<int64_t>(3, m_tiles - t);
      const uint16_t* x = a.x_tiles + t * x_tile_elems;
      if (mt == 3) {
        strip_product<3>(strip, kp, x, x_tile_elems, c);
      } else if (mt == 2) {
        strip_product<2>(strip, kp, x, x_tile_elems, c);
      } else {
        strip_product<1>(strip, kp, x, x_tile_elems, c);
      }
      // c[tile][output row r][activation row j] -> out[m][n0 + r].
      for (int64_t tile = 0; tile < mt; ++tile) {
        for (int64_t j = 0; j < kQuantAmxTileCols; ++j) {
          const int64_t m = (t + tile) * kQuantAmxTileCols + j;
          if (m >= a.rows) break;
          float* y = a.out + m * s.out_features + n0;
          for (int64_t r = 0; r < rows; ++r) {
            y[r] = c[tile * 256 + r * 16 + j] + (a.bias ? a.bias[n0 + r] : 0.0f);
          }
        }
      }
    }
  }
  _tile_release();
  return ok;
}

}  // namespace lmkernels
