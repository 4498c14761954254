// AVX-512 VNNI path of quant_linear: vpdpbusd multiplies u8 codes by int8 activations and
// sums each 4 bytes into an int32 lane in one instruction (AVX2 needs maddubs + madd).
// As on AVX2, a unit's scale is folded into its codes by a pshufb table, so a weight unit is
// prepared once and each activation row costs one vpdpbusd per 64 weights:
//   q  = the quad (4 units, 32 bytes) broadcast to both 256-bit halves;
//   c01 = pshufb([table(unit 0's scale) | table(unit 1's scale)], q & 15): unit 0's scaled
//         codes in the low half, unit 1's in the high half; c23 likewise from q >> 4;
//   acc01 += dpbusd(c01, x[32u .. 32u + 63]), acc23 += dpbusd(c23, x[32u + 64 .. 32u + 127]).
// Adding both accumulators' halves gives a block's 8 int32 lanes, exactly the AVX2 ones (lane j holds
// weights 4j .. 4j + 3 of every unit), so the float steps and the result are the same bits.
#include "quant/quant_linear_avx512_parts.h"

namespace lmkernels {
namespace {

// Units u .. u + 3 into two accumulators per row (acc01: units 0 and 1, acc23: 2 and 3), so a
// block's dependent vpdpbusd chain is two long instead of four.
template <int MC, bool kDirect>
inline void quad_dot(__m512i* acc01, __m512i* acc23, const uint8_t* quad, const int8_t* const* x, int64_t u,
                     UnitScales unit_scales) {
  const __m512i q = _mm512_broadcast_i64x4(load_quad(quad));
  const __m512i nibble = _mm512_set1_epi8(15);
  const __m512i c01 = _mm512_shuffle_epi8(
      pair_tables(unit_scale<kDirect>(unit_scales, u), unit_scale<kDirect>(unit_scales, u + 1)), _mm512_and_si512(q, nibble));
  const __m512i c23 = _mm512_shuffle_epi8(
      pair_tables(unit_scale<kDirect>(unit_scales, u + 2), unit_scale<kDirect>(unit_scales, u + 3)),
      _mm512_and_si512(_mm512_srli_epi16(q, 4), nibble));
  for (int m = 0; m < MC; ++m) {
    const int8_t* xu = x[m] + u * kQuantUnit;
    acc01[m] = _mm512_dpbusd_epi32(acc01[m], c01, _mm512_loadu_si512(xu));
    acc23[m] = _mm512_dpbusd_epi32(acc23[m], c23, _mm512_loadu_si512(xu + 2 * kQuantUnit));
  }
}

// The first `count` (< 4) units of a row's last, partial quad, one 256-bit step each (a
// 512-bit activation load could run past the row).
template <int MC>
inline void partial_quad_dot(__m512i* acc, const uint8_t* quad, const int8_t* const* x, int64_t u, int count,
                             UnitScales unit_scales) {
  const __m256i q = load_quad(quad), nibble = _mm256_set1_epi8(15);
  for (int i = 0; i < count; ++i) {
    const __m256i nibbles = i < 2 ? _mm256_and_si256(q, nibble) : _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
    const __m256i codes = scaled_codes(nibbles, i & 1, static_cast<int16_t>(unit_scales[u + i]));
    for (int m = 0; m < MC; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m] + (u + i) * kQuantUnit));
      acc[m] = _mm512_add_epi32(acc[m], _mm512_zextsi256_si512(_mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xv)));
    }
  }
}

inline __m256i fold_halves(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// The 8 int32 lanes of a block: both accumulators' halves added (exact, any order).
inline __m256i block_lanes(__m512i acc01, __m512i acc23) { return fold_halves(_mm512_add_epi32(acc01, acc23)); }

template <int MC, bool kDirect>
void dense_pass(const uint8_t* lo, const int8_t* const* x, UnitScales unit_scales, int64_t units,
                const float* const* dx, float* const* lane) {
  auto quads_at = [&](int64_t u) { return lo + u / kQuantQuadUnits * kQuantQuadBytes; };
  auto full = [&](int64_t u, __m256i* ints) {
    __m512i acc01[MC], acc23[MC];
    for (int m = 0; m < MC; ++m) acc01[m] = acc23[m] = _mm512_setzero_si512();
    quad_dot<MC, kDirect>(acc01, acc23, quads_at(u), x, u, unit_scales);
    quad_dot<MC, kDirect>(acc01, acc23, quads_at(u) + kQuantQuadBytes, x, u + kQuantQuadUnits, unit_scales);
    for (int m = 0; m < MC; ++m) ints[m] = block_lanes(acc01[m], acc23[m]);
  };
  auto tail = [&](int64_t u, int64_t count, __m256i* ints) {
    __m512i acc01[MC], acc23[MC];
    for (int m = 0; m < MC; ++m) acc01[m] = acc23[m] = _mm512_setzero_si512();
    const int64_t end = u + count;
    for (; u + kQuantQuadUnits <= end; u += kQuantQuadUnits) quad_dot<MC, kDirect>(acc01, acc23, quads_at(u), x, u, unit_scales);
    if (u < end) partial_quad_dot<MC>(acc01, quads_at(u), x, u, static_cast<int>(end - u), unit_scales);
    for (int m = 0; m < MC; ++m) ints[m] = block_lanes(acc01[m], acc23[m]);
  };
  dense_blocks<MC>(units, dx, lane, full, tail);
}

struct Avx512VnniOps : Avx2Common {
  template <int MC>
  static void row_dot(const uint8_t* lo, const int8_t* const* x, UnitScales unit_scales, int64_t units,
                      const float* const* dx, float* const* lane) {
    if (unit_scales.shift == 0) {
      dense_pass<MC, true>(lo, x, unit_scales, units, dx, lane);
    } else {
      dense_pass<MC, false>(lo, x, unit_scales, units, dx, lane);
    }
  }
};

}  // namespace

bool quant_linear_rows_avx512_vnni(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx512VnniOps>(args, begin, end, scratch);
}

}  // namespace lmkernels
