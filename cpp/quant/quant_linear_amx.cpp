// AMX path of quant_linear's strips (quant_strips.h): per super-block, the strip's four
// 16 x 64 code tiles times the activations' tiles (tdpbusd) into an int32 tile; a super-block
// of 16 x 16 outputs costs four tile instructions.
#include "quant/quant_strips.h"

namespace lmkernels {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// One 64-k chunk into C tile TC: A tile TA from the strip, B tile TB from the activations. A
// macro: the intrinsics paste the tile numbers into the instruction, so they must be literals.
// Even and odd chunks use different A and B tiles (tiles are not renamed: a load into a tile
// would wait for the previous product that reads it).
#define LMK_AMX_CHUNK(TC, TA, TB, chunk)                         \
  do {                                                           \
    _tile_loadd(TA, strip + (chunk) * kStripTileBytes, 64);      \
    _tile_loadd(TB, x_tiles + (chunk) * kStripTileBytes, 64);    \
    _tile_dpbusd(TC, TA, TB);                                    \
  } while (0)

// One super-block (four chunks from chunk k0) into C tile TC, alternating two A/B tile pairs.
#define LMK_AMX_BLOCK(TC, TA0, TB0, TA1, TB1, k0) \
  do {                                            \
    _tile_zero(TC);                               \
    LMK_AMX_CHUNK(TC, TA0, TB0, (k0));            \
    LMK_AMX_CHUNK(TC, TA1, TB1, (k0) + 1);        \
    LMK_AMX_CHUNK(TC, TA0, TB0, (k0) + 2);        \
    LMK_AMX_CHUNK(TC, TA1, TB1, (k0) + 3);        \
  } while (0)

// Products of the strip with one activation tile (16 rows), block pairs on C tiles 4 and 5 so
// one block's store and combine overlap the next block's products.
void strip_product(const uint8_t* strip, const int8_t* x_tiles, int64_t super_blocks, const float* d,
                   const float* xscale_t, int64_t x_stride, int32_t* c, float* acc) {
  std::memset(acc, 0, kQuantStripRows * 16 * sizeof(float));
  for (int64_t b = 0; b < super_blocks; b += 2) {
    const bool pair = b + 1 < super_blocks;
    LMK_AMX_BLOCK(4, 0, 1, 7, 3, b * 4);
    if (pair) LMK_AMX_BLOCK(5, 2, 6, 0, 1, b * 4 + 4);
    _tile_stored(4, c, 64);
    combine_block(c, d + b, super_blocks, xscale_t + b * x_stride, acc);
    if (pair) {
      _tile_stored(5, c + 256, 64);
      combine_block(c + 256, d + b + 1, super_blocks, xscale_t + (b + 1) * x_stride, acc);
    }
  }
}
#undef LMK_AMX_BLOCK
#undef LMK_AMX_CHUNK

}  // namespace

bool quant_linear_strips_amx(const QuantStripArgs& a, int64_t begin, int64_t end, void* scratch) {
  TileConfig config;
  std::memset(&config, 0, sizeof(config));
  config.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = 16;
    config.colsb[t] = 64;
  }
  _tile_loadconfig(&config);
  const bool ok = strip_rows(a, begin, end, scratch, strip_product);
  _tile_release();
  return ok;
}

}  // namespace lmkernels
