// AVX-512 path of kv_deviation: one zmm holds the 16 lanes.
#include <immintrin.h>

#include "kv_deviation_rows.h"

namespace lmkernels {
namespace {

template <StorageDtype D>
__m512 load16(const void* p) {
  if constexpr (D == StorageDtype::kFloat32) {
    return _mm512_loadu_ps(p);
  } else {
    const __m256i raw = _mm256_loadu_si256(static_cast<const __m256i*>(p));
    if constexpr (D == StorageDtype::kBFloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    } else {
      return _mm512_cvtph_ps(raw);
    }
  }
}

struct Avx512Ops {
  template <StorageDtype D>
  static void add_chunk(float* lanes, const void* a, const void* b) {
    const __m512 diff = _mm512_sub_ps(load16<D>(a), load16<D>(b));
    _mm512_store_ps(lanes, _mm512_fmadd_ps(diff, diff, _mm512_load_ps(lanes)));
  }
};

}  // namespace

void kv_deviation_rows_avx512(const KvDeviationArgs& args, int64_t begin, int64_t end) {
  deviation_rows<Avx512Ops>(args, begin, end);
}

}  // namespace lmkernels
