// ChunkCache: chunk KV-caches keyed by (chunk, variant), held in three tiers with a byte
// budget each: device memory, host memory and safetensors files on disk.
//
// Keys: chunk = hash of (model identity, chunk token ids), independent of position; variant =
// the caller's hash of the context the KV was computed in (0: computed alone). Each entry
// also keeps, in host memory, per-token scores and its prefix: the chunks it was computed
// after and how much attention it paid to each (Cache-Craft's reuse metrics need both). Eviction takes
// the unpinned entry with the lowest score, (hits + 1) * tokens * max(1 - cci, 0.05) / bytes
// (expected reuse times saved compute per byte; cci is the chunk's contextual impact, so a
// chunk that needs much recomputation saves less), or the least recently used one; a victim is
// demoted one tier down (device -> host -> disk) and dropped only from the last tier.
// Acquiring an entry pins it (no eviction, no demotion) until it is released, and promotes it
// to the device tier when there is room. One mutex guards everything: tier moves are copies
// of whole tensors, far cheaper than the prefill they save.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "chunk_cache/chunk_disk.h"

namespace lmkernels::chunk_cache {

enum class Tier : int { kDevice = 0, kHost = 1, kDisk = 2 };
constexpr int kTiers = 3;

enum class Eviction { kScore, kLru };

struct ChunkKey {
  uint64_t chunk = 0, variant = 0;
  bool operator<(const ChunkKey& o) const { return chunk != o.chunk ? chunk < o.chunk : variant < o.variant; }
};

struct EntryInfo {
  Tier tier;
  int64_t bytes, tokens, hits, pins;
  uint64_t last_access;
  double cci;
  at::Tensor prefix;  // int64 [m, 2], host
};

struct CacheStats {
  int64_t hits = 0, misses = 0, evictions = 0, demotions = 0, promotions = 0;
  int64_t bytes[kTiers] = {0, 0, 0};
  int64_t entries[kTiers] = {0, 0, 0};
  int64_t budget[kTiers] = {0, 0, 0};
};

class ChunkCache {
 public:
  // directory "" disables the disk tier; an existing cache directory of the same model is
  // reopened (its entries come back in the disk tier), one of another model is refused.
  ChunkCache(std::string model_id, int64_t device_budget, int64_t host_budget, int64_t disk_budget,
             std::string directory, Eviction eviction, c10::Device device);

  uint64_t chunk_hash(const int64_t* tokens, int64_t n) const;

  // Stores a variant (replacing an unpinned one of the same key); kv any shape and dtype,
  // scores float32 [tokens] (per-token attention to the preceding context), prefix int64
  // [m, 2] (preceding chunk keys, attention mass as float64 bits). Throws when the entry fits
  // no tier or the key is pinned.
  void put(ChunkKey key, const at::Tensor& kv, const at::Tensor& scores, const at::Tensor& prefix, double cci);
  // Pins and returns the entry's tensors (kv promoted to the device tier when there is room);
  // nullopt and a miss when absent.
  std::optional<EntryTensors> acquire(ChunkKey key);
  void release(ChunkKey key);
  bool remove(ChunkKey key);
  std::optional<EntryInfo> info(ChunkKey key) const;
  std::vector<uint64_t> variants(uint64_t chunk) const;
  CacheStats stats() const;
  // Checks every invariant (budgets, byte sums, files of the disk tier); throws on a violation.
  void check_invariants() const;

 private:
  struct Entry {
    ChunkKey key;
    Tier tier = Tier::kDevice;
    at::Tensor kv, scores, prefix;  // kv undefined while on disk; the rest stays in host memory
    std::vector<int64_t> shape;
    at::ScalarType dtype = at::kFloat;
    int64_t bytes = 0, tokens = 0, hits = 0, pins = 0;
    uint64_t last_access = 0;
    double cci = 0.0;
  };

  bool make_room(Tier tier, int64_t bytes);
  void move_down(Entry& e);  // demote one tier, or drop from the last
  void place(Entry& e, Tier tier);
  void drop(Entry& e);
  double score(const Entry& e) const;
  std::string file_of(const ChunkKey& key) const;
  void write_index() const;
  void load_index();
  bool tier_enabled(Tier t) const { return budget_[static_cast<int>(t)] > 0; }

  std::string model_id_, directory_;
  uint64_t model_hash_;
  Eviction eviction_;
  c10::Device device_;
  int64_t budget_[kTiers];
  int64_t used_[kTiers] = {0, 0, 0};
  std::map<ChunkKey, Entry> entries_;
  uint64_t clock_ = 0;
  CacheStats counters_;
  mutable std::mutex mu_;
};

}  // namespace lmkernels::chunk_cache
