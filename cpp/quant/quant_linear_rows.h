// The row loop of quant_linear, shared by the per-ISA translation units.
//
// Per output row, the 4-bit groups' high bit plane is first expanded into a row buffer
// `high` of one 32-byte unit per unit of the row: 4 * (high code) per byte for the 4-bit
// groups' units, zero elsewhere. The dense pass then takes every unit's 4-bit code as
// low code | high, one multiply chain per unit with no second pass and no per-unit branch;
// only the units written for the previous row are cleared again.
//
// Each ISA file defines `Ops` with
//   template <int UPG> static void expand_high(const uint8_t* plane, uint64_t first, int64_t count,
//                                              const int16_t* hi_groups, int64_t dummy, uint8_t* high, int32_t* written)
//     for the high plane's units first .. first + count - 1 (unit i belongs to group
//     hi_groups[i / UPG], UPG units per group): high[unit * 32 + j] = 4 * code j of unit i,
//     written[i] = unit. Units it touches outside that range go to unit `dummy` / entry count.
//   static void clear_unit(uint8_t* unit)  // 32 zero bytes
//   template <int MC> static void block_dots(const uint8_t* quads, const uint8_t* high, const int8_t* const* x,
//                                            const int16_t* unit_scales, int units, int32_t* dots)
//     dots[m] = sum over `units` consecutive units from the first quad of
//               unit_scales[u] * <low codes | high[u], x[m] + 32 u>
//   static void min_sums(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, int32_t* msum)
//     msum[b] = sum over super-block b's groups of min_code(scales[g]) * xsum[g]
//   static float combine(const int32_t* isum, const int32_t* msum, const float* d_dmin, const float* xscale, int64_t S)
//     combine_lanes() below, bit for bit
//   static void decode_unit_scales(const uint8_t* scales, int64_t groups, int64_t units_per_group, int16_t* out)
//   static void decode_halves(const uint16_t* src, float* dst, int64_t count)
// Everything else (hi_groups checks, padding, bias) is here, once.
#pragma once

#include <cstdint>
#include <cstring>

#include "quant/quant_linear_kernel.h"

namespace lmkernels {
namespace {

struct RowScratch {
  int16_t* unit_scales;  // [U]
  float* d_dmin;         // [2 * S8]: (d, dmin) per super-block, zero padded
  int32_t* isum;         // [kQuantRowChunk][S8]
  int32_t* msum;         // [kQuantRowChunk][S8]
  uint8_t* high;         // [U + 1][32]: the expanded high plane; unit U takes stray writes
  int32_t* written;      // [hi_units + 1]: the units of `high` holding the current row
};

LMK_INLINE RowScratch carve_scratch(const QuantShape& s, void* scratch) {
  auto* base = static_cast<char*>(scratch);
  auto take = [&](int64_t bytes) {
    char* p = base;
    base += (bytes + 31) / 32 * 32;
    return p;
  };
  const int64_t S8 = quant_combine_stride(s.super_blocks);
  RowScratch r;
  r.high = reinterpret_cast<uint8_t*>(take((s.units + 1) * kQuantUnit));
  r.d_dmin = reinterpret_cast<float*>(take(S8 * 8));
  r.isum = reinterpret_cast<int32_t*>(take(kQuantRowChunk * S8 * 4));
  r.msum = reinterpret_cast<int32_t*>(take(kQuantRowChunk * S8 * 4));
  r.written = reinterpret_cast<int32_t*>(take((s.hi_units + 1) * 4));
  r.unit_scales = reinterpret_cast<int16_t*>(take(s.units * 2));
  return r;
}

LMK_INLINE void decode_unit_scales_scalar(const uint8_t* scales, int64_t begin, int64_t groups,
                                          int64_t units_per_group, int16_t* out) {
  for (int64_t g = begin; g < groups; ++g) {
    for (int64_t k = 0; k < units_per_group; ++k) out[g * units_per_group + k] = static_cast<int16_t>(scale_code(scales[g]));
  }
}

LMK_INLINE void min_sums_scalar(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, int64_t first_block,
                                int32_t* msum) {
  const int64_t groups_per_super = kQuantSuperBlock / s.group_size;
  for (int64_t b = first_block; b < s.super_blocks; ++b) {
    const int64_t g0 = b * groups_per_super, g1 = g0 + groups_per_super < s.groups ? g0 + groups_per_super : s.groups;
    int32_t sum = 0;
    for (int64_t g = g0; g < g1; ++g) sum += min_code(scales[g]) * xsum[g];
    msum[b] = sum;
  }
}

// y = sum over super-blocks of xscale_b * (d_b * isum_b - dmin_b * msum_b), in 8 float lanes
// (lane = b mod 8, S padded to a multiple of 8 with zeros) reduced by a fixed tree: exactly
// what an 8-wide vector loop computes, so the SIMD paths can match this bit for bit.
LMK_INLINE float combine_lanes(const int32_t* isum, const int32_t* msum, const float* d_dmin, const float* xscale,
                               int64_t S) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t b = 0; b < quant_combine_stride(S); ++b) {
    const float t = d_dmin[2 * b] * static_cast<float>(isum[b]) - d_dmin[2 * b + 1] * static_cast<float>(msum[b]);
    lane[b % 8] = lane[b % 8] + xscale[b] * t;
  }
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

// Whether row n's hi_groups are strictly ascending and in range: ascending pairs, a first
// entry >= 0 and a last < groups. Written without a loop-carried chain so that it vectorizes.
LMK_INLINE bool hi_groups_valid(const QuantShape& s, const int16_t* hi_groups) {
  if (s.num_hi == 0) return true;
  int descending = 0;
  for (int64_t j = 1; j < s.num_hi; ++j) descending |= hi_groups[j] <= hi_groups[j - 1];
  return !descending && hi_groups[0] >= 0 && hi_groups[s.num_hi - 1] < s.groups;
}

// Clears the previous row's units of `high` and expands row n's. A bad row expands nothing
// (nothing is read through its hi_groups) and the caller raises.
template <class Ops>
bool expand_row_high(const QuantLinearArgs& a, int64_t n, const RowScratch& rs, int64_t& written) {
  const QuantShape& s = a.shape;
  for (int64_t i = 0; i < written; ++i) Ops::clear_unit(rs.high + static_cast<int64_t>(rs.written[i]) * kQuantUnit);
  written = 0;
  const int16_t* hi_groups = a.hi_groups + n * s.num_hi;
  if (!hi_groups_valid(s, hi_groups)) return false;
  const uint64_t first = static_cast<uint64_t>(n * s.hi_units);
  switch (s.units_per_group) {
    case 1: Ops::template expand_high<1>(a.codes_hi, first, s.hi_units, hi_groups, s.units, rs.high, rs.written); break;
    case 2: Ops::template expand_high<2>(a.codes_hi, first, s.hi_units, hi_groups, s.units, rs.high, rs.written); break;
    case 4: Ops::template expand_high<4>(a.codes_hi, first, s.hi_units, hi_groups, s.units, rs.high, rs.written); break;
    default: Ops::template expand_high<8>(a.codes_hi, first, s.hi_units, hi_groups, s.units, rs.high, rs.written); break;
  }
  written = s.hi_units;
  return true;
}

template <class Ops, int MC>
void row_chunk(const QuantLinearArgs& a, int64_t n, int64_t m0, const RowScratch& rs) {
  const QuantShape& s = a.shape;
  const int64_t S = s.super_blocks, S8 = quant_combine_stride(S), xq_stride = S * kQuantSuperBlock;
  const int8_t* x[MC];
  for (int m = 0; m < MC; ++m) x[m] = a.xq + (m0 + m) * xq_stride;

  // The dense pass, one super-block at a time (its integer sum is exact).
  const uint8_t* lo = a.codes_lo + n * s.lo_stride;
  for (int64_t b = 0; b < S; ++b) {
    const int64_t u0 = b * kQuantSuperUnits;
    const int units = static_cast<int>(s.units - u0 < kQuantSuperUnits ? s.units - u0 : kQuantSuperUnits);
    const int8_t* xb[MC];
    for (int m = 0; m < MC; ++m) xb[m] = x[m] + u0 * kQuantUnit;
    int32_t dots[MC];
    Ops::template block_dots<MC>(lo + u0 / kQuantQuadUnits * kQuantQuadBytes, rs.high + u0 * kQuantUnit, xb,
                                 rs.unit_scales + u0, units, dots);
    for (int m = 0; m < MC; ++m) rs.isum[m * S8 + b] = dots[m];
  }

  const uint8_t* scales = a.scales + n * s.groups;
  for (int m = 0; m < MC; ++m) {
    int32_t* isum = rs.isum + m * S8;
    int32_t* msum = rs.msum + m * S8;
    Ops::min_sums(scales, a.xsum + (m0 + m) * s.groups, s, msum);
    float y = Ops::combine(isum, msum, rs.d_dmin, a.xscale + (m0 + m) * S8, S);
    if (a.bias) y = y + a.bias[n];
    a.out[(m0 + m) * s.out_features + n] = y;
  }
}

template <class Ops>
bool quant_rows(const QuantLinearArgs& a, int64_t begin, int64_t end, void* scratch) {
  const QuantShape& s = a.shape;
  const RowScratch rs = carve_scratch(s, scratch);
  const int64_t S8 = quant_combine_stride(s.super_blocks);
  for (int64_t i = 2 * s.super_blocks; i < 2 * S8; ++i) rs.d_dmin[i] = 0.0f;
  // The padding lanes of the block sums: nothing writes past S, so once per call suffices.
  for (int64_t i = 0; i < kQuantRowChunk * S8; ++i) rs.isum[i] = rs.msum[i] = 0;
  std::memset(rs.high, 0, static_cast<size_t>(s.units * kQuantUnit));
  int64_t written = 0;
  bool ok = true;
  for (int64_t n = begin; n < end; ++n) {
    // Decode this row's scales and high plane once, off the inner loop, for every activation row.
    ok &= expand_row_high<Ops>(a, n, rs, written);
    Ops::decode_unit_scales(a.scales + n * s.groups, s.groups, s.units_per_group, rs.unit_scales);
    Ops::decode_halves(a.super_scales + n * s.super_blocks * 2, rs.d_dmin, 2 * s.super_blocks);
    int64_t m = 0;
    for (; m + 4 <= a.rows; m += 4) row_chunk<Ops, 4>(a, n, m, rs);
    switch (a.rows - m) {
      case 3: row_chunk<Ops, 3>(a, n, m, rs); break;
      case 2: row_chunk<Ops, 2>(a, n, m, rs); break;
      case 1: row_chunk<Ops, 1>(a, n, m, rs); break;
      default: break;
    }
  }
  return ok;
}

}  // namespace
}  // namespace lmkernels
