// The AVX2 pieces of quant_linear that the AVX2 and AVX-512 paths share: the scaled-code
// tables, the float lane update, the high pass, the block scales, the min term and scale
// decoding.
// Included by each ISA's translation unit, so every copy is compiled with that unit's flags.
#pragma once

#include <immintrin.h>

#include <algorithm>

#include "quant/quant_linear_rows.h"

namespace lmkernels {
namespace {

// kScaledCodes[pair][sc][n] = (code of unit `pair` in nibble n) * sc: unit 0 of a nibble is
// its bits 0..1, unit 1 its bits 2..3.
struct ScaledCodeTables {
  alignas(16) uint8_t t[2][16][16];
  constexpr ScaledCodeTables() : t{} {
    for (int sc = 0; sc < 16; ++sc) {
      for (int n = 0; n < 16; ++n) {
        t[0][sc][n] = static_cast<uint8_t>((n & 3) * sc);
        t[1][sc][n] = static_cast<uint8_t>((n >> 2) * sc);
      }
    }
  }
};
constexpr ScaledCodeTables kScaledCodes{};

// 4 * scale code of each packed scale byte, as int16: the high pass broadcasts its unit's
// value straight from here (one load) instead of masking, shifting and moving it from a
// general register to a vector one (four ops per 4-bit unit).
struct HighScales {
  int16_t t[256];
  constexpr HighScales() : t{} {
    for (int b = 0; b < 256; ++b) t[b] = static_cast<int16_t>(4 * (b & 15));
  }
};
constexpr HighScales kHighScales{};

// Bytes (0, 4 s, 8 s, 12 s) of each packed scale byte (s its scale code): a high unit's codes
// times 4 * s by one pshufb of this dword broadcast (codes 0..3 index a lane's first 4 bytes).
struct HighCodeScales {
  uint32_t t[256];
  constexpr HighCodeScales() : t{} {
    for (int b = 0; b < 256; ++b) {
      const uint32_t s = static_cast<uint32_t>(4 * (b & 15));
      t[b] = (s << 8) | (2 * s << 16) | (3 * s << 24);
    }
  }
};
constexpr HighCodeScales kHighCodeScales{};

inline __m256i scaled_codes(__m256i nibbles, int pair, int16_t scale) {
  const __m128i table = _mm_load_si128(reinterpret_cast<const __m128i*>(kScaledCodes.t[pair][scale]));
  return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(table), nibbles);
}

inline __m256i load_quad(const uint8_t* quad) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(quad)); }

// maddubs multiplies the u8 codes (0..3) with the int8 activations (at most 3 * 127 * 2 per
// int16 lane, no saturation) and madd weights the pairs by the unit's scale into int32.
inline __m256i weighted_dot(__m256i codes, const int8_t* x, __m256i scale16) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xv), scale16);
}

// lane += float(ints) * dx, the step every path takes per block and per high unit.
inline __m256 accumulate_lanes(__m256 lane, __m256i ints, float dx) {
  return _mm256_add_ps(lane, _mm256_mul_ps(_mm256_cvtepi32_ps(ints), _mm256_set1_ps(dx)));
}

// The dense pass's walk over a row's super-blocks, shared by the SIMD paths: `full(u, ints)`
// and `tail(u, count, ints)` give each activation row's 8 int32 lanes of a whole block from
// unit u, or of the row's last, partial one (count units), and each block's lanes are folded
// into the float lanes in registers (lane += float(ints) * dx[b]). Each block also prefetches
// the low-plane line kQuantLowPlanePrefetchBytes ahead (quant_linear_rows.h); `lo` is the row's plane.
template <int MC, class Full, class Tail>
inline void dense_blocks(const uint8_t* lo, int64_t units, const float* const* dx, float* const* lane, Full full,
                         Tail tail) {
  __m256 facc[MC];
  for (int m = 0; m < MC; ++m) facc[m] = _mm256_setzero_ps();
  const int64_t blocks = units / kQuantSuperUnits;
  __m256i ints[MC];
  for (int64_t b = 0; b < blocks; ++b) {
    prefetch_low_plane(lo + b * kQuantSuperBlockLowBytes);
    full(b * kQuantSuperUnits, ints);
    for (int m = 0; m < MC; ++m) facc[m] = accumulate_lanes(facc[m], ints[m], dx[m][b]);
  }
  if (blocks * kQuantSuperUnits < units) {
    tail(blocks * kQuantSuperUnits, units - blocks * kQuantSuperUnits, ints);
    for (int m = 0; m < MC; ++m) facc[m] = accumulate_lanes(facc[m], ints[m], dx[m][blocks]);
  }
  for (int m = 0; m < MC; ++m) _mm256_storeu_ps(lane[m], facc[m]);
}

struct Avx2Common {
  // The high plane's units a quad at a time (shifts by immediates), from the quad holding
  // `first`; a row's first and last quads may hold its neighbours' units, which are skipped.
  // Units at even and odd plane positions go to separate accumulators (the contract in
  // quant_linear_rows.h). The row pointers are copied to locals first: read through x and dx
  // in the loop, GCC reloaded them for every quad and ran out of registers.
  template <int UPG, int MC, bool kPairs>
  static void high_dot(const uint8_t* plane, uint64_t first, int64_t count, const int16_t* hi_groups,
                       UnitScales unit_scales, const int8_t* const* x_rows, const float* const* dx_rows,
                       float* const* lane, const uint32_t* pair_offsets) {
    const int8_t* x[MC];
    const float* dx[MC];
    __m256 acc[2][MC];
    for (int m = 0; m < MC; ++m) {
      x[m] = x_rows[m];
      dx[m] = dx_rows[m];
      acc[0][m] = _mm256_loadu_ps(lane[m]);
      acc[1][m] = _mm256_setzero_ps();
    }
    const uint8_t* packed = unit_scales.packed;
    const __m256i three = _mm256_set1_epi8(3);
    const int64_t lead = static_cast<int64_t>(first % kQuantQuadUnits);
    const uint8_t* quads = plane + first / kQuantQuadUnits * kQuantQuadBytes;
    // The scale is read at the unit's group (a compile-time shift, not unit_scales' runtime
    // one). Always inlined: out of line (GCC's choice at 4 activation rows once the dense pass
    // grew), the accumulators go through memory on every unit and 4-row calls took 25% longer.
    auto unit_dot = [&](__m256i shifted, int64_t i, int chain) __attribute__((always_inline)) {
      const uint64_t unit = high_unit<UPG>(hi_groups, static_cast<uint64_t>(i));
      const uint64_t offset = unit_x_offset<kPairs>(unit, pair_offsets);
      const uint64_t block = unit / kQuantSuperUnits;
      const __m256i codes = _mm256_and_si256(shifted, three);
#if defined(__AVX512VNNI__)
      // The same int32 lanes from codes scaled by a pshufb (port 5) and one vpdpbusd, instead
      // of a word broadcast (a port-5 uop too) and maddubs + madd: one uop fewer per unit and
      // one fewer on ports 0 and 1, which the high pass's multiplies and float steps share.
      // Batch 1, 4096x4096, 1 thread: 0.57 -> 0.52 ms (20% of groups at 4 bits), 0.745 -> 0.70
      // ms (50%); batch 4, 2 threads: 0.85 -> 0.78 ms. (3% slower on an earlier machine.)
      const __m256i scaled = _mm256_shuffle_epi8(
          _mm256_set1_epi32(static_cast<int>(kHighCodeScales.t[packed[unit / UPG]])), codes);
      for (int m = 0; m < MC; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[m] + offset));
        acc[chain][m] = accumulate_lanes(acc[chain][m], _mm256_dpbusd_epi32(_mm256_setzero_si256(), scaled, xv), dx[m][block]);
      }
#else
      const __m256i scale = _mm256_set1_epi16(kHighScales.t[packed[unit / UPG]]);
      for (int m = 0; m < MC; ++m) {
        acc[chain][m] = accumulate_lanes(acc[chain][m], weighted_dot(codes, x[m] + offset, scale), dx[m][block]);
      }
#endif
    };
    for (int64_t base = -lead; base < count; base += kQuantQuadUnits, quads += kQuantQuadBytes) {
      const __m256i q = load_quad(quads);
      if (base >= 0 && base + kQuantQuadUnits <= count) {
        unit_dot(q, base, 0);
        unit_dot(_mm256_srli_epi16(q, 2), base + 1, 1);
        unit_dot(_mm256_srli_epi16(q, 4), base + 2, 0);
        unit_dot(_mm256_srli_epi16(q, 6), base + 3, 1);
      } else {
        for (int k = 0; k < kQuantQuadUnits; ++k) {
          if (base + k >= 0 && base + k < count) unit_dot(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * k)), base + k, k & 1);
        }
      }
    }
    for (int m = 0; m < MC; ++m) _mm256_storeu_ps(lane[m], _mm256_add_ps(acc[0][m], acc[1][m]));
  }

  // msum of blocks b .. b + 7 at group size 32 (eight groups per block): four madds and a
  // tree of hadds; with AVX-512BW two madds, two permutes and a shift (at 4096 inputs the min
  // term took about 39 of a row's ~290 cycles with the hadds, 26 with this).
  static __m256i chunk_min_sums(const uint8_t* scales, const int16_t* xsum, int64_t b) {
#if defined(__AVX512BW__)
    const int64_t g = b * 8;
    auto pair_sums = [&](int64_t first) {  // dword k: groups first + 2k, first + 2k + 1
      const __m512i codes = _mm512_srli_epi16(
          _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + first))), 4);
      return _mm512_madd_epi16(codes, _mm512_loadu_si512(xsum + first));
    };
    const __m512i lo = pair_sums(g), hi = pair_sums(g + 32);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i quads = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, even, hi),
                                           _mm512_permutex2var_epi32(lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), hi));
    // quads' dwords 2j, 2j + 1 hold block j's four pair sums, two each: add them in each qword.
    return _mm512_cvtepi64_epi32(_mm512_add_epi32(quads, _mm512_srli_epi64(quads, 32)));
#else
    __m256i v[4];
    for (int i = 0; i < 4; ++i) {
      const int64_t g = b * 8 + 16 * i;
      const __m256i codes = _mm256_srli_epi16(
          _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g))), 4);
      v[i] = _mm256_madd_epi16(codes, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xsum + g)));
    }
    // [b0 b2 b4 b6 | b1 b3 b5 b7] after three levels, then back into block order.
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
#endif
  }

  // d (kOdd false) or dmin (true) of blocks b .. b + 7 from their (d, dmin) pairs: the
  // shuffle gives blocks 0 1 4 5 | 2 3 6 7, the permute puts them back in order.
  template <bool kOdd>
  static __m256 of_pairs(const float* pairs) {
    const __m256 p0 = _mm256_loadu_ps(pairs), p1 = _mm256_loadu_ps(pairs + 8);
    constexpr int pick = kOdd ? _MM_SHUFFLE(3, 1, 3, 1) : _MM_SHUFFLE(2, 0, 2, 0);
    return _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(p0, p1, pick)), _MM_SHUFFLE(3, 1, 2, 0)));
  }

  static void block_scales(const float* d_dmin, const float* xscale, int64_t S, float* dx) {
    for (int64_t b = 0; b < quant_combine_stride(S); b += 8) {
      _mm256_storeu_ps(dx + b, _mm256_mul_ps(of_pairs<false>(d_dmin + 2 * b), _mm256_loadu_ps(xscale + b)));
    }
  }

  // min_sums_scalar() then min_term_lanes() with 8-wide vectors: the same products, sums and
  // reduction tree. At group size 32 each 8-block chunk's sums stay in registers; other group
  // sizes and the tail go through msum.
  static float min_term(const uint8_t* scales, const int16_t* xsum, const QuantShape& s, const float* d_dmin,
                        const float* xscale, int32_t* msum) {
    __m256 acc = _mm256_setzero_ps();
    auto add_chunk = [&](int64_t b, __m256i sums) {
      const __m256 scale = _mm256_mul_ps(of_pairs<true>(d_dmin + 2 * b), _mm256_loadu_ps(xscale + b));
      acc = _mm256_add_ps(acc, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(sums)));
    };
    int64_t b = 0;
    if (s.group_size == 32) {
      for (; (b + 8) * 8 <= s.groups; b += 8) add_chunk(b, chunk_min_sums(scales, xsum, b));
    }
    min_sums_scalar(scales, xsum, s, b, msum);
    for (; b < quant_combine_stride(s.super_blocks); b += 8) {
      add_chunk(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(msum + b)));
    }
    return lane_tree_vector(acc);
  }

  static void decode_halves(const uint16_t* src, float* dst, int64_t count) {
    int64_t i = 0;
    for (; i + 8 <= count; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < count; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

}  // namespace
}  // namespace lmkernels
