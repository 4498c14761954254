// AVX2 path of quant_linear. A quad (4 units, 32 bytes) is loaded once; unit i's codes are
// (quad >> 2i) & 3 per byte, a shift by an immediate (variable per-lane shifts are several
// times slower on Zen 1), or'ed with the expanded high plane. maddubs + madd per unit is
// what bounds this loop on Zen 1 (both run on one pipe, two cycles per 256-bit op).
#include "quant/quant_linear_avx2_parts.h"

namespace lmkernels {
namespace {

template <int MC>
inline void accumulate_unit(__m256i* acc, __m256i codes, const int8_t* const* x, int64_t unit, int16_t scale) {
  const __m256i s16 = _mm256_set1_epi16(scale);
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_add_epi32(acc[m], weighted_dot(codes, x[m] + unit * kQuantUnit, s16));
}

template <int MC>
inline void accumulate_quad(__m256i* acc, __m256i q, const uint8_t* high, const int8_t* const* x, int64_t u,
                            const int16_t* unit_scales) {
  const uint8_t* h = high + u * kQuantUnit;
  accumulate_unit<MC>(acc, full_codes(q, h), x, u, unit_scales[u]);
  accumulate_unit<MC>(acc, full_codes(_mm256_srli_epi16(q, 2), h + kQuantUnit), x, u + 1, unit_scales[u + 1]);
  accumulate_unit<MC>(acc, full_codes(_mm256_srli_epi16(q, 4), h + 2 * kQuantUnit), x, u + 2, unit_scales[u + 2]);
  accumulate_unit<MC>(acc, full_codes(_mm256_srli_epi16(q, 6), h + 3 * kQuantUnit), x, u + 3, unit_scales[u + 3]);
}

struct Avx2Ops : Avx2Common {
  // Whole blocks fully unrolled (two quads), one call per row: per-block calls reloaded the
  // row's fields on every block (stores through __m256i* may alias anything).
  template <int MC>
  static void row_lanes(const uint8_t* lo, const uint8_t* high, const int8_t* const* x, const int16_t* unit_scales,
                        int64_t units, int32_t* const* lanes) {
    const int64_t full = units / kQuantSuperUnits;
    for (int64_t b = 0; b < full; ++b) {
      const int64_t u = b * kQuantSuperUnits;
      const uint8_t* quads = lo + u / kQuantQuadUnits * kQuantQuadBytes;
      __m256i acc[MC];
      for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_si256();
      accumulate_quad<MC>(acc, load_quad(quads), high, x, u, unit_scales);
      accumulate_quad<MC>(acc, load_quad(quads + kQuantQuadBytes), high, x, u + kQuantQuadUnits, unit_scales);
      for (int m = 0; m < MC; ++m) _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes[m] + 8 * b), acc[m]);
    }
    if (full * kQuantSuperUnits < units) tail_block<MC>(lo, high, x, unit_scales, full, units, lanes);
  }

  template <int MC>
  static void tail_block(const uint8_t* lo, const uint8_t* high, const int8_t* const* x, const int16_t* unit_scales,
                         int64_t b, int64_t units, int32_t* const* lanes) {
    __m256i acc[MC];
    for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_si256();
    int64_t u = b * kQuantSuperUnits;
    for (; u + kQuantQuadUnits <= units; u += kQuantQuadUnits) {
      accumulate_quad<MC>(acc, load_quad(lo + u / kQuantQuadUnits * kQuantQuadBytes), high, x, u, unit_scales);
    }
    if (u < units) {
      const __m256i q = load_quad(lo + u / kQuantQuadUnits * kQuantQuadBytes);
      for (int i = 0; u + i < units; ++i) {
        const __m256i low = _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * i));
        accumulate_unit<MC>(acc, full_codes(low, high + (u + i) * kQuantUnit), x, u + i, unit_scales[u + i]);
      }
    }
    for (int m = 0; m < MC; ++m) _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes[m] + 8 * b), acc[m]);
  }
};

}  // namespace

bool quant_linear_rows_avx2(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx2Ops>(args, begin, end, scratch);
}

}  // namespace lmkernels
