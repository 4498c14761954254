// AVX-512 path of the attention engine: 16 lanes, 8-row register blocks.
#include <immintrin.h>

#include "attention/engine_kernel.h"

namespace lmkernels::attention {
namespace {

struct Avx512Vec {
  using T = __m512;
  static constexpr int W = 16;
  static constexpr int R = 8;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T round(T x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T pow2(T n) {
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_castsi512_ps(bits);
  }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
};

}  // namespace

void run_item_avx512(const Args& args, const WorkItem& item, float* scratch) {
  run_item<Avx512Vec>(args, item, scratch);
}

}  // namespace lmkernels::attention
