// ReplayBuffer: fixed-length token rows with fifo, reservoir or random replacement, uniform or
// prioritized (sum-tree) sampling, and crash-safe storage on disk.
//
// Crash safety on disk. Rows are copied into memory-mapped shards, then meta.bin is replaced
// atomically; so rows appended by an interrupted add() are simply not counted. Overwrites of
// rows already counted are announced first: meta.bin is rewritten with the slots about to be
// overwritten ("pending"), then the rows are copied, then the commit clears the list. A
// reopen that finds pending slots drops those rows (their content may be torn) by moving rows
// from the end into the holes. Either way the buffer loses at most the rows of the write in
// flight. With durable=true every commit is also fsynced (survives power loss, not only a
// killed process).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "replay/replay_meta.h"
#include "replay/row_store.h"
#include "replay/sum_tree.h"

namespace lmkernels::replay {

class ReplayBuffer {
 public:
  // directory == "" keeps rows in memory. An existing buffer directory is reopened; its
  // configuration must equal `config` (shard_rows 0 = take the directory's).
  ReplayBuffer(BufferConfig config, const std::string& directory, uint64_t seed, bool prioritized, bool durable);
  ~ReplayBuffer();
  ReplayBuffer(const ReplayBuffer&) = delete;
  ReplayBuffer& operator=(const ReplayBuffer&) = delete;

  // Offers n rows of seq_len items each; returns how many were stored (reservoir may drop).
  int64_t add(const uint8_t* rows, int64_t n);
  // Draws n slots (uniform or by priority) and gathers their rows into out; out_item_bytes
  // is the storage width or 8 (widened to int64).
  void sample(int64_t n, int64_t* indices, uint8_t* out, int64_t out_item_bytes);
  void gather(const int64_t* indices, int64_t n, uint8_t* out, int64_t out_item_bytes) const;

  void update_priorities(const int64_t* indices, const double* priorities, int64_t n);
  void get_priorities(const int64_t* indices, double* out, int64_t n) const;
  double total_priority() const;
  double max_priority() const;
  void set_max_priority(double value);

  BufferCounters counters() const;
  const BufferConfig& config() const { return config_; }
  bool prioritized() const { return tree_.has_value(); }
  int64_t recovered_rows() const { return recovered_rows_; }  // rows dropped by the last reopen

  // Restores a state saved by counters() (+ rows in memory mode). On disk the directory must
  // be at the same commit unless strict is false, in which case only the sampling state is
  // taken and the directory's rows and counters stay.
  void restore(const BufferCounters& state, const uint8_t* rows, bool strict);

 private:
  void open_directory(const std::string& directory);
  void recover_pending(std::vector<int64_t> pending);
  void write_meta(const std::vector<int64_t>& pending);
  int64_t assign_slot(BufferCounters& c, Xoshiro256& rng) const;
  void check_indices(const int64_t* indices, int64_t n) const;
  void check_out_width(int64_t out_item_bytes) const;
  // Rows at `indices` into out, widened to int64 when out_item_bytes is 8; caller holds rows_mu_.
  void copy_rows_out(const int64_t* indices, int64_t n, uint8_t* out, int64_t out_item_bytes) const;

  BufferConfig config_;
  int64_t row_bytes_ = 0;
  bool durable_ = false;
  std::string meta_path_;
  struct DirectoryLock {  // a member, so a constructor that throws still releases it
    int fd = -1;
    ~DirectoryLock();
  } lock_;
  std::optional<RowStore> store_;
  BufferCounters counters_;
  Xoshiro256 write_rng_, sample_rng_;
  std::optional<SumTree> tree_;
  double max_priority_ = 1.0;
  int64_t recovered_rows_ = 0;
  mutable std::shared_mutex rows_mu_;  // rows and counters: add() exclusive, reads shared
  mutable std::mutex sample_mu_;       // sample_rng_ and the sum tree
};

}  // namespace lmkernels::replay
