// AVX-512 path of kv_deviation: one zmm holds the 16 lanes.
#include <immintrin.h>

#include "kv_deviation_rows.h"
#include "lmkernels/simd_load.h"

namespace lmkernels {
namespace {

struct Avx512Ops {
  template <StorageDtype D>
  static void add_chunk(float* lanes, const void* a, const void* b) {
    const __m512 diff = _mm512_sub_ps(load16_f32<D>(a), load16_f32<D>(b));
    _mm512_store_ps(lanes, _mm512_fmadd_ps(diff, diff, _mm512_load_ps(lanes)));
  }
};

}  // namespace

void kv_deviation_rows_avx512(const KvDeviationArgs& args, int64_t begin, int64_t end) {
  deviation_rows<Avx512Ops>(args, begin, end);
}

}  // namespace lmkernels
