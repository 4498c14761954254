// AVX-512 path of quant_linear: two units (64 weights) per 512-bit step. The quad is
// broadcast to both halves and each 16-bit lane shifted by its unit's 2i (vpsrlvw), or'ed
// with the expanded high plane, then maddubs + madd as on AVX2; the high plane's expansion,
// the lane reduction, the min term and the combination are the shared AVX2 pieces.
#include "quant/quant_linear_avx2_parts.h"

namespace lmkernels {
namespace {

// Units (first, first + 1) of a quad broadcast to both 256-bit halves, one per half, with
// their 64 bytes of the expanded high plane.
inline __m512i quad_unit_pair(__m512i quad2, __m512i shifts, const uint8_t* high) {
  return _mm512_or_si512(_mm512_and_si512(_mm512_srlv_epi16(quad2, shifts), _mm512_set1_epi8(3)),
                         _mm512_loadu_si512(high));
}

template <int MC>
inline void accumulate_pair(__m512i* acc, __m512i codes, const int8_t* const* x, int64_t u, const int16_t* scales) {
  const __m512i s16 = _mm512_inserti64x4(_mm512_set1_epi16(scales[u]), _mm256_set1_epi16(scales[u + 1]), 1);
  for (int m = 0; m < MC; ++m) {
    const __m512i xv = _mm512_loadu_si512(x[m] + u * kQuantUnit);
    acc[m] = _mm512_add_epi32(acc[m], _mm512_madd_epi16(_mm512_maddubs_epi16(codes, xv), s16));
  }
}

struct Avx512Ops : Avx2Common {
  template <int MC>
  static void row_lanes(const uint8_t* lo, const uint8_t* high, const int8_t* const* x, const int16_t* unit_scales,
                        int64_t units, int32_t* const* lanes) {
    for (int64_t b = 0; b * kQuantSuperUnits < units; ++b) {
      const int64_t u0 = b * kQuantSuperUnits;
      block_lanes<MC>(lo + u0 / kQuantQuadUnits * kQuantQuadBytes, high, x, unit_scales, u0,
                      static_cast<int>(std::min<int64_t>(units - u0, kQuantSuperUnits)), lanes, b);
    }
  }

  // Units u0 .. u0 + units - 1 (one super-block b) into lanes[m][8b ..].
  template <int MC>
  static void block_lanes(const uint8_t* quads, const uint8_t* high, const int8_t* const* x, const int16_t* unit_scales,
                          int64_t u0, int units, int32_t* const* lanes, int64_t b) {
    const __m512i shifts01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i shifts23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    __m512i acc[MC];
    for (int m = 0; m < MC; ++m) acc[m] = _mm512_setzero_si512();
    int u = 0;
    for (; u + kQuantQuadUnits <= units; u += kQuantQuadUnits) {
      const __m512i q = _mm512_broadcast_i64x4(load_quad(quads + u / kQuantQuadUnits * kQuantQuadBytes));
      const uint8_t* h = high + (u0 + u) * kQuantUnit;
      accumulate_pair<MC>(acc, quad_unit_pair(q, shifts01, h), x, u0 + u, unit_scales);
      accumulate_pair<MC>(acc, quad_unit_pair(q, shifts23, h + 2 * kQuantUnit), x, u0 + u + 2, unit_scales);
    }
    for (int m = 0; m < MC; ++m) {
      __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(acc[m]), _mm512_extracti64x4_epi64(acc[m], 1));
      for (int i = u; i < units; ++i) {
        const __m256i low = _mm256_srl_epi16(load_quad(quads + u / kQuantQuadUnits * kQuantQuadBytes), _mm_cvtsi32_si128(2 * (i - u)));
        half = _mm256_add_epi32(half, weighted_dot(full_codes(low, high + (u0 + i) * kQuantUnit), x[m] + (u0 + i) * kQuantUnit,
                                                   _mm256_set1_epi16(unit_scales[u0 + i])));
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes[m] + 8 * b), half);
    }
  }
};

}  // namespace

bool quant_linear_rows_avx512(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx512Ops>(args, begin, end, scratch);
}

}  // namespace lmkernels
