// Scalar path of rope_rerotate_: the reference every SIMD path must match bit for bit.
#include "rope_rerotate_rows.h"

namespace lmkernels {
namespace {

struct ScalarOps {
  template <StorageDtype D>
  static void neox(void* head, const float* cos_t, const float* sin_t, int half) {
    rotate_head_neox_scalar<D>(head, cos_t, sin_t, 0, half);
  }
  template <StorageDtype D>
  static void gptj(void* head, const float* cos_t, const float* sin_t, int rot) {
    rotate_head_gptj_scalar<D>(head, cos_t, sin_t, 0, rot);
  }
};

}  // namespace

void rope_rerotate_rows_scalar(const RopeRerotateArgs& args, int64_t begin, int64_t end,
                               float* table) {
  rerotate_rows<ScalarOps>(args, begin, end, table);
}

}  // namespace lmkernels
