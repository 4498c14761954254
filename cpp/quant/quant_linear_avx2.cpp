// AVX2 path of quant_linear. A quad (4 units, 32 bytes) is loaded once; unit i's codes are
// (quad >> 2i) & 3 per byte, a shift by an immediate (variable per-lane shifts are several
// times slower on Zen 1). maddubs multiplies the u8 codes with the int8 activations (at most
// 3 * 127 * 2 per int16 lane, no saturation) and madd weights by the unit's scale into int32.
#include <immintrin.h>

#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

inline __m256i load_quad(const uint8_t* quad) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad)); }

template <int I>
inline __m256i quad_unit(__m256i quad) {
  return _mm256_and_si256(_mm256_srli_epi16(quad, 2 * I), _mm256_set1_epi8(3));
}

inline __m256i quad_unit(__m256i quad, int index) {
  return _mm256_and_si256(_mm256_srl_epi16(quad, _mm_cvtsi32_si128(2 * index)), _mm256_set1_epi8(3));
}

inline __m256i weighted_dot(__m256i codes, const int8_t* x, __m256i scale16) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xv), scale16);
}

template <int MC>
inline void accumulate_unit(__m256i* acc, __m256i codes, const int8_t* const* x, int64_t unit, int16_t scale) {
  const __m256i s16 = _mm256_set1_epi16(scale);
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_add_epi32(acc[m], weighted_dot(codes, x[m] + unit * kQuantUnit, s16));
}

struct Avx2Ops {
  template <int MC>
  static void unit_dots(const uint8_t* quad, int index, const int8_t* const* x, int scale, int32_t* const* lanes) {
    const __m256i c = quad_unit(load_quad(quad), index);
    const __m256i s16 = _mm256_set1_epi16(static_cast<int16_t>(scale));
    for (int m = 0; m < MC; ++m) {
      __m256i* l = reinterpret_cast<__m256i*>(lanes[m]);
      _mm256_storeu_si256(l, _mm256_add_epi32(_mm256_loadu_si256(l), weighted_dot(c, x[m], s16)));
    }
  }

  template <int MC>
  static void block_dots(const uint8_t* quads, const int8_t* const* x, const int16_t* unit_scales, int units,
                         const int32_t* const* lanes, int32_t* dots) {
    __m256i acc[MC];
    for (int m = 0; m < MC; ++m) acc[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes[m]));
    int u = 0;
    for (; u + kQuantQuadUnits <= units; u += kQuantQuadUnits) {
      const __m256i q = load_quad(quads + u / kQuantQuadUnits * kQuantQuadBytes);
      accumulate_unit<MC>(acc, quad_unit<0>(q), x, u, unit_scales[u]);
      accumulate_unit<MC>(acc, quad_unit<1>(q), x, u + 1, unit_scales[u + 1]);
      accumulate_unit<MC>(acc, quad_unit<2>(q), x, u + 2, unit_scales[u + 2]);
      accumulate_unit<MC>(acc, quad_unit<3>(q), x, u + 3, unit_scales[u + 3]);
    }
    if (u < units) {
      const __m256i q = load_quad(quads + u / kQuantQuadUnits * kQuantQuadBytes);
      for (int i = 0; u + i < units; ++i) accumulate_unit<MC>(acc, quad_unit(q, i), x, u + i, unit_scales[u + i]);
    }
    for (int m = 0; m < MC; ++m) dots[m] = hsum_epi32(acc[m]);
  }

  static int32_t min_dot(const uint8_t* scales, const int16_t* xsum, int groups) {
    if (groups != 8) {
      int32_t sum = 0;
      for (int g = 0; g < groups; ++g) sum += min_code(scales[g]) * xsum[g];
      return sum;
    }
    const __m128i codes = _mm_srli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales))), 4);
    __m128i s = _mm_madd_epi16(codes, _mm_loadu_si128(reinterpret_cast<const __m128i*>(xsum)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
  }

  static void decode_unit_scales(const uint8_t* scales, int64_t groups, int64_t units_per_group, int16_t* out) {
    int64_t g = 0;
    if (units_per_group == 1) {
      for (; g + 16 <= groups; g += 16) {
        const __m256i wide = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + g), _mm256_and_si256(wide, _mm256_set1_epi16(15)));
      }
    }
    decode_unit_scales_scalar(scales, g, groups, units_per_group, out);
  }

  static void decode_halves(const uint16_t* src, float* dst, int64_t count) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < count; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

}  // namespace

bool quant_linear_rows_avx2(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx2Ops>(args, begin, end, scratch);
}

}  // namespace lmkernels
