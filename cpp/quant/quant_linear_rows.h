// The row loop of quant_linear, shared by the per-ISA translation units. Each ISA file
// defines `Ops` with
//   template <int MC> static void unit_dots(const uint8_t* quad, int index, const int8_t* const* x, int scale,
//                                           int32_t* const* lanes)
//     lanes[m][0:8] += 8 partial sums of scale * <codes of unit `index` (0..3) of the quad, x[m][0:32]>
//   template <int MC> static void block_dots(const uint8_t* quads, const int8_t* const* x, const int16_t* unit_scales,
//                                            int units, const int32_t* const* lanes, int32_t* dots)
//     dots[m] = sum of lanes[m][0:8] + sum over `units` consecutive units from the first quad of
//               unit_scales[u] * <codes, x[m] + 32 u>
//   static int32_t min_dot(const uint8_t* scales, const int16_t* xsum, int groups)
//     sum over groups of min_code(scales[g]) * xsum[g]
//   static void decode_halves(const uint16_t* src, float* dst, int64_t count)
//   static void decode_unit_scales(const uint8_t* scales, int64_t groups, int64_t units_per_group, int16_t* out)
// Everything else (scale decoding, the min term, the float combination) is here, once.
#pragma once

#include <cstdint>

#include "quant/quant_linear_kernel.h"

namespace lmkernels {
namespace {

struct RowScratch {
  int16_t* unit_scales;  // [U]
  float* d_dmin;         // [2 * S]
  int32_t* lanes;        // [kQuantRowChunk][S][8]: the high plane's partial sums
  int32_t* isum;         // [kQuantRowChunk][S]
  int32_t* msum;         // [kQuantRowChunk][S]
};

LMK_INLINE RowScratch carve_scratch(const QuantShape& s, void* scratch) {
  auto* base = static_cast<char*>(scratch);
  auto take = [&](int64_t bytes) {
    char* p = base;
    base += (bytes + 31) / 32 * 32;
    return p;
  };
  RowScratch r;
  r.d_dmin = reinterpret_cast<float*>(take(s.super_blocks * 8));
  r.lanes = reinterpret_cast<int32_t*>(take(kQuantRowChunk * s.super_blocks * 32));
  r.isum = reinterpret_cast<int32_t*>(take(kQuantRowChunk * s.super_blocks * 4));
  r.msum = reinterpret_cast<int32_t*>(take(kQuantRowChunk * s.super_blocks * 4));
  r.unit_scales = reinterpret_cast<int16_t*>(take(s.units * 2));
  return r;
}

LMK_INLINE void decode_unit_scales_scalar(const uint8_t* scales, int64_t begin, int64_t groups,
                                          int64_t units_per_group, int16_t* out) {
  for (int64_t g = begin; g < groups; ++g) {
    for (int64_t k = 0; k < units_per_group; ++k) out[g * units_per_group + k] = static_cast<int16_t>(scale_code(scales[g]));
  }
}

template <class Ops, int MC>
bool row_chunk(const QuantLinearArgs& a, int64_t n, int64_t m0, const RowScratch& rs) {
  const QuantShape& s = a.shape;
  const int64_t S = s.super_blocks, upg = s.units_per_group, xq_stride = S * kQuantSuperBlock;
  const uint8_t* scales = a.scales + n * s.groups;
  const int8_t* x[MC];
  for (int m = 0; m < MC; ++m) x[m] = a.xq + (m0 + m) * xq_stride;
  for (int64_t i = 0; i < MC * S * 8; ++i) rs.lanes[i] = 0;

  // The 4-bit groups' high planes, each added to its super-block's partial sums.
  bool ok = true;
  const int16_t* hi_groups = a.hi_groups + n * s.num_hi;
  const int64_t hi_first = n * s.hi_units;  // this row's first unit in the shared high plane
  for (int64_t j = 0; j < s.num_hi; ++j) {
    const int64_t g = hi_groups[j];
    if (g < 0 || g >= s.groups || (j > 0 && g <= hi_groups[j - 1])) {  // not strictly ascending in range
      ok = false;
      continue;
    }
    const int scale4 = 4 * scale_code(scales[g]);
    for (int64_t k = 0; k < upg; ++k) {
      const int64_t unit = g * upg + k;
      const int64_t b = unit / kQuantSuperUnits;
      const int8_t* xu[MC];
      int32_t* lanes[MC];
      for (int m = 0; m < MC; ++m) {
        xu[m] = x[m] + unit * kQuantUnit;
        lanes[m] = rs.lanes + (m * S + b) * 8;
      }
      const int64_t hi_unit = hi_first + j * upg + k;
      Ops::template unit_dots<MC>(a.codes_hi + hi_unit / kQuantQuadUnits * kQuantQuadBytes,
                                  static_cast<int>(hi_unit % kQuantQuadUnits), xu, scale4, lanes);
    }
  }

  // The dense low plane, one super-block at a time.
  const uint8_t* lo = a.codes_lo + n * s.lo_stride;
  for (int64_t b = 0; b < S; ++b) {
    const int64_t u0 = b * kQuantSuperUnits;
    const int units = static_cast<int>(s.units - u0 < kQuantSuperUnits ? s.units - u0 : kQuantSuperUnits);
    const int8_t* xb[MC];
    const int32_t* lanes[MC];
    for (int m = 0; m < MC; ++m) {
      xb[m] = x[m] + u0 * kQuantUnit;
      lanes[m] = rs.lanes + (m * S + b) * 8;
    }
    int32_t dots[MC];
    Ops::template block_dots<MC>(lo + u0 / kQuantQuadUnits * kQuantQuadBytes, xb, rs.unit_scales + u0, units, lanes,
                                 dots);
    for (int m = 0; m < MC; ++m) rs.isum[m * S + b] = dots[m];
  }

  // The min term: per super-block, the group min codes against the activation code sums.
  const int64_t groups_per_super = kQuantSuperBlock / s.group_size;
  for (int m = 0; m < MC; ++m) {
    const int16_t* xsum = a.xsum + (m0 + m) * s.groups;
    for (int64_t b = 0; b < S; ++b) {
      const int64_t g0 = b * groups_per_super;
      const int64_t count = g0 + groups_per_super < s.groups ? groups_per_super : s.groups - g0;
      rs.msum[m * S + b] = Ops::min_dot(scales + g0, xsum + g0, static_cast<int>(count));
    }
    float y = combine_super_blocks(rs.isum + m * S, rs.msum + m * S, rs.d_dmin, a.xscale + (m0 + m) * S, S);
    if (a.bias) y = y + a.bias[n];
    a.out[(m0 + m) * s.out_features + n] = y;
  }
  return ok;
}

template <class Ops>
bool quant_rows(const QuantLinearArgs& a, int64_t begin, int64_t end, void* scratch) {
  const QuantShape& s = a.shape;
  const RowScratch rs = carve_scratch(s, scratch);
  bool ok = true;
  for (int64_t n = begin; n < end; ++n) {
    // Decode this row's scales once, off the inner loop, for every activation row.
    const uint8_t* scales = a.scales + n * s.groups;
    Ops::decode_unit_scales(scales, s.groups, s.units_per_group, rs.unit_scales);
    Ops::decode_halves(a.super_scales + n * s.super_blocks * 2, rs.d_dmin, 2 * s.super_blocks);
    int64_t m = 0;
    for (; m + 4 <= a.rows; m += 4) ok &= row_chunk<Ops, 4>(a, n, m, rs);
    switch (a.rows - m) {
      case 3: ok &= row_chunk<Ops, 3>(a, n, m, rs); break;
      case 2: ok &= row_chunk<Ops, 2>(a, n, m, rs); break;
      case 1: ok &= row_chunk<Ops, 1>(a, n, m, rs); break;
      default: break;
    }
  }
  return ok;
}

}  // namespace
}  // namespace lmkernels
