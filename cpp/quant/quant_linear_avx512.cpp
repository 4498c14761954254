// AVX-512 path of quant_linear: two units (64 weights) per 512-bit step. The quad is
// broadcast to both halves and each 16-bit lane shifted by its unit's 2i (vpsrlvw), then
// maddubs + madd as on AVX2; the halves are added into the AVX2 lane layout (units u and
// u + 1 of a block: the same integer lanes), and the float steps, the high pass and the min
// term are the shared AVX2 pieces.
#include "quant/quant_activations.h"
#include "quant/quant_linear_avx2_parts.h"

namespace lmkernels {
namespace {

// Units (first, first + 1) of a quad broadcast to both 256-bit halves, one per half.
inline __m512i quad_unit_pair(__m512i quad2, __m512i shifts) {
  return _mm512_and_si512(_mm512_srlv_epi16(quad2, shifts), _mm512_set1_epi8(3));
}

template <int MC>
inline void accumulate_pair(__m512i* acc, __m512i codes, const int8_t* const* x, int64_t u, UnitScales scales) {
  const __m512i s16 = _mm512_inserti64x4(_mm512_set1_epi16(scales[u]), _mm256_set1_epi16(scales[u + 1]), 1);
  for (int m = 0; m < MC; ++m) {
    const __m512i xv = _mm512_loadu_si512(x[m] + u * kQuantUnit);
    acc[m] = _mm512_add_epi32(acc[m], _mm512_madd_epi16(_mm512_maddubs_epi16(codes, xv), s16));
  }
}

struct Avx512Ops : Avx2Common {
  template <int MC>
  static void row_dot(const uint8_t* lo, const int8_t* const* x, const int8_t* const* /*x_pairs*/,
                      UnitScales unit_scales, int64_t units,
                      const float* const* dx, float* const* lane) {
    auto block = [&](int64_t u0, int64_t count, __m256i* ints) {
      block_ints<MC>(lo + u0 / kQuantQuadUnits * kQuantQuadBytes, x, unit_scales, u0, static_cast<int>(count), ints);
    };
    dense_blocks<MC>(lo, units, dx, lane, [&](int64_t u0, __m256i* ints) { block(u0, kQuantSuperUnits, ints); }, block);
  }

  // The int lanes of units u0 .. u0 + units - 1 (one super-block).
  template <int MC>
  static void block_ints(const uint8_t* quads, const int8_t* const* x, UnitScales unit_scales, int64_t u0,
                         int units, __m256i* ints) {
    const __m512i shifts01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i shifts23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    __m512i acc[MC];
    for (int m = 0; m < MC; ++m) acc[m] = _mm512_setzero_si512();
    int u = 0;
    for (; u + kQuantQuadUnits <= units; u += kQuantQuadUnits) {
      const __m512i q = _mm512_broadcast_i64x4(load_quad(quads + u / kQuantQuadUnits * kQuantQuadBytes));
      accumulate_pair<MC>(acc, quad_unit_pair(q, shifts01), x, u0 + u, unit_scales);
      accumulate_pair<MC>(acc, quad_unit_pair(q, shifts23), x, u0 + u + 2, unit_scales);
    }
    for (int m = 0; m < MC; ++m) {
      __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(acc[m]), _mm512_extracti64x4_epi64(acc[m], 1));
      for (int i = u; i < units; ++i) {
        const __m256i low = _mm256_srl_epi16(load_quad(quads + u / kQuantQuadUnits * kQuantQuadBytes), _mm_cvtsi32_si128(2 * (i - u)));
        half = _mm256_add_epi32(half, weighted_dot(_mm256_and_si256(low, _mm256_set1_epi8(3)), x[m] + (u0 + i) * kQuantUnit,
                                                   _mm256_set1_epi16(unit_scales[u0 + i])));
      }
      ints[m] = half;
    }
  }
};

}  // namespace

bool quant_linear_rows_avx512(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx512Ops>(args, begin, end, scratch);
}

void quantize_activation_rows_avx512(const ActivationQuantArgs& args, int64_t begin, int64_t end, float* row) {
  quantize_activations(args, begin, end, row);
}

void round_outputs_avx512(const float* y, int64_t count, StorageDtype dtype, void* out) {
  round_outputs(y, count, dtype, out);
}

}  // namespace lmkernels
