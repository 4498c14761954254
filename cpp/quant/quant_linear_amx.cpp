// AMX path of quant_linear, for batches: AMX int8 tiles on the row kernels' integer form.
// Per strip of 16 output rows:
//   1. each row's codes become u8 codes times their unit's scale (at most 15 * 15), 64 k per
//      tile row, by the pshufb tables of the VNNI path: one shuffle per two units, no
//      dequantization to floats; the 4-bit groups' units then get 4 * scale * high code added;
//   2. per super-block b, the strip's four 16 x 64 tiles times the int8 activations' tiles
//      (tdpbusd) give ISUM_b[n][m] exactly in int32, combined in fp32 as
//      acc[n][m] += d_b[n] * (xscale_b[m] * ISUM_b[n][m]);
//   3. the min term: acc[n][m] -= sum_g (dmin * min code)[n][g] * group_sums[g][m], with the
//      activations' scaled group sums prepared once per call.
// The weight is read once per call whatever the batch, and a super-block of 16 x 16 outputs
// costs four tile instructions.
#include <cstring>

#include "quant/quant_linear_avx512_parts.h"

namespace lmkernels {
namespace {

constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// dmin_b * min code of every group of a row (the min term's weights), and d_b per super-block.
void row_scales(const QuantShape& s, const uint8_t* packed, const uint16_t* halves, float* min_weights, float* d) {
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
void row_codes(const QuantLinearAmxArgs& a, int64_t n, bool high_ok, uint8_t* dst) {
  const QuantShape& s = a.base.shape;
  const UnitScales unit_scales{a.base.scales + n * s.groups, __builtin_ctzll(static_cast<uint64_t>(s.units_per_group))};
  auto scale = [&](int64_t u) { return u < s.units ? unit_scale<kDirect>(unit_scales, u) : 0; };
  const uint8_t* lo = a.base.codes_lo + n * s.lo_stride;
  const __m512i nibble = _mm512_set1_epi8(15);
  const int64_t quads = (s.units + kQuantQuadUnits - 1) / kQuantQuadUnits;
  for (int64_t q = 0; q < quads; ++q) {
    const int64_t u = q * kQuantQuadUnits;
    const __m512i quad = _mm512_broadcast_i64x4(load_quad(lo + q * kQuantQuadBytes));
    _mm512_store_si512(dst + 2 * q * kTileBytes,
                       _mm512_shuffle_epi8(pair_tables(scale(u), scale(u + 1)), _mm512_and_si512(quad, nibble)));
    _mm512_store_si512(dst + (2 * q + 1) * kTileBytes,
                       _mm512_shuffle_epi8(pair_tables(scale(u + 2), scale(u + 3)),
                                           _mm512_and_si512(_mm512_srli_epi16(quad, 4), nibble)));
  }
  for (int64_t chunk = 2 * quads; chunk < s.super_blocks * 4; ++chunk) {
    _mm512_store_si512(dst + chunk * kTileBytes, _mm512_setzero_si512());
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
      auto* p = reinterpret_cast<__m256i*>(dst + u / 2 * kTileBytes + u % 2 * kQuantUnit);
      _mm256_store_si256(p, _mm256_add_epi8(_mm256_load_si256(p), scaled));
    }
  }
}

// One 64-k chunk into C tile TC: A tile TA from the strip, B tile TB from the activations. A
// macro: the intrinsics paste the tile numbers into the instruction, so they must be literals.
// Even and odd chunks use different A and B tiles (tiles are not renamed: a load into a tile
// would wait for the previous product that reads it).
#define LMK_AMX_CHUNK(TC, TA, TB, chunk)                                  \
  do {                                                                    \
    _tile_loadd(TA, strip + (chunk) * kTileBytes, 64);                    \
    _tile_loadd(TB, x_tiles + (chunk) * kTileBytes, 64);                  \
    _tile_dpbusd(TC, TA, TB);                                             \
  } while (0)

// acc[r][j] += d_b[r] * (xscale_b[j] * float(ISUM[r][j])) for the strip's 16 rows.
inline void combine_block(const int32_t* isum, const float* d, int64_t d_stride, const float* xscale, float* acc) {
  const __m512 xs = _mm512_loadu_ps(xscale);
  for (int r = 0; r < kQuantAmxStripRows; ++r) {
    const __m512 t = _mm512_mul_ps(xs, _mm512_cvtepi32_ps(_mm512_load_si512(isum + r * 16)));
    _mm512_store_ps(acc + r * 16, _mm512_fmadd_ps(t, _mm512_set1_ps(d[r * d_stride]), _mm512_load_ps(acc + r * 16)));
  }
}

// acc[r][j] -= sum_g min_weights[r][g] * group_sums[g][j] for the strip's 16 rows (in registers).
inline void subtract_min_term(const float* min_weights, int64_t groups, const float* group_sums, int64_t gs_stride,
                              float* acc) {
  __m512 rows[kQuantAmxStripRows];
  for (int r = 0; r < kQuantAmxStripRows; ++r) rows[r] = _mm512_load_ps(acc + r * 16);
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 sums = _mm512_loadu_ps(group_sums + g * gs_stride);
    for (int r = 0; r < kQuantAmxStripRows; ++r) {
      rows[r] = _mm512_fnmadd_ps(_mm512_set1_ps(min_weights[r * groups + g]), sums, rows[r]);
    }
  }
  for (int r = 0; r < kQuantAmxStripRows; ++r) _mm512_store_ps(acc + r * 16, rows[r]);
}

// One super-block (four chunks from chunk k0) into C tile TC, alternating two A/B tile pairs.
#define LMK_AMX_BLOCK(TC, TA0, TB0, TA1, TB1, k0) \
  do {                                            \
    _tile_zero(TC);                               \
    LMK_AMX_CHUNK(TC, TA0, TB0, (k0));            \
    LMK_AMX_CHUNK(TC, TA1, TB1, (k0) + 1);        \
    LMK_AMX_CHUNK(TC, TA0, TB0, (k0) + 2);        \
    LMK_AMX_CHUNK(TC, TA1, TB1, (k0) + 3);        \
  } while (0)

// Products of the strip with one activation tile (16 rows), block pairs on C tiles 4 and 5 so
// one block's store and combine overlap the next block's products.
void strip_product(const uint8_t* strip, const int8_t* x_tiles, int64_t super_blocks, const float* d,
                   const float* xscale_t, int64_t x_stride, int32_t* c, float* acc) {
  std::memset(acc, 0, kQuantAmxStripRows * 16 * sizeof(float));
  for (int64_t b = 0; b < super_blocks; b += 2) {
    const bool pair = b + 1 < super_blocks;
    LMK_AMX_BLOCK(4, 0, 1, 7, 3, b * 4);
    if (pair) LMK_AMX_BLOCK(5, 2, 6, 0, 1, b * 4 + 4);
    _tile_stored(4, c, 64);
    combine_block(c, d + b, super_blocks, xscale_t + b * x_stride, acc);
    if (pair) {
      _tile_stored(5, c + 256, 64);
      combine_block(c + 256, d + b + 1, super_blocks, xscale_t + (b + 1) * x_stride, acc);
    }
  }
}
#undef LMK_AMX_BLOCK
#undef LMK_AMX_CHUNK

}  // namespace

void quant_amx_activation_tiles(const int8_t* xq, int64_t row_begin, int64_t row_end, int64_t super_blocks,
                                int8_t* tiles) {
  // A tile row is 4 k of 16 activation rows, so a row's 64 k (16 dwords) go to 16 tile rows 16
  // dwords apart.
  const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(kQuantAmxTileCols));
  const int64_t kp = super_blocks * kQuantSuperBlock;
  for (int64_t m = row_begin; m < row_end; ++m) {
    auto* dst = reinterpret_cast<int32_t*>(tiles + m / kQuantAmxTileCols * kp * kQuantAmxTileCols) + m % kQuantAmxTileCols;
    for (int64_t k = 0; k < kp; k += 64) {
      _mm512_i32scatter_epi32(dst + k / 4 * kQuantAmxTileCols, offsets, _mm512_loadu_si512(xq + m * kp + k), 4);
    }
  }
}

bool quant_linear_rows_amx(const QuantLinearAmxArgs& a, int64_t begin, int64_t end, void* scratch) {
  const QuantShape& s = a.base.shape;
  const int64_t S = s.super_blocks, kp = S * kQuantSuperBlock;
  const int64_t m_tiles = (a.base.rows + kQuantAmxTileCols - 1) / kQuantAmxTileCols;
  auto* strip = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) / 64 * 64);
  auto* c = reinterpret_cast<int32_t*>(strip + kQuantAmxStripRows * kp);
  float* acc = reinterpret_cast<float*>(c + 2 * 256);
  float* d = acc + kQuantAmxStripRows * 16;  // [16][S]
  float* min_weights = d + kQuantAmxStripRows * S;  // [16][groups]

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
    for (int64_t r = 0; r < kQuantAmxStripRows; ++r) {
      uint8_t* dst = strip + r * 64;
      if (r >= rows) {  // past the last row: zero codes
        for (int64_t chunk = 0; chunk < S * 4; ++chunk) _mm512_store_si512(dst + chunk * kTileBytes, _mm512_setzero_si512());
        std::memset(d + r * S, 0, S * sizeof(float));
        std::memset(min_weights + r * s.groups, 0, s.groups * sizeof(float));
        continue;
      }
      const int64_t n = n0 + r;
      // A bad row skips its high plane (nothing is read through its hi_groups); the caller raises.
      const bool high_ok = hi_groups_valid(s, a.base.hi_groups + n * s.num_hi);
      ok &= high_ok;
      if (s.units_per_group == 1) {
        row_codes<true>(a, n, high_ok, dst);
      } else {
        row_codes<false>(a, n, high_ok, dst);
      }
      row_scales(s, a.base.scales + n * s.groups, a.base.super_scales + n * S * 2, min_weights + r * s.groups, d + r * S);
    }
    for (int64_t t = 0; t < m_tiles; ++t) {
      strip_product(strip, a.x_tiles + t * kp * kQuantAmxTileCols, S, d, a.xscale_t + t * kQuantAmxTileCols,
                    a.x_stride, c, acc);
      subtract_min_term(min_weights, s.groups, a.group_sums + t * kQuantAmxTileCols, a.x_stride, acc);
      // acc[output row r][activation row j] -> out[m][n0 + r].
      for (int64_t j = 0; j < kQuantAmxTileCols; ++j) {
        const int64_t m = t * kQuantAmxTileCols + j;
        if (m >= a.base.rows) break;
        float* y = a.base.out + m * s.out_features + n0;
        for (int64_t r = 0; r < rows; ++r) y[r] = acc[r * 16 + j] + (a.base.bias ? a.base.bias[n0 + r] : 0.0f);
      }
    }
  }
  _tile_release();
  return ok;
}

}  // namespace lmkernels
