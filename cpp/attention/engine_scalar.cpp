// Scalar path of the attention engine: the reference the SIMD paths match bit for bit.
#include <cmath>

#include "attention/engine_kernel.h"

namespace lmkernels::attention {
namespace {

struct ScalarVec {
  using T = float;
  static constexpr int W = 1;
  static constexpr int R = 1;
  static T zero() { return 0.0f; }
  static T set1(float x) { return x; }
  static T load(const float* p) { return *p; }
  static void store(float* p, T v) { *p = v; }
  static T fma(T a, T b, T c) { return std::fma(a, b, c); }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T max(T a, T b) { return a > b ? a : b; }  // maxps: NaN in a gives b
  static T round(T x) { return std::nearbyint(x); }
  static T pow2(T n) { return f32_from_bits(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23); }
  static T add(T a, T b) { return a + b; }
};

}  // namespace

void run_item_scalar(const Args& args, const WorkItem& item, float* scratch) {
  run_item<ScalarVec>(args, item, scratch);
}

}  // namespace lmkernels::attention
