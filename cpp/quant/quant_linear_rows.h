// The row loop of quant_linear, shared by the per-ISA translation units.
//
// Per output row, the 4-bit groups' high bit plane is first expanded into a row buffer
// `high` of one 32-byte unit per unit of the row: 4 * (high code) per byte for the 4-bit
// groups' units, zero elsewhere (only the units written are cleared again afterwards). Then,
// per chunk of up to 4 activation rows:
//   1. the dense pass takes every unit's 4-bit code as low code | high, one multiply chain per
//      unit with no second pass and no per-unit branch, shared by the chunk's rows, and leaves
//      each super-block's partial sums in 8 int32 lanes without reducing them;
//   2. the lanes are reduced to one exact integer sum per super-block, eight blocks at a time,
//      and combined in float with the min term.
// The integer sums do not depend on the order of evaluation, so every ISA returns the same
// bits as long as the float combination is the same (combine_lanes).
//
// Each ISA file defines `Ops` with
//   template <int UPG> static void expand_high(const uint8_t* plane, uint64_t first, int64_t count,
//                                              const int16_t* hi_groups, uint8_t* high)
//     for the high plane's units first .. first + count - 1 (unit i is the row's unit
//     high_unit<UPG>(hi_groups, i)): high[unit * 32 + j] = 4 * code j of unit i
//   template <int UPG> static void clear_high(int64_t count, const int16_t* hi_groups, uint8_t* high)
//     zeroes those units of `high` again
//   template <int MC> static void row_lanes(const uint8_t* lo, const uint8_t* high, const int8_t* const* x,
//                                           const int16_t* unit_scales, int64_t units, int32_t* const* lanes)
//     for each super-block b of the row's `units` units, lanes[m][8b..8b+7] = 8 int32 whose sum is
//     the sum over the block's units u of unit_scales[u] * <low codes of u | high[u], x[m] + 32 u>
//   static void reduce_lanes(const int32_t* lanes, int64_t blocks, int32_t* isum)  // isum[b] = sum of lanes[8b..8b+7]
//   static void min_sums(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, int32_t* msum)
//     msum[b] = sum over super-block b's groups of min_code(scales[g]) * xsum[g]
//   static float combine(const int32_t* isum, const int32_t* msum, const float* d_dmin, const float* xscale, int64_t S)
//     combine_lanes() below, bit for bit
//   static void decode_unit_scales(const uint8_t* scales, int64_t groups, int64_t units_per_group, int16_t* out)
//   static void decode_halves(const uint16_t* src, float* dst, int64_t count)
// Everything else (hi_groups checks, padding, bias, prefetching) is here, once.
#pragma once

#include <cstdint>
#include <cstring>

#include "quant/quant_linear_kernel.h"

namespace lmkernels {
namespace {

constexpr int64_t kQuantPrefetchRows = 2;

struct RowScratch {
  int16_t* unit_scales;  // [U]
  float* d_dmin;         // [2 * S8]: (d, dmin) per super-block, zero padded
  int32_t* isum;         // [kQuantRowChunk][S8]
  int32_t* msum;         // [kQuantRowChunk][S8]
  int32_t* lanes;        // [kQuantRowChunk][S][8]: unreduced block sums
  uint8_t* high;         // [U][32]: the expanded high plane of the current row
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
  r.lanes = reinterpret_cast<int32_t*>(take(kQuantRowChunk * quant_lane_stride(s)));
  r.high = reinterpret_cast<uint8_t*>(take(s.units * kQuantUnit));
  r.d_dmin = reinterpret_cast<float*>(take(S8 * 8));
  r.isum = reinterpret_cast<int32_t*>(take(kQuantRowChunk * S8 * 4));
  r.msum = reinterpret_cast<int32_t*>(take(kQuantRowChunk * S8 * 4));
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

// Row-relative unit of the high plane's unit i (of a row), UPG units per group.
template <int UPG>
LMK_INLINE int64_t high_unit(const int16_t* hi_groups, int64_t i) {
  return static_cast<int64_t>(hi_groups[i / UPG]) * UPG + i % UPG;
}

// Expands (clear = false) or clears again (clear = true) row n's units of `high`.
template <class Ops>
void row_high(const QuantLinearArgs& a, int64_t n, const RowScratch& rs, bool clear) {
  const QuantShape& s = a.shape;
  const uint64_t first = static_cast<uint64_t>(n * s.hi_units);
  const int16_t* hi_groups = a.hi_groups + n * s.num_hi;
  switch (s.units_per_group) {
    case 1: clear ? Ops::template clear_high<1>(s.hi_units, hi_groups, rs.high)
                  : Ops::template expand_high<1>(a.codes_hi, first, s.hi_units, hi_groups, rs.high); break;
    case 2: clear ? Ops::template clear_high<2>(s.hi_units, hi_groups, rs.high)
                  : Ops::template expand_high<2>(a.codes_hi, first, s.hi_units, hi_groups, rs.high); break;
    case 4: clear ? Ops::template clear_high<4>(s.hi_units, hi_groups, rs.high)
                  : Ops::template expand_high<4>(a.codes_hi, first, s.hi_units, hi_groups, rs.high); break;
    default: clear ? Ops::template clear_high<8>(s.hi_units, hi_groups, rs.high)
                   : Ops::template expand_high<8>(a.codes_hi, first, s.hi_units, hi_groups, rs.high); break;
  }
}

template <class Ops, int MC>
void row_chunk(const QuantLinearArgs& a, int64_t n, int64_t m0, const RowScratch& rs) {
  const QuantShape& s = a.shape;
  const int64_t S = s.super_blocks, S8 = quant_combine_stride(S), xq_stride = S * kQuantSuperBlock;
  const int64_t lane_stride = quant_lane_stride(s) / 4;
  const int8_t* x[MC];
  int32_t* lanes[MC];
  for (int m = 0; m < MC; ++m) {
    x[m] = a.xq + (m0 + m) * xq_stride;
    lanes[m] = rs.lanes + m * lane_stride;
  }

  Ops::template row_lanes<MC>(a.codes_lo + n * s.lo_stride, rs.high, x, rs.unit_scales, s.units, lanes);

  int32_t* isum[MC];
  for (int m = 0; m < MC; ++m) {
    isum[m] = rs.isum + m * S8;
    Ops::reduce_lanes(lanes[m], S, isum[m]);
  }

  const uint8_t* scales = a.scales + n * s.groups;
  for (int m = 0; m < MC; ++m) {
    int32_t* msum = rs.msum + m * S8;
    Ops::min_sums(scales, a.xsum + (m0 + m) * s.groups, s, msum);
    float y = Ops::combine(isum[m], msum, rs.d_dmin, a.xscale + (m0 + m) * S8, S);
    if (a.bias) y = y + a.bias[n];
    a.out[(m0 + m) * s.out_features + n] = y;
  }
}

// Touches row n's weight streams ahead of use: a row is several short runs in separate
// arrays (codes, scales, high plane, ...), too many streams for the hardware prefetcher
// to follow at batch 1, where each row is read once and used for a few hundred cycles.
LMK_INLINE void prefetch_row(const QuantLinearArgs& a, int64_t n) {
  const QuantShape& s = a.shape;
  auto touch = [](const void* base, int64_t bytes) {
    const char* p = static_cast<const char*>(base);
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i);
  };
  touch(a.codes_lo + n * s.lo_stride, s.lo_stride);
  touch(a.scales + n * s.groups, s.groups);
  touch(a.super_scales + n * s.super_blocks * 2, s.super_blocks * 4);
  touch(a.hi_groups + n * s.num_hi, s.num_hi * 2);
  touch(a.codes_hi + n * s.hi_units * kQuantUnitBytes, s.hi_units * kQuantUnitBytes);
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
  bool ok = true;
  for (int64_t n = begin; n < end; ++n) {
    if (n + kQuantPrefetchRows < end) prefetch_row(a, n + kQuantPrefetchRows);
    // Decode this row's scales and high plane once, off the inner loop, for every activation
    // row. A bad row expands nothing (nothing is read through its hi_groups); the caller raises.
    const bool high_ok = hi_groups_valid(s, a.hi_groups + n * s.num_hi);
    ok &= high_ok;
    if (high_ok) row_high<Ops>(a, n, rs, false);
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
    if (high_ok) row_high<Ops>(a, n, rs, true);
  }
  return ok;
}

}  // namespace
}  // namespace lmkernels
