// Scalar path of quant_linear: the reference the SIMD paths must match bit for bit. It keeps
// the SIMD paths' 8 lanes (lane j: weights 4j .. 4j + 3 of every unit) so that the float steps
// are the same.
#include <cstring>

#include "quant/quant_activations.h"
#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

// The 8 lane sums of one unit's 32 codes (unit `unit_in_quad` of `quad`) against its
// activations, through the word helpers the CUDA GEMV uses (so these tests cover them).
LMK_INLINE void unit_lanes(const uint8_t* quad, int unit_in_quad, const int8_t* x, int32_t scale, int32_t* lanes) {
  for (int j = 0; j < 8; ++j) {
    uint32_t codes, xs;
    std::memcpy(&codes, quad + 4 * j, 4);
    std::memcpy(&xs, x + 4 * j, 4);
    lanes[j] += scale * code_word_dot(unit_code_word(codes, unit_in_quad), xs, 0);
  }
}

LMK_INLINE void accumulate_lanes(const int32_t* ints, float dx, float* lane) {
  for (int j = 0; j < 8; ++j) lane[j] = lane[j] + static_cast<float>(ints[j]) * dx;
}

struct ScalarOps {
  template <int MC>
  static void row_dot(const uint8_t* lo, const int8_t* const* x, const int8_t* const* /*x_pairs*/,
                      UnitScales unit_scales, int64_t units,
                      const float* const* dx, float* const* lane) {
    for (int m = 0; m < MC; ++m) {
      for (int j = 0; j < 8; ++j) lane[m][j] = 0.0f;
      for (int64_t b = 0; b * kQuantSuperUnits < units; ++b) {
        if (m == 0) prefetch_low_plane(lo + b * kQuantSuperBlockLowBytes);
        int32_t ints[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t u = b * kQuantSuperUnits; u < units && u < (b + 1) * kQuantSuperUnits; ++u) {
          unit_lanes(lo + u / kQuantQuadUnits * kQuantQuadBytes, static_cast<int>(u % kQuantQuadUnits),
                     x[m] + u * kQuantUnit, unit_scales[u], ints);
        }
        accumulate_lanes(ints, dx[m][b], lane[m]);
      }
    }
  }

  template <int UPG, int MC, bool kPairs>
  static void high_dot(const uint8_t* plane, uint64_t first, int64_t count, const int16_t* hi_groups,
                       UnitScales unit_scales, const int8_t* const* x, const float* const* dx,
                       float* const* lane, const uint32_t* pair_offsets) {
    float odd[MC][8] = {};  // the lanes of units at odd plane positions; even ones go to lane
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t h = first + static_cast<uint64_t>(i);
      const uint8_t* quad = plane + h / kQuantQuadUnits * kQuantQuadBytes;
      const uint64_t unit = high_unit<UPG>(hi_groups, static_cast<uint64_t>(i));
      for (int m = 0; m < MC; ++m) {
        int32_t ints[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        unit_lanes(quad, static_cast<int>(h % kQuantQuadUnits), x[m] + unit_x_offset<kPairs>(unit, pair_offsets),
                   4 * unit_scales[static_cast<int64_t>(unit)], ints);
        accumulate_lanes(ints, dx[m][unit / kQuantSuperUnits], h % 2 ? odd[m] : lane[m]);
      }
    }
    for (int m = 0; m < MC; ++m) {
      for (int j = 0; j < 8; ++j) lane[m][j] = lane[m][j] + odd[m][j];
    }
  }

  static void block_scales(const float* d_dmin, const float* xscale, int64_t S, float* dx) {
    for (int64_t b = 0; b < quant_combine_stride(S); ++b) dx[b] = d_dmin[2 * b] * xscale[b];
  }

  static float min_term(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, const float* d_dmin,
                        const float* xscale, int32_t* msum) {
    min_sums_scalar(scales, xsum, s, 0, msum);
    return min_term_lanes(msum, d_dmin, xscale, s.super_blocks);
  }

  static void decode_halves(const uint16_t* src, float* dst, int64_t count) {
    for (int64_t i = 0; i < count; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

}  // namespace

bool quant_linear_rows_scalar(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<ScalarOps>(args, begin, end, scratch);
}

void quantize_activation_rows_scalar(const ActivationQuantArgs& args, int64_t begin, int64_t end, float* row) {
  quantize_activations(args, begin, end, row);
}

void round_outputs_scalar(const float* y, int64_t count, StorageDtype dtype, void* out) {
  round_outputs(y, count, dtype, out);
}

}  // namespace lmkernels
