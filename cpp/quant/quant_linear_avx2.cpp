// AVX2 path of quant_linear. A quad (4 units, 32 bytes) is loaded once; unit i's codes are
// (quad >> 2i) & 3 per byte, a shift by an immediate (variable per-lane shifts are several
// times slower on Zen 1). maddubs + madd per unit is what bounds this loop on Zen 1 (both run
// on one pipe, two cycles per 256-bit op).
#include "quant/quant_linear_avx2_parts.h"

namespace lmkernels {
namespace {

template <int MC>
inline void accumulate_unit(__m256i* acc, __m256i codes, const int8_t* const* x, int64_t unit, int16_t scale) {
  const __m256i s16 = _mm256_set1_epi16(scale);
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_add_epi32(acc[m], weighted_dot(codes, x[m] + unit * kQuantUnit, s16));
}

inline __m256i low_codes(__m256i shifted) { return _mm256_and_si256(shifted, _mm256_set1_epi8(3)); }

template <int MC>
inline void accumulate_quad(__m256i* acc, __m256i q, const int8_t* const* x, int64_t u, const int16_t* unit_scales) {
  accumulate_unit<MC>(acc, low_codes(q), x, u, unit_scales[u]);
  accumulate_unit<MC>(acc, low_codes(_mm256_srli_epi16(q, 2)), x, u + 1, unit_scales[u + 1]);
  accumulate_unit<MC>(acc, low_codes(_mm256_srli_epi16(q, 4)), x, u + 2, unit_scales[u + 2]);
  accumulate_unit<MC>(acc, low_codes(_mm256_srli_epi16(q, 6)), x, u + 3, unit_scales[u + 3]);
}

struct Avx2Ops : Avx2Common {
  // Whole blocks fully unrolled (two quads), each block's int lanes folded into the float
  // lanes in registers.
  template <int MC>
  static void row_dot(const uint8_t* lo, const int8_t* const* x, const int16_t* unit_scales, int64_t units,
                      const float* const* dx, float* const* lane) {
    __m256 facc[MC];
    for (int m = 0; m < MC; ++m) facc[m] = _mm256_setzero_ps();
    const int64_t full = units / kQuantSuperUnits;
    for (int64_t b = 0; b < full; ++b) {
      const int64_t u = b * kQuantSuperUnits;
      const uint8_t* quads = lo + u / kQuantQuadUnits * kQuantQuadBytes;
      __m256i acc[MC];
      for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_si256();
      accumulate_quad<MC>(acc, load_quad(quads), x, u, unit_scales);
      accumulate_quad<MC>(acc, load_quad(quads + kQuantQuadBytes), x, u + kQuantQuadUnits, unit_scales);
      for (int m = 0; m < MC; ++m) facc[m] = accumulate_lanes(facc[m], acc[m], dx[m][b]);
    }
    if (full * kQuantSuperUnits < units) {
      __m256i acc[MC];
      for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_si256();
      int64_t u = full * kQuantSuperUnits;
      for (; u + kQuantQuadUnits <= units; u += kQuantQuadUnits) {
        accumulate_quad<MC>(acc, load_quad(lo + u / kQuantQuadUnits * kQuantQuadBytes), x, u, unit_scales);
      }
      if (u < units) {
        const __m256i q = load_quad(lo + u / kQuantQuadUnits * kQuantQuadBytes);
        for (int i = 0; u + i < units; ++i) {
          accumulate_unit<MC>(acc, low_codes(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * i))), x, u + i, unit_scales[u + i]);
        }
      }
      for (int m = 0; m < MC; ++m) facc[m] = accumulate_lanes(facc[m], acc[m], dx[m][full]);
    }
    for (int m = 0; m < MC; ++m) _mm256_storeu_ps(lane[m], facc[m]);
  }
};

}  // namespace

bool quant_linear_rows_avx2(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx2Ops>(args, begin, end, scratch);
}

}  // namespace lmkernels
