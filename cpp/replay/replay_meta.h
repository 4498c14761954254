// The replay buffer's metadata file (meta.bin in its directory): configuration, counters, both
// random states, and the slots of an overwrite in flight. It is replaced atomically on every
// commit and carries a checksum, so a reader sees one whole commit or refuses the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "replay/replay_rng.h"

namespace lmkernels::replay {

enum class Writer : int32_t { kFifo = 0, kReservoir = 1, kRandom = 2 };

struct BufferConfig {
  int64_t capacity = 0;
  int64_t seq_len = 0;
  int64_t item_bytes = 0;  // 2 (uint16) or 4 (int32)
  int64_t shard_rows = 0;
  Writer writer = Writer::kReservoir;
};

struct BufferCounters {
  int64_t size = 0;    // rows held, in slots [0, size)
  int64_t seen = 0;    // rows ever offered to add()
  int64_t cursor = 0;  // fifo: the next slot to overwrite
  int64_t commit = 0;  // add() calls that changed the buffer
  Xoshiro256::State write_rng{};
  Xoshiro256::State sample_rng{};
};

struct BufferMeta {
  BufferConfig config;
  BufferCounters counters;
  std::vector<int64_t> pending;  // slots being overwritten by the write in flight
};

std::vector<uint8_t> encode_meta(const BufferMeta& meta);
// Throws std::runtime_error naming `path` on a bad magic, version, size or checksum.
BufferMeta decode_meta(const std::vector<uint8_t>& bytes, const std::string& path);
BufferMeta read_meta_file(const std::string& path);

}  // namespace lmkernels::replay
