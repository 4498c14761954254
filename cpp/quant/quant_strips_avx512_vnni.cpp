// AVX-512 VNNI product of quant_linear's strips (quant_strips.h), for CPUs without AMX (Zen 4,
// Ice Lake): an int8 GEMM micro-kernel with the 16 x 16 block of int32 sums in 16 registers,
// one per strip row, whose 16 lanes are the tile's activation rows. Per 4 k: one load of the
// activation tile's row (4 k of 16 activation rows), then per strip row a broadcast of its 4
// codes and one vpdpbusd: 64 multiply-adds per instruction with no horizontal sums, where the
// row kernel spends a reduction per super-block and activation row.
#include "quant/quant_strips.h"

namespace lmkernels {
namespace {

// acc += the 4-byte dot products of u8 `codes` with s8 `x`, as inline assembly: GCC 12 copies
// the accumulator to a new register around each _mm512_dpbusd_epi32 in a loop (two extra
// moves per product here), which the tied "+v" operand avoids.
inline __m512i dpbusd(__m512i acc, __m512i codes, __m512i x) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(codes), "v"(x));
  return acc;
}

// ISUM of one super-block: lane j of isum[r] = sum over the block's 64 k-quads of strip row r's
// 4 codes times activation row j's 4 codes (exact in int32: at most 256 * 225 * 128). Sixteen
// named accumulators: an array of them spills.
inline void block_sums(const uint8_t* strip, const int8_t* x_tiles, int32_t* isum) {
#define LMK_STRIP_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define LMK_ZERO(r) __m512i acc##r = _mm512_setzero_si512();
#define LMK_DOT(r) acc##r = dpbusd(acc##r, _mm512_set1_epi32(code_word(codes + 64 * (r) + 4 * j)), xv);
#define LMK_STORE(r) _mm512_store_si512(isum + 16 * (r), acc##r);
  auto code_word = [](const uint8_t* p) {
    int32_t w;
    std::memcpy(&w, p, sizeof(w));
    return w;
  };
  LMK_STRIP_ROWS(LMK_ZERO)
  for (int chunk = 0; chunk < 4; ++chunk) {
    const uint8_t* codes = strip + chunk * kStripTileBytes;
    const int8_t* x = x_tiles + chunk * kStripTileBytes;
    for (int j = 0; j < 16; ++j) {
      const __m512i xv = _mm512_loadu_si512(x + 64 * j);
      LMK_STRIP_ROWS(LMK_DOT)
    }
  }
  LMK_STRIP_ROWS(LMK_STORE)
#undef LMK_STORE
#undef LMK_DOT
#undef LMK_ZERO
#undef LMK_STRIP_ROWS
}

void strip_product(const uint8_t* strip, const int8_t* x_tiles, int64_t super_blocks, const float* d,
                   const float* xscale_t, int64_t x_stride, int32_t* c, float* acc) {
  std::memset(acc, 0, kQuantStripRows * 16 * sizeof(float));
  for (int64_t b = 0; b < super_blocks; ++b) {
    block_sums(strip + b * 4 * kStripTileBytes, x_tiles + b * 4 * kStripTileBytes, c);
    combine_block(c, d + b, super_blocks, xscale_t + b * x_stride, acc);
  }
}

}  // namespace

void quant_strip_activation_tiles(const int8_t* xq, int64_t row_begin, int64_t row_end, int64_t super_blocks,
                                  int8_t* tiles) {
  // A tile row is 4 k of 16 activation rows, so a row's 64 k (16 dwords) go to 16 tile rows 16
  // dwords apart.
  const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(kQuantStripCols));
  const int64_t kp = super_blocks * kQuantSuperBlock;
  for (int64_t m = row_begin; m < row_end; ++m) {
    auto* dst = reinterpret_cast<int32_t*>(tiles + m / kQuantStripCols * kp * kQuantStripCols) + m % kQuantStripCols;
    for (int64_t k = 0; k < kp; k += 64) {
      _mm512_i32scatter_epi32(dst + k / 4 * kQuantStripCols, offsets, _mm512_loadu_si512(xq + m * kp + k), 4);
    }
  }
}

bool quant_linear_strips_avx512_vnni(const QuantStripArgs& a, int64_t begin, int64_t end, void* scratch) {
  return strip_rows(a, begin, end, scratch, strip_product);
}

}  // namespace lmkernels
