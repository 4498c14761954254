// AMX path of quant_linear, for batches. Per strip of 16 output rows:
//   1. each row is dequantized to bf16 into a strip buffer (16 x padded K, in L2, tile after
//      tile: the 16 rows of each 32 k are one contiguous 1 KB A tile): per group a
//      16-entry table of bf16(scale * q - min), then per unit its 32 codes (low plane, plus
//      4 * high plane for 4-bit groups) widened to 16 bits index the table (vpermw);
//   2. per 32 k the strip's tile (A: 16 rows x 32 bf16) multiplies the
//      activations' tile (B: 16 pairs of k x 16 rows, prepared once per call) into fp32 C tiles
//      of 16 output rows x 16 activation rows (tdpbf16ps), up to two activation tiles per
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
// ops (decoding them per group in software cost more than the codes). With group 32, a
// super-block's 8 groups are one 8-lane step.
void group_scales(const QuantShape& s, const uint8_t* packed, const uint16_t* halves, float* scale, float* min) {
  int64_t g = 0;
  if (s.units_per_group == 1) {
    for (; g + kQuantSuperUnits <= s.groups; g += kQuantSuperUnits) {
      const int64_t b = g / kQuantSuperUnits;
      const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed + g)));
      const __m256 sc = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(15)));
      const __m256 mc = _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4));
      _mm256_storeu_ps(scale + g, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(halves[2 * b])), sc));
      _mm256_storeu_ps(min + g, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(halves[2 * b + 1])), mc));
    }
  }
  for (; g < s.groups; ++g) {
    const int64_t b = super_block_of_group(g, s.units_per_group);
    scale[g] = _cvtsh_ss(halves[2 * b]) * static_cast<float>(scale_code(packed[g]));
    min[g] = _cvtsh_ss(halves[2 * b + 1]) * static_cast<float>(min_code(packed[g]));
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

// Row n of the weight as bf16 over the padded K (the padding's values meet zero activations),
// unit u at dst + u * 16 * 32 (dst: the row's place in the strip's first tile):
// every unit from its low codes, then the 4-bit groups' units again with their high codes (no
// per-unit branch on whether a group is 4-bit).
void dequantize_row(const QuantLinearAmxArgs& a, int64_t n, bool high_ok, float* work, uint16_t* dst) {
  constexpr int64_t unit_stride = kQuantAmxStripRows * kQuantUnit;  // the strip's tile-major layout
  const QuantShape& s = a.shape;
  float* scale = work;
  float* min = scale + s.groups;
  group_scales(s, a.scales + n * s.groups, a.super_scales + n * s.super_blocks * 2, scale, min);
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
      uint16_t* out = dst + u * unit_stride;
      store_codes(out, _mm256_and_si256(quad, three), t01);
      store_codes(out + unit_stride, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(quad, 2), three), upper), t01);
      store_codes(out + 2 * unit_stride, _mm256_and_si256(_mm256_srli_epi16(quad, 4), three), t23);
      store_codes(out + 3 * unit_stride, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(quad, 6), three), upper), t23);
    }
  }
  for (; q * kQuantQuadUnits < s.units; ++q) {
    const __m256i quad = load_quad(lo + q * kQuantQuadBytes);
    const int64_t u0 = q * kQuantQuadUnits, count = std::min<int64_t>(kQuantQuadUnits, s.units - u0);
    for (int64_t i = 0; i < count; ++i) {
      const __m256i codes = _mm256_and_si256(_mm256_srl_epi16(quad, _mm_cvtsi32_si128(static_cast<int>(2 * i))), three);
      store_unit(dst + (u0 + i) * unit_stride, codes, scale, min, (u0 + i) / s.units_per_group);
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
      store_unit(dst + u * unit_stride, _mm256_or_si256(low, _mm256_slli_epi16(high, 2)), scale, min, g);
    }
  }
}

// One 32-k chunk: C tile 4 (and 5 if MT > 1) += A tile TA times activation tile TB0 (and TB1).
// A macro: the intrinsics paste the tile numbers into the instruction, so they must be literals.
#define LMK_AMX_CHUNK(MT, TA, TB0, TB1, k)                          \
  do {                                                              \
    _tile_loadd(TA, strip + (k) * kQuantAmxStripRows, 64);          \
    const uint16_t* b = x_tiles + (k) * kQuantAmxTileCols;          \
    _tile_loadd(TB0, b, 64);                                        \
    _tile_dpbf16ps(4, TA, TB0);                                     \
    if constexpr ((MT) > 1) {                                       \
      _tile_loadd(TB1, b + x_tile_elems, 64);                       \
      _tile_dpbf16ps(5, TA, TB1);                                   \
    }                                                               \
  } while (0)

// C tiles 4 .. 3 + MT (MT <= 2) = the strip times MT activation tiles, over the padded K. Tiles
// are not renamed, so a chunk's loads would wait for the previous chunk's product to release
// its tiles: even and odd chunks use different ones (A 0 / 7, B 1, 2 / 3, 6).
template <int MT>
void strip_product(const uint16_t* strip, int64_t kp, const uint16_t* x_tiles, int64_t x_tile_elems, float* c) {
  _tile_zero(4);
  if constexpr (MT > 1) _tile_zero(5);
  int64_t k = 0;
  for (; k + 64 <= kp; k += 64) {
    LMK_AMX_CHUNK(MT, 0, 1, 2, k);
    LMK_AMX_CHUNK(MT, 7, 3, 6, k + 32);
  }
  if (k < kp) LMK_AMX_CHUNK(MT, 0, 1, 2, k);
  _tile_stored(4, c, 64);
  if constexpr (MT > 1) _tile_stored(5, c + 256, 64);
}
#undef LMK_AMX_CHUNK

}  // namespace

void quant_amx_activation_tiles(const float* x, int64_t row_begin, int64_t row_end, int64_t in_features,
                                int64_t padded_k, uint16_t* tiles) {
  // A tile row is one pair of k for 16 activation rows, so a row's 32 k (16 pairs) go to 16 tile
  // rows 16 dwords apart.
  const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(kQuantAmxTileCols));
  for (int64_t m = row_begin; m < row_end; ++m) {
    const float* src = x + m * in_features;
    auto* dst = reinterpret_cast<int32_t*>(tiles + m / kQuantAmxTileCols * padded_k * kQuantAmxTileCols) +
                m % kQuantAmxTileCols;
    for (int64_t k = 0; k < in_features; k += 32) {
      const int64_t n = std::min<int64_t>(32, in_features - k);
      const __mmask16 low = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
      const __mmask16 high = n >= 32 ? 0xFFFF : n > 16 ? static_cast<__mmask16>((1u << (n - 16)) - 1) : 0;
      const __m512 a = _mm512_maskz_loadu_ps(low, src + k), b = _mm512_maskz_loadu_ps(high, src + k + 16);
      _mm512_i32scatter_epi32(dst + k / 2 * kQuantAmxTileCols, offsets,
                              reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a)), 4);
    }
  }
}

bool quant_linear_rows_amx(const QuantLinearAmxArgs& a, int64_t begin, int64_t end, void* scratch) {
  const QuantShape& s = a.shape;
  const int64_t kp = quant_amx_padded_k(s), m_tiles = (a.rows + kQuantAmxTileCols - 1) / kQuantAmxTileCols;
  const int64_t x_tile_elems = kp * kQuantAmxTileCols;
  auto* strip = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) / 64 * 64);
  float* c = reinterpret_cast<float*>(strip + kQuantAmxStripRows * kp);
  float* work = c + 2 * 16 * 16;

  TileConfig config;
  std::memset(&config, 0, sizeof(config));
  config.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
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
      dequantize_row(a, n0 + r, high_ok, work, strip + r * kQuantUnit);
    }
    for (int64_t u = 0; rows < kQuantAmxStripRows && u < s.units; ++u) {
      std::memset(strip + (u * kQuantAmxStripRows + rows) * kQuantUnit, 0, (kQuantAmxStripRows - rows) * kQuantUnit * 2);
    }
    for (int64_t t = 0; t < m_tiles; t += 2) {
      const int64_t mt = std::min<int64_t>(2, m_tiles - t);
      const uint16_t* x = a.x_tiles + t * x_tile_elems;
      if (mt == 2) {
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
