// AVX2 + FMA + F16C path of rope_rerotate_: 8 pairs a step, scalar tails.
#include <immintrin.h>

#include "lmkernels/simd_load.h"
#include "rope_rerotate_rows.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
void store8(void* p, __m256 v) {
  if constexpr (D == StorageDtype::kFloat32) {
    _mm256_storeu_ps(static_cast<float*>(p), v);
  } else if constexpr (D == StorageDtype::kBFloat16) {
    // Round to nearest even, NaN -> 0x7FC0: the same bits as f32_to_bf16.
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
    // Values fit in 16 bits, so unsigned saturation packs them exactly.
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(static_cast<__m128i*>(p), packed);
  } else {
    _mm_storeu_si128(static_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
}

template <StorageDtype D>
constexpr int elem_bytes() {
  return D == StorageDtype::kFloat32 ? 4 : 2;
}

struct Avx2Ops {
  template <StorageDtype D>
  static void neox(void* head, const float* cos_t, const float* sin_t, int half) {
    auto* x_ptr = static_cast<char*>(head);
    auto* y_ptr = x_ptr + half * elem_bytes<D>();
    int i = 0;
    for (; i + 8 <= half; i += 8) {
      const __m256 x = load8_f32<D>(x_ptr + i * elem_bytes<D>());
      const __m256 y = load8_f32<D>(y_ptr + i * elem_bytes<D>());
      const __m256 c = _mm256_loadu_ps(cos_t + i);
      const __m256 s = _mm256_loadu_ps(sin_t + i);
      // Same operations as rope::rotate_pair: x c - (y s), y c + (x s), each one fma.
      store8<D>(x_ptr + i * elem_bytes<D>(), _mm256_fmsub_ps(x, c, _mm256_mul_ps(y, s)));
      store8<D>(y_ptr + i * elem_bytes<D>(), _mm256_fmadd_ps(y, c, _mm256_mul_ps(x, s)));
    }
    rotate_head_neox_scalar<D>(head, cos_t, sin_t, i, half);
  }
  template <StorageDtype D>
  static void gptj(void* head, const float* cos_t, const float* sin_t, int rot) {
    auto* p = static_cast<char*>(head);
    int i = 0;
    for (; i + 8 <= rot; i += 8) {
      const __m256 v = load8_f32<D>(p + i * elem_bytes<D>());
      const __m256 c = _mm256_loadu_ps(cos_t + i);
      const __m256 s = _mm256_loadu_ps(sin_t + i);
      // Lanes (x, y) -> (y, x); with sin laid out as (-s, s) one fma rotates every pair.
      const __m256 swapped = _mm256_permute_ps(v, 0xB1);
      store8<D>(p + i * elem_bytes<D>(), _mm256_fmadd_ps(v, c, _mm256_mul_ps(swapped, s)));
    }
    rotate_head_gptj_scalar<D>(head, cos_t, sin_t, i / 2, rot);
  }
};

}  // namespace

void rope_rerotate_rows_avx2(const RopeRerotateArgs& args, int64_t begin, int64_t end,
                             float* table) {
  rerotate_rows<Avx2Ops>(args, begin, end, table);
}

}  // namespace lmkernels
