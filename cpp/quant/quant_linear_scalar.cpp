// Scalar path of quant_linear: the reference the SIMD paths must match bit for bit.
#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

struct ScalarOps {
  // Each block's whole sum in lane 0: any split over the 8 lanes reduces to the same integer.
  template <int MC>
  static void row_lanes(const uint8_t* lo, const uint8_t* high, const int8_t* const* x, const int16_t* unit_scales,
                        int64_t units, int32_t* const* lanes) {
    for (int m = 0; m < MC; ++m) {
      for (int64_t b = 0; b * kQuantSuperUnits < units; ++b) {
        int32_t sum = 0;
        for (int64_t u = b * kQuantSuperUnits; u < units && u < (b + 1) * kQuantSuperUnits; ++u) {
          int32_t dot = 0;
          for (int j = 0; j < kQuantUnit; ++j) {
            dot += (unit_code(lo, u, j) | high[u * kQuantUnit + j]) * x[m][u * kQuantUnit + j];
          }
          sum += unit_scales[u] * dot;
        }
        lanes[m][8 * b] = sum;
        for (int l = 1; l < 8; ++l) lanes[m][8 * b + l] = 0;
      }
    }
  }

  template <int UPG>
  static void expand_high(const uint8_t* plane, uint64_t first, int64_t count, const int16_t* hi_groups, uint8_t* high) {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t unit = high_unit<UPG>(hi_groups, i);
      const uint64_t h = first + static_cast<uint64_t>(i);
      for (int j = 0; j < kQuantUnit; ++j) {
        high[unit * kQuantUnit + j] = static_cast<uint8_t>(
            4 * unit_code(plane + h / kQuantQuadUnits * kQuantQuadBytes, static_cast<int>(h % kQuantQuadUnits), j));
      }
    }
  }

  template <int UPG>
  static void clear_high(int64_t count, const int16_t* hi_groups, uint8_t* high) {
    for (int64_t i = 0; i < count; ++i) std::memset(high + high_unit<UPG>(hi_groups, i) * kQuantUnit, 0, kQuantUnit);
  }

  static void reduce_lanes(const int32_t* lanes, int64_t blocks, int32_t* isum) {
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t sum = 0;
      for (int l = 0; l < 8; ++l) sum += lanes[8 * b + l];
      isum[b] = sum;
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
