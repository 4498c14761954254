// AVX-512 path of quant_linear: two units (64 weights) per 512-bit step. The quad is
// broadcast to both halves and each 16-bit lane shifted by its unit's 2i (vpsrlvw), then
// maddubs + madd as on AVX2; single units (the high plane) take 256-bit steps.
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

inline __m256i quad_unit(const uint8_t* quad, int index) {
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad));
  return _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * index)), _mm256_set1_epi8(3));
}

inline __m256i weighted_dot(__m256i codes, const int8_t* x, __m256i scale16) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xv), scale16);
}

// Units (first, first + 1) of a quad broadcast to both 256-bit halves, one per half.
inline __m512i quad_unit_pair(__m512i quad2, __m512i shifts) {
  return _mm512_and_si512(_mm512_srlv_epi16(quad2, shifts), _mm512_set1_epi8(3));
}

template <int MC>
inline void accumulate_pair(__m512i* acc, __m512i codes, const int8_t* const* x, int u, const int16_t* scales) {
  const __m512i s16 = _mm512_inserti64x4(_mm512_set1_epi16(scales[u]), _mm256_set1_epi16(scales[u + 1]), 1);
  for (int m = 0; m < MC; ++m) {
    const __m512i xv = _mm512_loadu_si512(x[m] + u * kQuantUnit);
    acc[m] = _mm512_add_epi32(acc[m], _mm512_madd_epi16(_mm512_maddubs_epi16(codes, xv), s16));
  }
}

struct Avx512Ops {
  template <int MC>
  static void unit_dots(const uint8_t* quad, int index, const int8_t* const* x, int scale, int32_t* const* lanes) {
    const __m256i c = quad_unit(quad, index);
    const __m256i s16 = _mm256_set1_epi16(static_cast<int16_t>(scale));
    for (int m = 0; m < MC; ++m) {
      __m256i* l = reinterpret_cast<__m256i*>(lanes[m]);
      _mm256_storeu_si256(l, _mm256_add_epi32(_mm256_loadu_si256(l), weighted_dot(c, x[m], s16)));
    }
  }

  template <int MC>
  static void block_dots(const uint8_t* quads, const int8_t* const* x, const int16_t* unit_scales, int units,
                         const int32_t* const* lanes, int32_t* dots) {
    const __m512i shifts01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i shifts23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    __m512i acc[MC];
    for (int m = 0; m < MC; ++m) {
      acc[m] = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes[m])));
      acc[m] = _mm512_inserti64x4(acc[m], _mm256_setzero_si256(), 1);
    }
    int u = 0;
    for (; u + kQuantQuadUnits <= units; u += kQuantQuadUnits) {
      const __m512i q = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quads + u / kQuantQuadUnits * kQuantQuadBytes)));
      accumulate_pair<MC>(acc, quad_unit_pair(q, shifts01), x, u, unit_scales);
      accumulate_pair<MC>(acc, quad_unit_pair(q, shifts23), x, u + 2, unit_scales);
    }
    for (int m = 0; m < MC; ++m) {
      __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(acc[m]), _mm512_extracti64x4_epi64(acc[m], 1));
      for (int i = u; i < units; ++i) {
        const __m256i c = quad_unit(quads + u / kQuantQuadUnits * kQuantQuadBytes, i - u);
        half = _mm256_add_epi32(half, weighted_dot(c, x[m] + i * kQuantUnit, _mm256_set1_epi16(unit_scales[i])));
      }
      dots[m] = hsum_epi32(half);
    }
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
    for (; i + 16 <= count; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
    }
    for (; i < count; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

}  // namespace

bool quant_linear_rows_avx512(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx512Ops>(args, begin, end, scratch);
}

}  // namespace lmkernels
