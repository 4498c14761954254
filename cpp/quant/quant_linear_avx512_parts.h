// The AVX-512 pieces that quant_linear's VNNI and AMX paths share. Included by those
// translation units only (AVX-512 flags).
#pragma once

#include "quant/quant_linear_avx2_parts.h"

namespace lmkernels {
namespace {

// [table of `pair` 0 with scale a | table of pair 1 with scale b], each 16-byte table
// repeated over its half's two 128-bit lanes (pshufb looks up within a 128-bit lane). With a
// quad broadcast to both halves, pshufb(pair_tables(sc0, sc1), quad & 15) gives units 0 and 1
// of the quad, each times its scale, as 64 consecutive bytes (and quad >> 4 units 2 and 3).
inline __m512i pair_tables(int a, int b) {
  const __m512i low = _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(kScaledCodes.t[0][a])));
  return _mm512_mask_broadcast_i32x4(low, 0xFF00, _mm_load_si128(reinterpret_cast<const __m128i*>(kScaledCodes.t[1][b])));
}

// Unit u's scale code; with one unit per group (kDirect) the scale bytes are the units'.
template <bool kDirect>
inline int unit_scale(UnitScales scales, int64_t u) {
  return kDirect ? scale_code(scales.packed[u]) : scales[u];
}

}  // namespace
}  // namespace lmkernels
