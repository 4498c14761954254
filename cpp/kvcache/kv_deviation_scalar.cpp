// Scalar path of kv_deviation: the reference the SIMD paths match bit for bit.
#include "kv_deviation_rows.h"

namespace lmkernels {
namespace {
struct ScalarOps {
  template <StorageDtype D>
  static void add_chunk(float* lanes, const void* a, const void* b) { add_chunk_scalar<D>(lanes, a, b); }
};
}  // namespace

void kv_deviation_rows_scalar(const KvDeviationArgs& args, int64_t begin, int64_t end) {
  deviation_rows<ScalarOps>(args, begin, end);
}

}  // namespace lmkernels
