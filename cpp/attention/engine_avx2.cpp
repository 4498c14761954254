// AVX2 + FMA path of the attention engine: 8 lanes, 4-row register blocks.
#include <immintrin.h>

#include "attention/engine_kernel.h"

namespace lmkernels::attention {
namespace {

struct Avx2Vec {
  using T = __m256;
  static constexpr int W = 8;
  static constexpr int R = 4;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T round(T x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static T pow2(T n) {
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_castsi256_ps(bits);
  }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
};

}  // namespace

void run_item_avx2(const Args& args, const WorkItem& item, float* scratch) {
  run_item<Avx2Vec>(args, item, scratch);
}

}  // namespace lmkernels::attention
