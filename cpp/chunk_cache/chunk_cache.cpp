#include "chunk_cache/chunk_cache.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "chunk_cache/chunk_disk.h"
#include "io/atomic_file.h"

namespace lmkernels::chunk_cache {
namespace {

constexpr const char* kIndexMagic = "lmkernels-chunk-cache";
constexpr int kIndexVersion = 2;
const char* kTierNames[kTiers] = {"device", "host", "disk"};

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

uint64_t mix(uint64_t z) {  // splitmix64's finaliser: spreads FNV's weak high bits
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

}  // namespace

ChunkCache::ChunkCache(std::string model_id, int64_t device_budget, int64_t host_budget, int64_t disk_budget,
                       std::string directory, Eviction eviction, c10::Device device)
    : model_id_(std::move(model_id)), directory_(std::move(directory)), eviction_(eviction), device_(device),
      budget_{device_budget, host_budget, disk_budget} {
  for (int t = 0; t < kTiers; ++t) {
    if (budget_[t] < 0) throw std::invalid_argument(std::string("ChunkCache: the ") + kTierNames[t] + " budget must be >= 0");
  }
  if (device_budget + host_budget + disk_budget == 0) throw std::invalid_argument("ChunkCache: every budget is 0");
  if ((disk_budget > 0) != !directory_.empty()) {
    throw std::invalid_argument("ChunkCache: the disk tier needs both a directory and a disk budget");
  }
  model_hash_ = mix(fnv1a(0xcbf29ce484222325ull, model_id_.data(), model_id_.size()));
  if (!directory_.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(directory_, ec);
    if (ec || !std::filesystem::is_directory(directory_)) {
      throw std::runtime_error("ChunkCache: cannot create the directory '" + directory_ + "': " +
                               (ec ? ec.message() : "not a directory"));
    }
    if (std::filesystem::exists(directory_ + "/index.txt")) load_index();
    write_index();  // fails here, clearly, when the directory is not writable
  }
}

uint64_t ChunkCache::chunk_hash(const int64_t* tokens, int64_t n) const {
  uint64_t h = fnv1a(model_hash_, tokens, static_cast<size_t>(n) * sizeof(int64_t));
  return mix(fnv1a(h, &n, sizeof(n)));
}

double ChunkCache::score(const Entry& e) const {
  if (eviction_ == Eviction::kLru) return static_cast<double>(e.last_access);
  const double saved = static_cast<double>(e.tokens) * std::max(1.0 - e.cci, 0.05);
  return static_cast<double>(e.hits + 1) * saved / static_cast<double>(std::max<int64_t>(e.bytes, 1));
}

std::string ChunkCache::file_of(const ChunkKey& key) const {
  return directory_ + "/" + hex(key.chunk) + "-" + hex(key.variant) + ".safetensors";
}

bool ChunkCache::make_room(Tier tier, int64_t bytes) {
  const int t = static_cast<int>(tier);
  if (bytes > budget_[t]) return false;
  while (used_[t] + bytes > budget_[t]) {
    Entry* victim = nullptr;
    for (auto& [key, e] : entries_) {
      if (e.tier == tier && e.pins == 0 && (!victim || score(e) < score(*victim))) victim = &e;
    }
    if (!victim) return false;
    move_down(*victim);
  }
  return true;
}

void ChunkCache::move_down(Entry& e) {
  for (int next = static_cast<int>(e.tier) + 1; next < kTiers; ++next) {
    const auto to = static_cast<Tier>(next);
    if (tier_enabled(to) && make_room(to, e.bytes)) {
      place(e, to);
      counters_.demotions += 1;
      return;
    }
  }
  counters_.evictions += 1;
  drop(e);  // e is gone afterwards
}

void ChunkCache::place(Entry& e, Tier to) {
  const Tier from = e.tier;
  if (to == Tier::kDisk) {
    write_entry_file(file_of(e.key), {e.kv.cpu().contiguous(), e.scores, e.prefix});
    e.kv = at::Tensor();
  } else {
    at::Tensor kv = e.kv;
    if (from == Tier::kDisk) kv = read_entry_file(file_of(e.key), e.shape, e.dtype, e.tokens, e.prefix.size(0)).kv;
    e.kv = kv.to(to == Tier::kDevice ? device_ : c10::Device(c10::kCPU));
  }
  used_[static_cast<int>(from)] -= e.bytes;
  used_[static_cast<int>(to)] += e.bytes;
  e.tier = to;
  if (from == Tier::kDisk) std::filesystem::remove(file_of(e.key));
  if (from == Tier::kDisk || to == Tier::kDisk) write_index();
}

void ChunkCache::drop(Entry& e) {
  used_[static_cast<int>(e.tier)] -= e.bytes;
  const bool on_disk = e.tier == Tier::kDisk;
  const ChunkKey key = e.key;
  entries_.erase(key);
  if (on_disk) {
    std::filesystem::remove(file_of(key));
    write_index();
  }
}

void ChunkCache::put(ChunkKey key, const at::Tensor& kv, const at::Tensor& scores, const at::Tensor& prefix,
                     double cci) {
  if (!kv.defined() || kv.numel() == 0) throw std::invalid_argument("ChunkCache.put: kv is empty");
  if (scores.dim() != 1 || scores.scalar_type() != at::kFloat || scores.numel() == 0) {
    throw std::invalid_argument("ChunkCache.put: scores must be a non-empty 1-D float32 tensor (one per token)");
  }
  if (prefix.dim() != 2 || prefix.size(1) != 2 || prefix.scalar_type() != at::kLong) {
    throw std::invalid_argument("ChunkCache.put: prefix must be an int64 [m, 2] tensor");
  }
  if (!std::isfinite(cci) || cci < 0.0) throw std::invalid_argument("ChunkCache.put: cci must be finite and >= 0");
  std::lock_guard lock(mu_);
  auto found = entries_.find(key);
  if (found != entries_.end()) {
    if (found->second.pins > 0) throw std::runtime_error("ChunkCache.put: this variant is in use (pinned)");
    drop(found->second);
  }
  Entry e;
  e.key = key;
  e.shape = kv.sizes().vec();
  e.dtype = kv.scalar_type();
  e.bytes = static_cast<int64_t>(kv.nbytes());
  e.tokens = scores.numel();
  e.cci = cci;
  e.scores = scores.cpu().contiguous();
  e.prefix = prefix.cpu().contiguous();
  e.last_access = ++clock_;
  for (int t = 0; t < kTiers; ++t) {
    const auto tier = static_cast<Tier>(t);
    if (!tier_enabled(tier) || !make_room(tier, e.bytes)) continue;
    // Held by reference when it is already where the tier keeps it: no copy.
    e.tier = tier == Tier::kDisk ? Tier::kHost : tier;
    e.kv = kv;
    if (tier != Tier::kDisk) e.kv = kv.to(tier == Tier::kDevice ? device_ : c10::Device(c10::kCPU));
    used_[static_cast<int>(e.tier)] += e.bytes;
    Entry& stored = entries_.emplace(key, std::move(e)).first->second;
    if (tier == Tier::kDisk) {
      try {
        place(stored, Tier::kDisk);
      } catch (...) {
        drop(stored);  // nothing half-stored stays behind
        throw;
      }
    }
    return;
  }
  throw std::invalid_argument("ChunkCache.put: an entry of " + std::to_string(e.bytes) +
                              " bytes fits no tier (budgets: device " + std::to_string(budget_[0]) + ", host " +
                              std::to_string(budget_[1]) + ", disk " + std::to_string(budget_[2]) +
                              ", pinned entries stay)");
}

std::optional<EntryTensors> ChunkCache::acquire(ChunkKey key) {
  std::lock_guard lock(mu_);
  auto found = entries_.find(key);
  if (found == entries_.end()) {
    counters_.misses += 1;
    return std::nullopt;
  }
  Entry& e = found->second;
  counters_.hits += 1;
  e.hits += 1;
  e.last_access = ++clock_;
  e.pins += 1;
  try {
    for (int t = 0; t < static_cast<int>(e.tier); ++t) {
      const auto to = static_cast<Tier>(t);
      if (tier_enabled(to) && make_room(to, e.bytes)) {
        place(e, to);
        counters_.promotions += 1;
        break;
      }
    }
    if (e.tier == Tier::kDisk) {  // no room in memory: hand out a copy, the entry stays on disk
      write_index();              // with its hit count, which the score needs after a reopen
      auto loaded = read_entry_file(file_of(e.key), e.shape, e.dtype, e.tokens, e.prefix.size(0));
      return EntryTensors{loaded.kv.to(device_), e.scores, e.prefix};
    }
  } catch (...) {
    e.pins -= 1;  // a failed read (a damaged file) must not leave the entry pinned forever
    throw;
  }
  return EntryTensors{e.kv, e.scores, e.prefix};
}

void ChunkCache::release(ChunkKey key) {
  std::lock_guard lock(mu_);
  auto found = entries_.find(key);
  if (found == entries_.end() || found->second.pins == 0) {
    throw std::runtime_error("ChunkCache.release: this variant is not acquired");
  }
  found->second.pins -= 1;
}

bool ChunkCache::remove(ChunkKey key) {
  std::lock_guard lock(mu_);
  auto found = entries_.find(key);
  if (found == entries_.end()) return false;
  if (found->second.pins > 0) throw std::runtime_error("ChunkCache.remove: this variant is in use (pinned)");
  drop(found->second);
  return true;
}

std::optional<EntryInfo> ChunkCache::info(ChunkKey key) const {
  std::lock_guard lock(mu_);
  auto found = entries_.find(key);
  if (found == entries_.end()) return std::nullopt;
  const Entry& e = found->second;
  return EntryInfo{e.tier, e.bytes, e.tokens, e.hits, e.pins, e.last_access, e.cci, e.prefix};
}

std::vector<uint64_t> ChunkCache::variants(uint64_t chunk) const {
  std::lock_guard lock(mu_);
  std::vector<uint64_t> out;
  for (auto it = entries_.lower_bound(ChunkKey{chunk, 0}); it != entries_.end() && it->first.chunk == chunk; ++it) {
    out.push_back(it->first.variant);
  }
  return out;
}

CacheStats ChunkCache::stats() const {
  std::lock_guard lock(mu_);
  CacheStats s = counters_;
  for (int t = 0; t < kTiers; ++t) {
    s.bytes[t] = used_[t];
    s.budget[t] = budget_[t];
  }
  for (const auto& [key, e] : entries_) s.entries[static_cast<int>(e.tier)] += 1;
  return s;
}

void ChunkCache::check_invariants() const {
  std::lock_guard lock(mu_);
  int64_t sums[kTiers] = {0, 0, 0};
  for (const auto& [key, e] : entries_) {
    const int t = static_cast<int>(e.tier);
    sums[t] += e.bytes;
    if (e.pins < 0) throw std::logic_error("ChunkCache: negative pin count");
    if ((e.tier == Tier::kDisk) == e.kv.defined()) throw std::logic_error("ChunkCache: kv held on the wrong tier");
    if (e.tier == Tier::kDisk && !std::filesystem::exists(file_of(key))) throw std::logic_error("ChunkCache: file missing");
    if (e.tier == Tier::kDevice && e.kv.device() != device_) throw std::logic_error("ChunkCache: device entry elsewhere");
  }
  for (int t = 0; t < kTiers; ++t) {
    if (sums[t] != used_[t]) throw std::logic_error(std::string("ChunkCache: byte count of the ") + kTierNames[t] + " tier is off");
    if (used_[t] > budget_[t]) throw std::logic_error(std::string("ChunkCache: the ") + kTierNames[t] + " tier is over budget");
  }
}

void ChunkCache::write_index() const {
  std::ostringstream out;
  out << kIndexMagic << ' ' << kIndexVersion << ' ' << hex(model_hash_) << '\n';
  for (const auto& [key, e] : entries_) {
    if (e.tier != Tier::kDisk) continue;
    char cci[32];
    std::snprintf(cci, sizeof(cci), "%.17g", e.cci);
    out << hex(key.chunk) << ' ' << hex(key.variant) << ' ' << e.tokens << ' ' << cci << ' ' << e.hits << ' '
        << e.prefix.size(0) << ' ' << static_cast<int>(e.dtype) << ' ' << e.shape.size();
    for (int64_t d : e.shape) out << ' ' << d;
    out << '\n';
  }
  const std::string text = out.str();
  io::write_file_atomically(directory_ + "/index.txt", std::vector<uint8_t>(text.begin(), text.end()), false);
}

void ChunkCache::load_index() {
  const std::string path = directory_ + "/index.txt";
  std::ifstream in(path);
  std::string magic, model;
  int version = 0;
  in >> magic >> version >> model;
  if (magic != kIndexMagic || version != kIndexVersion) throw std::runtime_error("ChunkCache: '" + path + "' is not a chunk cache index");
  if (model != hex(model_hash_)) {
    throw std::invalid_argument("ChunkCache: the directory '" + directory_ + "' holds the chunk cache of another model");
  }
  std::string chunk, variant;
  while (in >> chunk >> variant) {
    Entry e;
    try {
      e.key = {std::stoull(chunk, nullptr, 16), std::stoull(variant, nullptr, 16)};
    } catch (const std::exception&) {
      throw std::runtime_error("ChunkCache: '" + path + "' is damaged");
    }
    int dtype = 0;
    size_t ndim = 0;
    int64_t prefix_len = -1;
    in >> e.tokens >> e.cci >> e.hits >> prefix_len >> dtype >> ndim;
    e.shape.resize(ndim);
    for (auto& d : e.shape) in >> d;
    if (!in || prefix_len < 0) throw std::runtime_error("ChunkCache: '" + path + "' is damaged");
    e.dtype = static_cast<at::ScalarType>(dtype);
    e.tier = Tier::kDisk;
    e.bytes = static_cast<int64_t>(c10::elementSize(e.dtype));
    for (int64_t d : e.shape) e.bytes *= d;
    // A file lost or cut short (a crash between its write and the index's) is skipped.
    std::error_code ec;
    const auto size = std::filesystem::file_size(file_of(e.key), ec);
    if (ec || static_cast<int64_t>(size) < e.bytes + 4 * e.tokens + 16 * prefix_len) continue;
    auto loaded = read_entry_file(file_of(e.key), e.shape, e.dtype, e.tokens, prefix_len);
    e.scores = loaded.scores;
    e.prefix = loaded.prefix;
    used_[static_cast<int>(Tier::kDisk)] += e.bytes;
    entries_.emplace(e.key, std::move(e));
  }
  while (used_[static_cast<int>(Tier::kDisk)] > budget_[static_cast<int>(Tier::kDisk)]) {  // a smaller budget now
    Entry* victim = nullptr;
    for (auto& [key, e] : entries_) {
      if (!victim || score(e) < score(*victim)) victim = &e;
    }
    counters_.evictions += 1;
    drop(*victim);
  }
}

}  // namespace lmkernels::chunk_cache
