// The AVX2 pieces of quant_linear that the AVX2 and AVX-512 paths share: the high plane's
// expansion, the lane reduction, the min term, the float combination and scale decoding.
// Included by each ISA's translation unit, so every copy is compiled with that unit's flags.
#pragma once

#include <immintrin.h>

#include <algorithm>

#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// A unit's 4-bit codes: its low codes (shifted down, other units' bits still above) with
// the expanded high plane.
inline __m256i full_codes(__m256i low_shifted, const uint8_t* high) {
  return _mm256_or_si256(_mm256_and_si256(low_shifted, _mm256_set1_epi8(3)),
                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(high)));
}

inline __m256i load_quad(const uint8_t* quad) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad)); }

// maddubs multiplies the u8 codes (0..15) with the int8 activations (at most 15 * 127 * 2 per
// int16 lane, no saturation) and madd weights the pairs by the unit's scale into int32.
inline __m256i weighted_dot(__m256i codes, const int8_t* x, __m256i scale16) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xv), scale16);
}

struct Avx2Common {
  // The high plane's units in whole quads (shifts by immediates); only a row's first and last
  // quads, which it may share with its neighbours, check which units are its own.
  template <int UPG>
  static void expand_high(const uint8_t* plane, uint64_t first, int64_t count, const int16_t* hi_groups, uint8_t* high) {
    const __m256i mask = _mm256_set1_epi8(12);  // 4 * code: the code's two bits moved to bits 2..3
    auto own = [&](int64_t i, __m256i shifted) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(high + high_unit<UPG>(hi_groups, i) * kQuantUnit),
                          _mm256_and_si256(shifted, mask));
    };
    auto guarded = [&](int64_t i, __m256i shifted) {
      if (i >= 0 && i < count) own(i, shifted);
    };
    const uint64_t end = (first + static_cast<uint64_t>(count) + kQuantQuadUnits - 1) / kQuantQuadUnits;
    for (uint64_t quad = first / kQuantQuadUnits; quad < end; ++quad) {
      const __m256i q = load_quad(plane + quad * kQuantQuadBytes);
      const int64_t i = static_cast<int64_t>(quad * kQuantQuadUnits - first);
      if (i >= 0 && i + kQuantQuadUnits <= count) {
        own(i, _mm256_slli_epi16(q, 2));
        own(i + 1, q);
        own(i + 2, _mm256_srli_epi16(q, 2));
        own(i + 3, _mm256_srli_epi16(q, 4));
      } else {
        guarded(i, _mm256_slli_epi16(q, 2));
        guarded(i + 1, q);
        guarded(i + 2, _mm256_srli_epi16(q, 2));
        guarded(i + 3, _mm256_srli_epi16(q, 4));
      }
    }
  }

  template <int UPG>
  static void clear_high(int64_t count, const int16_t* hi_groups, uint8_t* high) {
    for (int64_t i = 0; i < count; ++i) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(high + high_unit<UPG>(hi_groups, i) * kQuantUnit), _mm256_setzero_si256());
    }
  }

  // sums[j] = the sum of the 8 lanes of vector j (of 8 consecutive ones): a tree of hadds
  // gives [v0..v3 low halves | v0..v3 high halves], then the halves are added.
  static void reduce8(const int32_t* lanes, int32_t* sums) {
    auto lane = [&](int j) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 8 * j)); };
    auto fold = [](__m256i v) { return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); };
    const __m256i h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(lane(0), lane(1)), _mm256_hadd_epi32(lane(2), lane(3)));
    const __m256i h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(lane(4), lane(5)), _mm256_hadd_epi32(lane(6), lane(7)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sums), fold(h0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(sums + 4), fold(h1));
  }

  static void reduce_lanes(const int32_t* lanes, int64_t blocks, int32_t* isum) {
    int64_t b = 0;
    for (; b + 8 <= blocks; b += 8) reduce8(lanes + 8 * b, isum + b);
    for (; b < blocks; ++b) isum[b] = hsum_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 8 * b)));
  }

  // Group size 32 (eight groups per super-block): eight blocks per step from four madds and
  // a tree of hadds; other group sizes and the tail take the scalar loop.
  static void min_sums(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, int32_t* msum) {
    int64_t b = 0;
    if (s.group_size == 32) {
      const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
      for (; (b + 8) * 8 <= s.groups; b += 8) {
        __m256i v[4];
        for (int i = 0; i < 4; ++i) {
          const int64_t g = b * 8 + 16 * i;
          const __m256i codes = _mm256_srli_epi16(
              _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g))), 4);
          v[i] = _mm256_madd_epi16(codes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xsum + g)));
        }
        // [b0 b2 b4 b6 | b1 b3 b5 b7] after three levels, then back into block order.
        const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(msum + b), _mm256_permutevar8x32_epi32(h, order));
      }
    }
    min_sums_scalar(scales, xsum, s, b, msum);
  }

  // combine_lanes() with 8-wide vectors: the same products, sums and reduction tree.
  static float combine(const int32_t* isum, const int32_t* msum, const float* d_dmin, const float* xscale, int64_t S) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < quant_combine_stride(S); b += 8) {
      const __m256 p0 = _mm256_loadu_ps(d_dmin + 2 * b), p1 = _mm256_loadu_ps(d_dmin + 2 * b + 8);
      // (d, dmin) pairs de-interleaved: the shuffles give blocks 0 1 4 5 | 2 3 6 7.
      const __m256 d = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(p0, p1, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
      const __m256 dmin = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(p0, p1, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
      const __m256 i = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(isum + b)));
      const __m256 m = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(msum + b)));
      const __m256 t = _mm256_sub_ps(_mm256_mul_ps(d, i), _mm256_mul_ps(dmin, m));
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(xscale + b), t));
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
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
}  // namespace lmkernels
