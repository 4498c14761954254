// Scalar path of quant_linear: the reference the SIMD paths must match bit for bit.
#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

struct ScalarOps {
  template <int UPG>
  static void expand_high(const uint8_t* plane, uint64_t first, int64_t count, const int16_t* hi_groups, int64_t dummy,
                          uint8_t* high, int32_t* written) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t unit = hi_groups[i / UPG] * UPG + i % UPG;
      const uint64_t h = first + static_cast<uint64_t>(i);
      for (int j = 0; j < kQuantUnit; ++j) {
        high[unit * kQuantUnit + j] = static_cast<uint8_t>(
            4 * unit_code(plane + h / kQuantQuadUnits * kQuantQuadBytes, static_cast<int>(h % kQuantQuadUnits), j));
      }
      written[i] = static_cast<int32_t>(unit);
    }
  }

  static void clear_unit(uint8_t* unit) { std::memset(unit, 0, kQuantUnit); }

  template <int MC>
  static void block_dots(const uint8_t* quads, const uint8_t* high, const int8_t* const* x, const int16_t* unit_scales,
                         int units, int32_t* dots) {
    for (int m = 0; m < MC; ++m) {
      int32_t sum = 0;
      for (int u = 0; u < units; ++u) {
        int32_t dot = 0;
        for (int j = 0; j < kQuantUnit; ++j) {
          const int code = unit_code(quads + u / kQuantQuadUnits * kQuantQuadBytes, u % kQuantQuadUnits, j) | high[u * kQuantUnit + j];
          dot += code * x[m][u * kQuantUnit + j];
        }
        sum += unit_scales[u] * dot;
      }
      dots[m] = sum;
    }
  }

  static void min_sums(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, int32_t* msum) {
    min_sums_scalar(scales, xsum, s, 0, msum);
  }

  static float combine(const int32_t* isum, const int32_t* msum, const float* d_dmin, const float* xscale, int64_t S) {
    return combine_lanes(isum, msum, d_dmin, xscale, S);
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
