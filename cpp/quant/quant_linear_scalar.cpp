// Scalar path of quant_linear: the reference the SIMD paths must match bit for bit.
#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

struct ScalarOps {
  static int32_t dot(const uint8_t* quad, int index, const int8_t* x) {
    int32_t sum = 0;
    for (int i = 0; i < kQuantUnit; ++i) sum += unit_code(quad, index, i) * x[i];
    return sum;
  }

  template <int MC>
  static void unit_dots(const uint8_t* quad, int index, const int8_t* const* x, int scale, int32_t* const* lanes) {
    for (int m = 0; m < MC; ++m) lanes[m][0] += scale * dot(quad, index, x[m]);
  }

  template <int MC>
  static void block_dots(const uint8_t* quads, const int8_t* const* x, const int16_t* unit_scales, int units,
                         const int32_t* const* lanes, int32_t* dots) {
    for (int m = 0; m < MC; ++m) {
      int32_t sum = 0;
      for (int l = 0; l < 8; ++l) sum += lanes[m][l];
      for (int u = 0; u < units; ++u) {
        sum += unit_scales[u] * dot(quads + u / kQuantQuadUnits * kQuantQuadBytes, u % kQuantQuadUnits, x[m] + u * kQuantUnit);
      }
      dots[m] = sum;
    }
  }

  static int32_t min_dot(const uint8_t* scales, const int16_t* xsum, int groups) {
    int32_t sum = 0;
    for (int g = 0; g < groups; ++g) sum += min_code(scales[g]) * xsum[g];
    return sum;
  }

  static void decode_unit_scales(const uint8_t* scales, int64_t groups, int64_t units_per_group, int16_t* out) {
    decode_unit_scales_scalar(scales, 0, groups, units_per_group, out);
  }

  static void decode_halves(const uint16_t* src, float* dst, int64_t count) {
    for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

}  // namespace

bool quant_linear_rows_scalar(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<ScalarOps>(args, begin, end, scratch);
}

}  // namespace lmkernels
