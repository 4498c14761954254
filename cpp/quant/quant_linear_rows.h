// The row loop of quant_linear, shared by the per-ISA translation units.
//
// Per output row, the row's super-block scales are decoded once; then, per chunk of up to 4
// activation rows:
//   1. dx[b] = d_b * xscale_b per super-block b;
//   2. the dense pass multiplies every unit's low 2-bit codes, with no per-unit branch or
//      offset, shared by the chunk's rows: per block, 8 exact int32 lanes, converted to float
//      and accumulated as lane[j] += float(I_b[j]) * dx[b] in registers (nothing is stored per
//      unit or per block: Zen 1 retires one store per cycle, and expanding the high plane into
//      a row buffer cost about a quarter of a row);
//   3. the high pass adds the 4-bit groups' high bits: each high unit's codes (straight from
//      the packed high plane) times 4 * its scale, dotted with the activations at its unit,
//      accumulated the same way with its block's dx;
//   4. y = the 8 lanes reduced by a fixed tree, minus the min term.
// Integer lane sums do not depend on the order of evaluation, and the float steps are the same
// on every path (the scalar path keeps the 8 lanes too), so every ISA returns the same bits.
// Lane j of a unit's dot product holds its weights 4j .. 4j + 3 (what maddubs + madd give).
//
// Each ISA file defines `Ops` with
//   template <int MC> static void row_dot(const uint8_t* lo, const int8_t* const* x,
//                                         const int8_t* const* x_pairs, UnitScales unit_scales,
//                                         int64_t units, const float* const* dx, float* const* lane)
//     lane[m][0..7] = the dense pass over the row's `units` units, lane[j] = sum over blocks b in
//     order of float(I_b[j]) * dx[m][b], I_b[j] = sum over the block's units u of
//     unit_scales[u] * <low codes of u, x[m] + 32 u> over weights 4j .. 4j + 3 (x_pairs[m]: the
//     same codes in xq_pairs' order, or null; only the VNNI path reads it)
//   template <int UPG, int MC, bool kPairs> static void high_dot(const uint8_t* plane, uint64_t first, int64_t count,
//                                                   const int16_t* hi_groups, UnitScales unit_scales,
//                                                   const int8_t* const* x, const float* const* dx,
//                                                   float* const* lane, const uint32_t* pair_offsets)
//     for the high plane's units i = first .. first + count - 1 in order (row unit u =
//     high_unit<UPG>(hi_groups, i - first), block b = u / 8), into two sets of float lanes by
//     the parity of i: A (starting from lane[m]) for even i, B (from zero) for odd i,
//     A[j] += float(H[j]) * dx[m][b], H[j] = 4 * unit_scales[u] * <codes of unit i,
//     x[m] + unit_x_offset<kPairs>(u, pair_offsets)> over weights 4j .. 4j + 3; then
//     lane[m][j] = A[j] + B[j]. (Two chains: one float add per unit in a single chain bounded
//     the pass at batch 1.)
//   static void block_scales(const float* d_dmin, const float* xscale, int64_t S, float* dx)
//     dx[b] = d_dmin[2b] * xscale[b] for b < quant_combine_stride(S)
//   static float min_term(const uint8_t* scales, const int16_t* xsum, const QuantShape& s,
//                         const float* d_dmin, const float* xscale, int32_t* msum)
//     min_term_lanes() below, bit for bit, of msum[b] = sum over super-block b's groups of
//     min_code(scales[g]) * xsum[g] (msum: scratch of quant_combine_stride(S), zero padded)
//   static void decode_halves(const uint16_t* src, float* dst, int64_t count)
// Everything else (hi_groups checks, padding, bias, prefetching) is here, once.
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "quant/quant_linear_kernel.h"

namespace lmkernels {
namespace {

// The low plane (about 70% of a row's bytes) is prefetched inside the dense pass, one line per
// super-block (its 64 bytes of low codes), this far ahead. Rows' planes are contiguous, so a
// fixed byte distance reaches into the next rows whatever their length. Without it the passes'
// compute and the memory reads barely overlap with the weights streamed from DRAM (4096x14336,
// batch 1, 16 copies in turn, 2 threads: 1.78 -> 1.22 ms; 2048 and 6144 bytes ahead did as
// well or a little worse).
constexpr int64_t kQuantLowPlanePrefetchBytes = 4096;
constexpr int64_t kQuantSuperBlockLowBytes = kQuantSuperUnits * kQuantUnitBytes;

// The smaller streams (scales, super-block scales, hi_groups, the high plane) are left to the
// hardware prefetchers. Their software prefetch (two rows ahead, and the next strip into L2 in
// quant_strips.h) had never run: GCC 12 deems a function whose only effect is a prefetch
// const and drops every call to it. Made to run, it was no faster (4096x14336 from DRAM 1.00
// ms either way) and the strips' burst of a whole strip's lines made batch 8-64 8-10% slower.
// Hence also always_inline here: this prefetch survives only inside the dense loop.
__attribute__((always_inline)) LMK_INLINE void prefetch_low_plane(const uint8_t* block) {
  __builtin_prefetch(block + kQuantLowPlanePrefetchBytes);  // never faults, even past the plane's end
}

struct RowScratch {
  float* d_dmin;         // [2 * S8]: (d, dmin) per super-block, zero padded
  float* dx;             // [kQuantRowChunk][S8]: d_b * xscale_b
  int32_t* msum;         // [kQuantRowChunk][S8]
  float* lane;           // [kQuantRowChunk][8]: the float lanes of the dense and high passes
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
  r.d_dmin = reinterpret_cast<float*>(take(S8 * 8));
  r.dx = reinterpret_cast<float*>(take(kQuantRowChunk * S8 * 4));
  r.lane = reinterpret_cast<float*>(take(kQuantRowChunk * 8 * 4));
  r.msum = reinterpret_cast<int32_t*>(take(kQuantRowChunk * S8 * 4));
  return r;
}

// A row's unit scales read straight from its packed scale bytes (a decoded copy per row cost
// a few percent: stores, and loads that waited on them).
struct UnitScales {
  const uint8_t* packed;  // the row's scales: scale code | min code << 4 per group
  int shift;              // log2(units per group)
  int operator[](int64_t unit) const { return scale_code(packed[unit >> shift]); }
};

LMK_INLINE void min_sums_scalar(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, int64_t first_block,
                                int32_t* msum) {
  const int64_t groups_per_super = kQuantSuperBlock >> __builtin_ctzll(static_cast<uint64_t>(s.group_size));  // no idiv per row
  for (int64_t b = first_block; b < s.super_blocks; ++b) {
    const int64_t g0 = b * groups_per_super, g1 = g0 + groups_per_super < s.groups ? g0 + groups_per_super : s.groups;
    int32_t sum = 0;
    for (int64_t g = g0; g < g1; ++g) sum += min_code(scales[g]) * xsum[g];
    msum[b] = sum;
  }
}

#if defined(__AVX2__)
// lane_tree() on a vector, the same sums: halves added, then pairs, then the last two.
LMK_INLINE float lane_tree_vector(__m256 v) {
  const __m128 quarters = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pairs = _mm_add_ps(quarters, _mm_movehl_ps(quarters, quarters));
  return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)));
}
#endif

// The fixed reduction tree of 8 float lanes (what an 8-wide vector reduction computes). The
// SIMD builds reduce in registers: GCC's code for the scalar form took twice the instructions.
LMK_INLINE float lane_tree(const float* lane) {
#if defined(__AVX2__)
  return lane_tree_vector(_mm256_loadu_ps(lane));
#else
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
#endif
}

// The min term: sum over super-blocks of (dmin_b * xscale_b) * msum_b, in 8 float lanes
// (lane = b mod 8, S padded to a multiple of 8 with zeros) reduced by lane_tree: exactly what
// an 8-wide vector loop computes, so the SIMD paths can match this bit for bit.
LMK_INLINE float min_term_lanes(const int32_t* msum, const float* d_dmin, const float* xscale, int64_t S) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t b = 0; b < quant_combine_stride(S); ++b) {
    lane[b % 8] = lane[b % 8] + (d_dmin[2 * b + 1] * xscale[b]) * static_cast<float>(msum[b]);
  }
  return lane_tree(lane);
}

// Whether row n's hi_groups are strictly ascending and in range: ascending pairs, a first
// entry >= 0 and a last < groups. Written without a loop-carried chain so that it vectorizes.
LMK_INLINE bool hi_groups_valid(const QuantShape& s, const int16_t* hi_groups) {
  if (s.num_hi == 0) return true;
#if defined(__AVX512BW__)
  // 31 neighbour pairs per masked compare (entries j + 1 .. j + 31 against j .. j + 30); the
  // compiler's vectorization of the loop below spent more on its prologue and tail than the
  // 26 entries of a 4096-wide row take.
  __mmask32 descending = 0;
  for (int64_t j = 0; j + 1 < s.num_hi; j += 31) {
    const int64_t pairs = s.num_hi - 1 - j < 31 ? s.num_hi - 1 - j : 31;
    const __mmask32 lanes = static_cast<__mmask32>((uint32_t{1} << pairs) - 1);
    const __m512i cur = _mm512_maskz_loadu_epi16(lanes, hi_groups + j);
    const __m512i next = _mm512_maskz_loadu_epi16(lanes, hi_groups + j + 1);
    descending |= _mm512_mask_cmple_epi16_mask(lanes, next, cur);
  }
#else
  int descending = 0;
  for (int64_t j = 1; j < s.num_hi; ++j) descending |= hi_groups[j] <= hi_groups[j - 1];
#endif
  return !descending && hi_groups[0] >= 0 && hi_groups[s.num_hi - 1] < s.groups;
}

// Row-relative unit of the high plane's unit i (of a row), UPG units per group. Unsigned
// (the row's hi_groups were checked to lie in [0, groups)): a signed unit / 8 or / UPG costs
// as much scalar work in the high pass as the unit's vector work.
template <int UPG>
LMK_INLINE uint64_t high_unit(const int16_t* hi_groups, uint64_t i) {
  return static_cast<uint64_t>(static_cast<uint16_t>(hi_groups[i / UPG])) * UPG + i % UPG;
}

// Offset of unit u's codes in an activation row: xq's plain order, or xq_pairs' (kPairs,
// from the call's table of them).
template <bool kPairs>
LMK_INLINE uint64_t unit_x_offset(uint64_t unit, const uint32_t* pair_offsets) {
  return kPairs ? pair_offsets[unit] : unit * kQuantUnit;
}

template <class Ops, int MC, bool kPairs>
void high_dot(const QuantLinearArgs& a, int64_t n, UnitScales unit_scales, const int8_t* const* x,
              const float* const* dx, float* const* lane) {
  const QuantShape& s = a.shape;
  const uint64_t first = static_cast<uint64_t>(n * s.hi_units);
  const int16_t* hi_groups = a.hi_groups + n * s.num_hi;
  auto run = [&](auto upg) {
    Ops::template high_dot<decltype(upg)::value, MC, kPairs>(a.codes_hi, first, s.hi_units, hi_groups, unit_scales, x,
                                                             dx, lane, a.pair_offsets);
  };
  switch (s.units_per_group) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    default: run(std::integral_constant<int, 8>{}); break;
  }
}

template <class Ops, int MC>
void row_chunk(const QuantLinearArgs& a, int64_t n, int64_t m0, const RowScratch& rs, UnitScales unit_scales,
               bool high_ok) {
  const QuantShape& s = a.shape;
  const int64_t S = s.super_blocks, S8 = quant_combine_stride(S), xq_stride = S * kQuantSuperBlock;
  const int8_t* x[MC];
  const int8_t* x_pairs[MC];
  float* dx[MC];
  float* lane[MC];
  for (int m = 0; m < MC; ++m) {
    x[m] = a.xq + (m0 + m) * xq_stride;
    x_pairs[m] = a.xq_pairs ? a.xq_pairs + (m0 + m) * xq_stride : nullptr;
    dx[m] = rs.dx + m * S8;
    lane[m] = rs.lane + m * 8;
    Ops::block_scales(rs.d_dmin, a.xscale + (m0 + m) * S8, S, dx[m]);
  }

  Ops::template row_dot<MC>(a.codes_lo + n * s.lo_stride, x, x_pairs, unit_scales, s.units, dx, lane);
  // The high pass reads the pairs copy when the call gives its offsets (long rows, see
  // kQuantPlainHighPassMaxK), else the plain copy.
  if (high_ok && a.pair_offsets) {
    high_dot<Ops, MC, true>(a, n, unit_scales, x_pairs, dx, lane);
  } else if (high_ok) {
    high_dot<Ops, MC, false>(a, n, unit_scales, x, dx, lane);
  }

  const uint8_t* scales = a.scales + n * s.groups;
  for (int m = 0; m < MC; ++m) {
    const float min = Ops::min_term(scales, a.xsum + (m0 + m) * s.groups, s, rs.d_dmin, a.xscale + (m0 + m) * S8,
                                    rs.msum + m * S8);
    float y = lane_tree(lane[m]) - min;
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
  for (int64_t i = 0; i < kQuantRowChunk * S8; ++i) rs.msum[i] = 0;
  bool ok = true;
  for (int64_t n = begin; n < end; ++n) {
    // Decode this row's super-block scales once, off the inner loop, for every activation row.
    // A bad row skips its high pass (nothing is read through its hi_groups); the caller raises.
    const bool high_ok = hi_groups_valid(s, a.hi_groups + n * s.num_hi);
    ok &= high_ok;
    const UnitScales unit_scales{a.scales + n * s.groups, __builtin_ctzll(static_cast<uint64_t>(s.units_per_group))};
    Ops::decode_halves(a.super_scales + n * s.super_blocks * 2, rs.d_dmin, 2 * s.super_blocks);
    int64_t m = 0;
    for (; m + 4 <= a.rows; m += 4) row_chunk<Ops, 4>(a, n, m, rs, unit_scales, high_ok);
    switch (a.rows - m) {
      case 3: row_chunk<Ops, 3>(a, n, m, rs, unit_scales, high_ok); break;
      case 2: row_chunk<Ops, 2>(a, n, m, rs, unit_scales, high_ok); break;
      case 1: row_chunk<Ops, 1>(a, n, m, rs, unit_scales, high_ok); break;
      default: break;
    }
  }
  return ok;
}

}  // namespace
}  // namespace lmkernels
