// Loads of 8 (AVX2) or 16 (AVX-512) storage elements widened to fp32, for the per-ISA
// translation units. Include only from files compiled with the matching target flags;
// internal linkage (see cpu_isa.h).
#pragma once

#include <immintrin.h>

#include "lmkernels/dtype.h"

namespace lmkernels {
namespace {

#if defined(__AVX2__) && defined(__F16C__)
template <StorageDtype D>
__m256 load8_f32(const void* p) {
  if constexpr (D == StorageDtype::kFloat32) {
    return _mm256_loadu_ps(static_cast<const float*>(p));
  } else {
    const __m128i raw = _mm_loadu_si128(static_cast<const __m128i*>(p));
    if constexpr (D == StorageDtype::kBFloat16) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    } else {
      return _mm256_cvtph_ps(raw);
    }
  }
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// Lanes outside `mask` read as 0 and touch no memory.
template <StorageDtype D>
__m512 load16_f32(const void* p, __mmask16 mask = 0xFFFF) {
  if constexpr (D == StorageDtype::kFloat32) {
    return _mm512_maskz_loadu_ps(mask, p);
  } else {
    const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
    if constexpr (D == StorageDtype::kBFloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    } else {
      return _mm512_cvtph_ps(raw);
    }
  }
}
#endif

}  // namespace
}  // namespace lmkernels
