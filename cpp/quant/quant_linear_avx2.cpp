// AVX2 path of quant_linear. A quad (4 units, 32 bytes) is loaded once. On Zen 1 the
// multiplies (maddubs, madd: one pipe, two cycles per 256-bit op) and the sheer µop count
// bound this loop, so the unit's scale is folded into its codes by a table lookup instead of
// a madd per unit: a byte's low nibble holds units 0 and 1 of the quad, its high nibble units
// 2 and 3, and pshufb with a 16-entry table of (code of unit a or b) * scale gives a unit's
// scaled codes (at most 3 * 15) with one and per two units and no per-unit shift. maddubs
// against the int8 activations stays below 2 * 45 * 127 per int16 lane, so two units add in
// int16 before one madd widens them: the same int32 lanes as scale * madd(maddubs(codes, x)).
#include "quant/quant_activations.h"
#include "quant/quant_linear_avx2_parts.h"

namespace lmkernels {
namespace {

template <int MC>
inline void accumulate_unit(__m256i* acc, __m256i codes, const int8_t* const* x, int64_t unit, int16_t scale) {
  const __m256i s16 = _mm256_set1_epi16(scale);
  for (int m = 0; m < MC; ++m) acc[m] = _mm256_add_epi32(acc[m], weighted_dot(codes, x[m] + unit * kQuantUnit, s16));
}

inline __m256i low_codes(__m256i shifted) { return _mm256_and_si256(shifted, _mm256_set1_epi8(3)); }

inline __m256i unit_products(__m256i scaled, const int8_t* x) {
  return _mm256_maddubs_epi16(scaled, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}

template <int MC>
inline void accumulate_quad(__m256i* acc, __m256i q, const int8_t* const* x, int64_t u, UnitScales unit_scales) {
  const __m256i nibble = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  const __m256i n01 = _mm256_and_si256(q, nibble), n23 = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
  const __m256i c0 = scaled_codes(n01, 0, unit_scales[u]), c1 = scaled_codes(n01, 1, unit_scales[u + 1]);
  const __m256i c2 = scaled_codes(n23, 0, unit_scales[u + 2]), c3 = scaled_codes(n23, 1, unit_scales[u + 3]);
  for (int m = 0; m < MC; ++m) {
    const int8_t* xu = x[m] + u * kQuantUnit;
    const __m256i p01 = _mm256_add_epi16(unit_products(c0, xu), unit_products(c1, xu + kQuantUnit));
    const __m256i p23 = _mm256_add_epi16(unit_products(c2, xu + 2 * kQuantUnit), unit_products(c3, xu + 3 * kQuantUnit));
    acc[m] = _mm256_add_epi32(acc[m], _mm256_add_epi32(_mm256_madd_epi16(p01, ones), _mm256_madd_epi16(p23, ones)));
  }
}

struct Avx2Ops : Avx2Common {
  // Whole blocks fully unrolled (two quads).
  template <int MC>
  static void row_dot(const uint8_t* lo, const int8_t* const* x, const int8_t* const* /*x_pairs*/,
                      UnitScales unit_scales, int64_t units,
                      const float* const* dx, float* const* lane) {
    auto quads_at = [&](int64_t u) { return lo + u / kQuantQuadUnits * kQuantQuadBytes; };
    auto full = [&](int64_t u, __m256i* acc) {
      for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_si256();
      accumulate_quad<MC>(acc, load_quad(quads_at(u)), x, u, unit_scales);
      accumulate_quad<MC>(acc, load_quad(quads_at(u) + kQuantQuadBytes), x, u + kQuantQuadUnits, unit_scales);
    };
    auto tail = [&](int64_t u, int64_t count, __m256i* acc) {
      for (int m = 0; m < MC; ++m) acc[m] = _mm256_setzero_si256();
      const int64_t end = u + count;
      for (; u + kQuantQuadUnits <= end; u += kQuantQuadUnits) accumulate_quad<MC>(acc, load_quad(quads_at(u)), x, u, unit_scales);
      if (u == end) return;  // no partial quad (a load past it could run off the plane)
      const __m256i q = load_quad(quads_at(u));
      for (int i = 0; u + i < end; ++i) {
        accumulate_unit<MC>(acc, low_codes(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * i))), x, u + i, unit_scales[u + i]);
      }
    };
    dense_blocks<MC>(lo, units, dx, lane, full, tail);
  }
};

}  // namespace

bool quant_linear_rows_avx2(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx2Ops>(args, begin, end, scratch);
}

void quantize_activation_rows_avx2(const ActivationQuantArgs& args, int64_t begin, int64_t end, float* row) {
  quantize_activations(args, begin, end, row);
}

void round_outputs_avx2(const float* y, int64_t count, StorageDtype dtype, void* out) {
  round_outputs(y, count, dtype, out);
}

}  // namespace lmkernels
