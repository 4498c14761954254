// AVX2 + FMA + F16C path of kv_deviation: two ymm hold lanes 0-7 and 8-15.
#include <immintrin.h>

#include "kv_deviation_rows.h"
#include "lmkernels/simd_load.h"

namespace lmkernels {
namespace {

struct Avx2Ops {
  template <StorageDtype D>
  static void add_chunk(float* lanes, const void* a, const void* b) {
    constexpr int bytes = D == StorageDtype::kFloat32 ? 4 : 2;
    const char* pa = static_cast<const char*>(a);
    const char* pb = static_cast<const char*>(b);
    for (int half = 0; half < 2; ++half) {
      const __m256 diff = _mm256_sub_ps(load8_f32<D>(pa + 8 * half * bytes), load8_f32<D>(pb + 8 * half * bytes));
      _mm256_store_ps(lanes + 8 * half, _mm256_fmadd_ps(diff, diff, _mm256_load_ps(lanes + 8 * half)));
    }
  }
};

}  // namespace

void kv_deviation_rows_avx2(const KvDeviationArgs& args, int64_t begin, int64_t end) {
  deviation_rows<Avx2Ops>(args, begin, end);
}

}  // namespace lmkernels
