// AVX-512 path of rope_rerotate_ (F/BW/VL/DQ): 16 pairs a step, masked tails.
#include <immintrin.h>

#include "lmkernels/simd_load.h"
#include "rope_rerotate_rows.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
void store16(void* p, __m512 v, __mmask16 m) {
  if constexpr (D == StorageDtype::kFloat32) {
    _mm512_mask_storeu_ps(p, m, v);
  } else if constexpr (D == StorageDtype::kBFloat16) {
    // Round to nearest even, NaN -> 0x7FC0: the same bits as f32_to_bf16.
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i bias = _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(r));
  } else {
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

template <StorageDtype D>
constexpr int elem_bytes() {
  return D == StorageDtype::kFloat32 ? 4 : 2;
}

__mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

struct Avx512Ops {
  template <StorageDtype D>
  static void neox(void* head, const float* cos_t, const float* sin_t, int half) {
    auto* x_ptr = static_cast<char*>(head);
    auto* y_ptr = x_ptr + half * elem_bytes<D>();
    for (int i = 0; i < half; i += 16) {
      const __mmask16 m = tail_mask(half - i);
      const __m512 x = load16_f32<D>(x_ptr + i * elem_bytes<D>(), m);
      const __m512 y = load16_f32<D>(y_ptr + i * elem_bytes<D>(), m);
      const __m512 c = _mm512_maskz_loadu_ps(m, cos_t + i);
      const __m512 s = _mm512_maskz_loadu_ps(m, sin_t + i);
      // Same operations as rope::rotate_pair: x c - (y s), y c + (x s), each one fma.
      const __m512 new_x = _mm512_fmsub_ps(x, c, _mm512_mul_ps(y, s));
      const __m512 new_y = _mm512_fmadd_ps(y, c, _mm512_mul_ps(x, s));
      store16<D>(x_ptr + i * elem_bytes<D>(), new_x, m);
      store16<D>(y_ptr + i * elem_bytes<D>(), new_y, m);
    }
  }
  template <StorageDtype D>
  static void gptj(void* head, const float* cos_t, const float* sin_t, int rot) {
    auto* p = static_cast<char*>(head);
    for (int i = 0; i < rot; i += 16) {
      const __mmask16 m = tail_mask(rot - i);
      const __m512 v = load16_f32<D>(p + i * elem_bytes<D>(), m);
      const __m512 c = _mm512_maskz_loadu_ps(m, cos_t + i);
      const __m512 s = _mm512_maskz_loadu_ps(m, sin_t + i);
      // Lanes (x, y) -> (y, x); with sin laid out as (-s, s) one fma rotates every pair.
      const __m512 swapped = _mm512_permute_ps(v, 0xB1);
      store16<D>(p + i * elem_bytes<D>(), _mm512_fmadd_ps(v, c, _mm512_mul_ps(swapped, s)), m);
    }
  }
};

}  // namespace

void rope_rerotate_rows_avx512(const RopeRerotateArgs& args, int64_t begin, int64_t end,
                               float* table) {
  rerotate_rows<Avx512Ops>(args, begin, end, table);
}

}  // namespace lmkernels
