// AVX-512 VNNI path of quant_linear: vpdpbusd multiplies u8 codes by int8 activations and
// sums each 4 bytes into an int32 lane in one instruction (AVX2 needs maddubs + madd).
// As on AVX2, a unit's scale is folded into its codes by a pshufb table, so a weight unit is
// prepared once and each activation row costs one vpdpbusd per 64 weights:
//   q  = the quad (4 units, 32 bytes) broadcast to both 256-bit halves;
//   c01 = pshufb([table(unit 0's scale) | table(unit 1's scale)], q & 15): unit 0's scaled
//         codes in the low half, unit 1's in the high half; c23 likewise from q >> 4;
//   acc01 += dpbusd(c01, x[32u .. 32u + 63]), acc23 += dpbusd(c23, x[32u + 64 .. 32u + 127]).
// Adding both accumulators' halves gives a block's 8 int32 lanes, exactly the AVX2 ones (lane j holds
// weights 4j .. 4j + 3 of every unit), so the float steps and the result are the same bits.
// That form is kept for a row's last, partial super-block. Whole super-blocks go faster
// (block_pairs_dot): one 64-byte load of both quads, the tables built in registers, and the
// activations in xq_pairs' order. On Zen 4 the dense pass over a row of 4096 went from 104 to
// 78 ns (standalone loop, weights in cache), and 4096x4096 at batch 1 and 1 thread from 0.59
// to 0.52 ms (best of 1000 calls, median over 8 alternating processes). The high pass reads
// xq_pairs too (quant_linear_rows.h): with both copies in use, a 4096x14336 call got 10%
// slower (two 14 KB activation rows crowd the weight streams out of L1).
#include <cstring>

#include "quant/quant_linear_avx512_parts.h"

// GCC 12's AVX-512 broadcast and extract intrinsics start from a self-initialized
// `_mm512_undefined_*` value, which -Wuninitialized reports wherever they get inlined into a
// lambda here; the value is never read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace lmkernels {
namespace {

// Units u .. u + 3 into two accumulators per row (acc01: units 0 and 1, acc23: 2 and 3), so a
// block's dependent vpdpbusd chain is two long instead of four.
template <int MC, bool kDirect>
inline void quad_dot(__m512i* acc01, __m512i* acc23, const uint8_t* quad, const int8_t* const* x, int64_t u,
                     UnitScales unit_scales) {
  const __m512i q = _mm512_broadcast_i64x4(load_quad(quad));
  const __m512i nibble = _mm512_set1_epi8(15);
  const __m512i c01 = _mm512_shuffle_epi8(
      pair_tables(unit_scale<kDirect>(unit_scales, u), unit_scale<kDirect>(unit_scales, u + 1)), _mm512_and_si512(q, nibble));
  const __m512i c23 = _mm512_shuffle_epi8(
      pair_tables(unit_scale<kDirect>(unit_scales, u + 2), unit_scale<kDirect>(unit_scales, u + 3)),
      _mm512_and_si512(_mm512_srli_epi16(q, 4), nibble));
  for (int m = 0; m < MC; ++m) {
    const int8_t* xu = x[m] + u * kQuantUnit;
    acc01[m] = _mm512_dpbusd_epi32(acc01[m], c01, _mm512_loadu_si512(xu));
    acc23[m] = _mm512_dpbusd_epi32(acc23[m], c23, _mm512_loadu_si512(xu + 2 * kQuantUnit));
  }
}

// The first `count` (< 4) units of a row's last, partial quad, one 256-bit step each (a
// 512-bit activation load could run past the row).
template <int MC>
inline void partial_quad_dot(__m512i* acc, const uint8_t* quad, const int8_t* const* x, int64_t u, int count,
                             UnitScales unit_scales) {
  const __m256i q = load_quad(quad), nibble = _mm256_set1_epi8(15);
  for (int i = 0; i < count; ++i) {
    const __m256i nibbles = i < 2 ? _mm256_and_si256(q, nibble) : _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
    const __m256i codes = scaled_codes(nibbles, i & 1, static_cast<int16_t>(unit_scales[u + i]));
    for (int m = 0; m < MC; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m] + (u + i) * kQuantUnit));
      acc[m] = _mm512_add_epi32(acc[m], _mm512_zextsi256_si512(_mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xv)));
    }
  }
}

inline __m256i fold_halves(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// The 8 int32 lanes of a block: both accumulators' halves added (exact, any order).
inline __m256i block_lanes(__m512i acc01, __m512i acc23) { return fold_halves(_mm512_add_epi32(acc01, acc23)); }

// The scaled-code tables of a whole super-block built in registers, for a 64-byte load of its
// two quads (xq_pairs' order): pshufb(table04, v & 15) gives unit 0 in the low half and unit 4
// in the high half, each code times its unit's scale; table15 on the same nibbles units 1 and
// 5; table26 and table37 on v >> 4 units 2, 6 and 3, 7. A table is the unit's scale code
// spread to 16-bit lanes (one pshufb from the block's scale bytes) times a constant whose bytes
// are the codes each nibble holds (vpmullw: code * scale <= 45, so no byte carries into the
// next). This replaces eight scalar scale loads and table broadcasts per block with eight
// vector ops, and two broadcast quad loads with one load.
template <int kShift>
struct BlockTables {
  __m512i spread[4];   // pshufb index: units (i, i + 4)'s scale byte into 16-bit lanes
  __m512i codes_of[2]; // bytes: the code of unit 0 (and 2) or 1 (and 3) of each nibble value

  BlockTables() {
    alignas(64) int8_t idx[4][64];
    alignas(64) uint8_t codes[2][64];
    for (int i = 0; i < 64; ++i) {
      const int half = i / 32, n = i % 16;
      for (int p = 0; p < 4; ++p) idx[p][i] = (i % 2) ? -128 : static_cast<int8_t>((p + 4 * half) >> kShift);
      codes[0][i] = static_cast<uint8_t>(n & 3);
      codes[1][i] = static_cast<uint8_t>(n >> 2);
    }
    for (int p = 0; p < 4; ++p) spread[p] = _mm512_load_si512(idx[p]);
    for (int f = 0; f < 2; ++f) codes_of[f] = _mm512_load_si512(codes[f]);
  }

  // The block's scale bytes (8 >> kShift groups), low nibbles only, in every 128-bit lane.
  static __m512i scale_codes(const uint8_t* packed) {
    __m128i bytes;
    if constexpr (kShift == 0) {
      bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(packed));
    } else {
      uint32_t v = 0;
      std::memcpy(&v, packed, 8 >> kShift);
      bytes = _mm_cvtsi32_si128(static_cast<int>(v));
    }
    return _mm512_and_si512(_mm512_broadcastq_epi64(bytes), _mm512_set1_epi8(15));
  }

  __m512i table(__m512i scales, int p) const {
    return _mm512_mullo_epi16(_mm512_shuffle_epi8(scales, spread[p]), codes_of[p % 2]);
  }
};

template <int MC, int kShift>
inline void block_pairs_dot(const BlockTables<kShift>& bt, const uint8_t* block_codes, const uint8_t* block_scales,
                            const int8_t* const* x_pairs, int64_t u0, __m256i* ints) {
  const __m512i nibble = _mm512_set1_epi8(15);
  const __m512i scales = BlockTables<kShift>::scale_codes(block_scales);
  const __m512i v = _mm512_loadu_si512(block_codes);
  const __m512i n01 = _mm512_and_si512(v, nibble), n23 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
  const __m512i c04 = _mm512_shuffle_epi8(bt.table(scales, 0), n01);
  const __m512i c15 = _mm512_shuffle_epi8(bt.table(scales, 1), n01);
  const __m512i c26 = _mm512_shuffle_epi8(bt.table(scales, 2), n23);
  const __m512i c37 = _mm512_shuffle_epi8(bt.table(scales, 3), n23);
  for (int m = 0; m < MC; ++m) {
    const int8_t* xb = x_pairs[m] + u0 * kQuantUnit;
    __m512i a0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c04, _mm512_loadu_si512(xb));
    __m512i a1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c15, _mm512_loadu_si512(xb + 2 * kQuantUnit));
    a0 = _mm512_dpbusd_epi32(a0, c26, _mm512_loadu_si512(xb + 4 * kQuantUnit));
    a1 = _mm512_dpbusd_epi32(a1, c37, _mm512_loadu_si512(xb + 6 * kQuantUnit));
    ints[m] = block_lanes(a0, a1);
  }
}

// One activation row (batch 1) gets a form with fewer shuffles and multiplies than the tables:
// the raw codes of the block's four unit pairs go through vpdpbusd with the activations, giving
// per pair 16 int32 lanes of 4 products each (at most 4 * 3 * 127, so each fits an int16).
// Two pairs' lanes are interleaved as words and one vpdpwssd multiplies each word by its
// unit's scale code and adds the two: lane t = scale_a * A_t + scale_b * B_t. The scale words
// are one pshufb of the block's scale bytes. Adding both halves gives the tables' block lanes
// exactly (lane j: weights 4j .. 4j + 3 of every unit), so the bits do not change. With more
// rows the tables win: they are built once for every row, while this form's word steps are
// per row.
// At 512 bits shifts, vpdpbusd, vpdpwssd and int-to-float conversion all issue on port 0 only
// in llvm-mca's Sapphire Rapids model, which bounded the block (13.5 cycles, llvm-mca and
// measured). (The AMX Xeon of 2026-12-08 runs 1.8 independent vpdpbusd zmm per cycle: there the
// bound is the block's ~20 512-bit ops on ports 0 and 5 together.) So the block takes one shift
// instead of five: with v2 = v >> 2, the fields v & 3 and v2 & 3 are units (0, 1) of each quad,
// and v & 0x30, v2 & 0x30 are units (2, 3) times 16 (16 * 1524 still fits an int16), whose
// vpdpwssd sum is shifted back by 4 (exact: a multiple of 16); and the words are interleaved
// by a merge-masked pshufb on port 5 instead of a shift and a blend.
template <int kShift>
struct SingleRowScales {
  __m512i spread[2];  // pshufb index: dword lanes of (scale of unit p, of unit p + 1) as words, p = 0, 2 (+ 4 in the high half)
  __m512i low_word_up;  // pshufb index: each dword's low word into its high word

  SingleRowScales() {
    alignas(64) int8_t idx[3][64];
    for (int i = 0; i < 64; ++i) {
      const int half = i / 32, byte = i % 4;
      for (int p = 0; p < 2; ++p) {
        const int unit = 2 * p + (byte >= 2 ? 1 : 0) + 4 * half;
        idx[p][i] = (byte % 2) ? -128 : static_cast<int8_t>(unit >> kShift);
      }
      idx[2][i] = static_cast<int8_t>((i % 16 & ~3) | (i & 1));
    }
    for (int p = 0; p < 2; ++p) spread[p] = _mm512_load_si512(idx[p]);
    low_word_up = _mm512_load_si512(idx[2]);
  }
};

template <int kShift>
inline __m256i block_single_row_dot(const SingleRowScales<kShift>& sr, const uint8_t* block_codes,
                                    const uint8_t* block_scales, const int8_t* xb) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i scales = BlockTables<kShift>::scale_codes(block_scales);
  const __m512i v = _mm512_loadu_si512(block_codes), v2 = _mm512_srli_epi16(v, 2);
  // Units (i, i + 4) of the block's two quads, against xq_pairs' unit order 0 4 1 5 2 6 3 7.
  auto pair_dot = [&](int i) __attribute__((always_inline)) {
    const __m512i field = _mm512_set1_epi8(i < 2 ? 3 : 0x30);
    const __m512i codes = _mm512_and_si512(i % 2 ? v2 : v, field);
    return _mm512_dpbusd_epi32(zero, codes, _mm512_loadu_si512(xb + 2 * i * kQuantUnit));
  };
  // Dword t: low word from `low`, high word from `high`'s low word (bytes 2, 3 of each dword).
  auto words = [&](__m512i low, __m512i high) {
    return _mm512_mask_shuffle_epi8(low, 0xCCCCCCCCCCCCCCCCull, high, sr.low_word_up);
  };
  __m512i r = _mm512_dpwssd_epi32(zero, words(pair_dot(2), pair_dot(3)), _mm512_shuffle_epi8(scales, sr.spread[1]));
  r = _mm512_dpwssd_epi32(_mm512_srai_epi32(r, 4), words(pair_dot(0), pair_dot(1)), _mm512_shuffle_epi8(scales, sr.spread[0]));
  return fold_halves(r);
}

template <int MC, int kShift>
void dense_pass(const uint8_t* lo, const int8_t* const* x, const int8_t* const* x_pairs, UnitScales unit_scales,
                int64_t units, const float* const* dx, float* const* lane) {
  static const BlockTables<kShift> tables;
  auto quads_at = [&](int64_t u) { return lo + u / kQuantQuadUnits * kQuantQuadBytes; };
  static const SingleRowScales<kShift> single_row;
  auto full = [&](int64_t u, __m256i* ints) {
    if constexpr (MC == 1) {
      ints[0] = block_single_row_dot<kShift>(single_row, quads_at(u), unit_scales.packed + (u >> kShift),
                                             x_pairs[0] + u * kQuantUnit);
    } else {
      block_pairs_dot<MC, kShift>(tables, quads_at(u), unit_scales.packed + (u >> kShift), x_pairs, u, ints);
    }
  };
  // The row's last, partial block: quad by quad on the plain layout (a 64-byte load could run
  // past the row).
  auto tail = [&](int64_t u, int64_t count, __m256i* ints) {
    __m512i acc01[MC], acc23[MC];
    for (int m = 0; m < MC; ++m) acc01[m] = acc23[m] = _mm512_setzero_si512();
    const int64_t end = u + count;
    for (; u + kQuantQuadUnits <= end; u += kQuantQuadUnits) quad_dot<MC, kShift == 0>(acc01, acc23, quads_at(u), x, u, unit_scales);
    if (u < end) partial_quad_dot<MC>(acc01, quads_at(u), x, u, static_cast<int>(end - u), unit_scales);
    for (int m = 0; m < MC; ++m) ints[m] = block_lanes(acc01[m], acc23[m]);
  };
  dense_blocks<MC>(lo, units, dx, lane, full, tail);
}

struct Avx512VnniOps : Avx2Common {
  template <int MC>
  static void row_dot(const uint8_t* lo, const int8_t* const* x, const int8_t* const* x_pairs,
                      UnitScales unit_scales, int64_t units, const float* const* dx, float* const* lane) {
    switch (unit_scales.shift) {
      case 0: dense_pass<MC, 0>(lo, x, x_pairs, unit_scales, units, dx, lane); break;
      case 1: dense_pass<MC, 1>(lo, x, x_pairs, unit_scales, units, dx, lane); break;
      case 2: dense_pass<MC, 2>(lo, x, x_pairs, unit_scales, units, dx, lane); break;
      default: dense_pass<MC, 3>(lo, x, x_pairs, unit_scales, units, dx, lane); break;
    }
  }
};

}  // namespace

bool quant_linear_rows_avx512_vnni(const QuantLinearArgs& args, int64_t begin, int64_t end, void* scratch) {
  return quant_rows<Avx512VnniOps>(args, begin, end, scratch);
}

}  // namespace lmkernels
