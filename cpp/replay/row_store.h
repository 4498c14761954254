// Fixed-size rows in memory or in memory-mapped shard files (rows-00000.bin, ...) under a
// directory. Shards are created on demand with their space reserved (posix_fallocate), so a
// full disk is an error at creation, never a SIGBUS while rows are copied in; existing shards
// are never remapped, so row pointers stay valid while the store grows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "io/atomic_file.h"

namespace lmkernels::replay {

class RowStore {
 public:
  // An empty `directory` keeps rows in memory (all of `capacity` reserved up front).
  RowStore(std::string directory, int64_t capacity, int64_t row_bytes, int64_t shard_rows);
  ~RowStore();
  RowStore(const RowStore&) = delete;
  RowStore& operator=(const RowStore&) = delete;

  // Makes rows [0, rows) addressable, creating shards as needed; `must_exist` refuses to
  // create (reopening a buffer whose metadata counts rows in a shard that is missing).
  void reserve(int64_t rows, bool must_exist = false);
  uint8_t* row(int64_t index) const {
    return shards_[index / shard_rows_].data + (index % shard_rows_) * row_bytes_;
  }
  // Writes dirty shard pages to disk (msync); a no-op in memory.
  void sync() const;

  bool on_disk() const { return !directory_.empty(); }
  int64_t row_bytes() const { return row_bytes_; }
  int64_t shard_rows() const { return shard_rows_; }

 private:
  struct Shard {
    uint8_t* data = nullptr;
    int64_t bytes = 0;
  };
  void open_shard(int64_t index, bool must_exist);

  std::string directory_;
  int64_t capacity_, row_bytes_, shard_rows_;
  std::vector<Shard> shards_;
  std::vector<uint8_t> memory_;
};

}  // namespace lmkernels::replay
