#include "replay/replay_buffer.h"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace lmkernels::replay {
namespace {

constexpr int64_t kDefaultShardBytes = int64_t{64} << 20;
constexpr int64_t kCopyGrainBytes = int64_t{64} << 10;  // bytes per parallel task

std::string describe(const BufferConfig& c) {
  static const char* writers[] = {"fifo", "reservoir", "random"};
  return "capacity=" + std::to_string(c.capacity) + ", seq_len=" + std::to_string(c.seq_len) +
         ", item_bytes=" + std::to_string(c.item_bytes) + ", writer=" + writers[static_cast<int>(c.writer)];
}

template <class Src>
void widen_row(const uint8_t* src, int64_t count, uint8_t* dst) {
  const auto* s = reinterpret_cast<const Src*>(src);
  auto* d = reinterpret_cast<int64_t*>(dst);
  for (int64_t i = 0; i < count; ++i) d[i] = static_cast<int64_t>(s[i]);
}

}  // namespace

ReplayBuffer::ReplayBuffer(BufferConfig config, const std::string& directory, uint64_t seed, bool prioritized,
                           bool durable)
    : config_(config), durable_(durable), write_rng_(seed), sample_rng_(seed ^ 0x632BE59BD9B4E019ull) {
  if (config_.capacity <= 0) throw std::invalid_argument("ReplayBuffer: capacity must be positive");
  if (config_.seq_len <= 0) throw std::invalid_argument("ReplayBuffer: seq_len must be positive");
  if (config_.item_bytes != 2 && config_.item_bytes != 4) {
    throw std::invalid_argument("ReplayBuffer: item_bytes must be 2 (uint16) or 4 (int32)");
  }
  if (config_.shard_rows < 0) throw std::invalid_argument("ReplayBuffer: shard_rows must be >= 0 (0 = default)");
  row_bytes_ = config_.seq_len * config_.item_bytes;
  if (prioritized) tree_.emplace(config_.capacity);
  if (directory.empty()) {
    config_.shard_rows = config_.capacity;
    store_.emplace("", config_.capacity, row_bytes_, config_.capacity);
  } else {
    open_directory(directory);
  }
  counters_.write_rng = write_rng_.state();
  counters_.sample_rng = sample_rng_.state();
  if (tree_) {
    for (int64_t i = 0; i < counters_.size; ++i) tree_->set(i, 1.0);
  }
}

ReplayBuffer::~ReplayBuffer() = default;

ReplayBuffer::DirectoryLock::~DirectoryLock() {
  if (fd >= 0) ::close(fd);  // releases the flock
}

void ReplayBuffer::open_directory(const std::string& directory) {
  std::error_code ec;
  std::filesystem::create_directories(directory, ec);
  if (ec || !std::filesystem::is_directory(directory)) {
    throw std::runtime_error("ReplayBuffer: cannot create the directory '" + directory +
                             "': " + (ec ? ec.message() : "not a directory"));
  }
  const std::string lock_path = directory + "/lock";
  lock_.fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_.fd < 0) {
    throw std::runtime_error("ReplayBuffer: the directory '" + directory + "' is not writable: " + std::strerror(errno));
  }
  if (::flock(lock_.fd, LOCK_EX | LOCK_NB) != 0) {
    throw std::runtime_error("ReplayBuffer: the directory '" + directory +
                             "' is in use by another ReplayBuffer (this process or another); close it first");
  }
  meta_path_ = directory + "/meta.bin";
  if (std::filesystem::exists(meta_path_)) {
    const BufferMeta meta = read_meta_file(meta_path_);
    const BufferConfig& found = meta.config;
    if (found.capacity != config_.capacity || found.seq_len != config_.seq_len ||
        found.item_bytes != config_.item_bytes || found.writer != config_.writer) {
      throw std::invalid_argument("ReplayBuffer: the directory '" + directory + "' holds a buffer with " +
                                  describe(found) + ", not " + describe(config_));
    }
    if (config_.shard_rows != 0 && config_.shard_rows != found.shard_rows) {
      throw std::invalid_argument("ReplayBuffer: the directory '" + directory + "' uses shard_rows=" +
                                  std::to_string(found.shard_rows) + ", not " + std::to_string(config_.shard_rows));
    }
    config_.shard_rows = found.shard_rows;
    store_.emplace(directory, config_.capacity, row_bytes_, config_.shard_rows);
    store_->reserve(meta.counters.size, /*must_exist=*/true);
    counters_ = meta.counters;
    write_rng_.set_state(counters_.write_rng);
    sample_rng_.set_state(counters_.sample_rng);
    if (!meta.pending.empty()) recover_pending(meta.pending);
    return;
  }
  if (config_.shard_rows == 0) config_.shard_rows = std::clamp<int64_t>(kDefaultShardBytes / row_bytes_, 1, config_.capacity);
  store_.emplace(directory, config_.capacity, row_bytes_, config_.shard_rows);
  write_meta({});  // claims the directory; fails here, with a clear error, when it is not writable
}

void ReplayBuffer::recover_pending(std::vector<int64_t> pending) {
  std::sort(pending.begin(), pending.end());
  pending.erase(std::unique(pending.begin(), pending.end()), pending.end());
  const int64_t size = counters_.size;
  const int64_t kept = size - static_cast<int64_t>(pending.size());
  // Fill the holes below `kept` with the intact rows at or above it; rerunning this after a
  // crash in the middle is safe, because only hole rows are written.
  std::vector<int64_t> sources;
  for (int64_t slot = kept, p = 0; slot < size; ++slot) {
    while (p < static_cast<int64_t>(pending.size()) && pending[p] < slot) ++p;
    if (p < static_cast<int64_t>(pending.size()) && pending[p] == slot) continue;
    sources.push_back(slot);
  }
  size_t next_source = 0;
  for (int64_t hole : pending) {
    if (hole >= kept) break;
    std::memcpy(store_->row(hole), store_->row(sources[next_source++]), static_cast<size_t>(row_bytes_));
  }
  if (durable_) store_->sync();
  counters_.size = kept;
  counters_.cursor = kept % config_.capacity;
  counters_.commit += 1;
  recovered_rows_ = static_cast<int64_t>(pending.size());
  write_meta({});
}

void ReplayBuffer::write_meta(const std::vector<int64_t>& pending) {
  if (!store_->on_disk()) return;
  BufferMeta meta{config_, counters_, pending};
  meta.counters.write_rng = write_rng_.state();
  meta.counters.sample_rng = sample_rng_.state();
  io::write_file_atomically(meta_path_, encode_meta(meta), durable_);
}

int64_t ReplayBuffer::assign_slot(BufferCounters& c, Xoshiro256& rng) const {
  const int64_t capacity = config_.capacity;
  int64_t slot;
  if (c.size < capacity) {
    slot = c.size++;
    c.cursor = (slot + 1) % capacity;
  } else if (config_.writer == Writer::kFifo) {
    slot = c.cursor;
    c.cursor = (c.cursor + 1) % capacity;
  } else if (config_.writer == Writer::kReservoir) {
    // Algorithm R: the t-th row offered (0-based) replaces a uniform slot with probability capacity / (t + 1).
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(c.seen) + 1));
    slot = j < capacity ? j : -1;
  } else {
    slot = static_cast<int64_t>(rng.below(static_cast<uint64_t>(capacity)));
  }
  c.seen += 1;
  return slot;
}

int64_t ReplayBuffer::add(const uint8_t* rows, int64_t n) {
  if (n <= 0) return 0;
  std::unique_lock lock(rows_mu_);
  BufferCounters next = counters_;
  Xoshiro256 rng = write_rng_;
  std::vector<std::pair<int64_t, int64_t>> writes;  // (slot, source row); the last write to a slot wins
  writes.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = assign_slot(next, rng);
    if (slot >= 0) writes.emplace_back(slot, i);
  }
  std::stable_sort(writes.begin(), writes.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::pair<int64_t, int64_t>> unique_writes;
  for (size_t i = 0; i < writes.size(); ++i) {
    if (i + 1 < writes.size() && writes[i + 1].first == writes[i].first) continue;
    unique_writes.push_back(writes[i]);
  }
  std::vector<int64_t> overwritten;
  for (const auto& w : unique_writes) {
    if (w.first < counters_.size) overwritten.push_back(w.first);
  }

  store_->reserve(next.size);                         // may throw: nothing has changed yet
  if (!overwritten.empty()) write_meta(overwritten);  // announce before touching counted rows
  const auto count = static_cast<int64_t>(unique_writes.size());
  const int64_t grain = std::max<int64_t>(1, kCopyGrainBytes / row_bytes_);
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      std::memcpy(store_->row(unique_writes[i].first), rows + unique_writes[i].second * row_bytes_,
                  static_cast<size_t>(row_bytes_));
    }
  });
  if (durable_) store_->sync();

  next.commit += 1;
  counters_ = next;
  write_rng_ = rng;
  if (tree_) {
    std::lock_guard guard(sample_mu_);
    for (const auto& w : unique_writes) tree_->set(w.first, max_priority_);
  }
  write_meta({});
  return count;
}

void ReplayBuffer::check_indices(const int64_t* indices, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) {
    if (indices[i] < 0 || indices[i] >= counters_.size) {
      throw std::out_of_range("ReplayBuffer: index " + std::to_string(indices[i]) + " is out of range for " +
                              std::to_string(counters_.size) + " stored rows");
    }
  }
}

void ReplayBuffer::check_out_width(int64_t out_item_bytes) const {
  if (out_item_bytes != config_.item_bytes && out_item_bytes != 8) {
    throw std::invalid_argument("ReplayBuffer: rows are gathered as the storage type or as int64");
  }
}

void ReplayBuffer::sample(int64_t n, int64_t* indices, uint8_t* out, int64_t out_item_bytes) {
  check_out_width(out_item_bytes);
  std::shared_lock lock(rows_mu_);
  const int64_t size = counters_.size;
  if (size == 0) throw std::runtime_error("ReplayBuffer.sample: the buffer is empty; add rows first");
  {
    std::lock_guard guard(sample_mu_);
    if (tree_) {
      const double total = tree_->total();
      if (!(total > 0.0)) throw std::runtime_error("ReplayBuffer.sample: every priority is zero");
      for (int64_t i = 0; i < n; ++i) indices[i] = tree_->find(sample_rng_.uniform() * total);
    } else {
      for (int64_t i = 0; i < n; ++i) indices[i] = static_cast<int64_t>(sample_rng_.below(static_cast<uint64_t>(size)));
    }
  }
  copy_rows_out(indices, n, out, out_item_bytes);
}

void ReplayBuffer::gather(const int64_t* indices, int64_t n, uint8_t* out, int64_t out_item_bytes) const {
  check_out_width(out_item_bytes);
  std::shared_lock lock(rows_mu_);
  check_indices(indices, n);
  copy_rows_out(indices, n, out, out_item_bytes);
}

void ReplayBuffer::copy_rows_out(const int64_t* indices, int64_t n, uint8_t* out, int64_t out_item_bytes) const {
  const int64_t item = config_.item_bytes, seq_len = config_.seq_len;
  const int64_t grain = std::max<int64_t>(1, kCopyGrainBytes / row_bytes_);
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* src = store_->row(indices[i]);
      if (out_item_bytes == item) {
        std::memcpy(out + i * row_bytes_, src, static_cast<size_t>(row_bytes_));
      } else if (item == 2) {
        widen_row<uint16_t>(src, seq_len, out + i * seq_len * 8);
      } else {
        widen_row<int32_t>(src, seq_len, out + i * seq_len * 8);
      }
    }
  });
}

void ReplayBuffer::update_priorities(const int64_t* indices, const double* priorities, int64_t n) {
  if (!tree_) throw std::runtime_error("ReplayBuffer.update_priorities: the buffer samples uniformly (sampler='uniform')");
  std::shared_lock lock(rows_mu_);
  check_indices(indices, n);
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(priorities[i]) || priorities[i] < 0.0) {
      throw std::invalid_argument("ReplayBuffer.update_priorities: priorities must be finite and >= 0, got " +
                                  std::to_string(priorities[i]));
    }
  }
  std::lock_guard guard(sample_mu_);
  for (int64_t i = 0; i < n; ++i) {
    tree_->set(indices[i], priorities[i]);
    max_priority_ = std::max(max_priority_, priorities[i]);
  }
}

void ReplayBuffer::get_priorities(const int64_t* indices, double* out, int64_t n) const {
  std::shared_lock lock(rows_mu_);
  check_indices(indices, n);
  std::lock_guard guard(sample_mu_);
  for (int64_t i = 0; i < n; ++i) out[i] = tree_ ? tree_->get(indices[i]) : 1.0;
}

double ReplayBuffer::total_priority() const {
  std::shared_lock lock(rows_mu_);  // lock order everywhere: rows_mu_, then sample_mu_
  std::lock_guard guard(sample_mu_);
  return tree_ ? tree_->total() : static_cast<double>(counters_.size);
}

double ReplayBuffer::max_priority() const {
  std::lock_guard guard(sample_mu_);
  return max_priority_;
}

void ReplayBuffer::set_max_priority(double value) {
  if (!std::isfinite(value) || value <= 0.0) {
    throw std::invalid_argument("ReplayBuffer: max_priority must be finite and positive");
  }
  std::lock_guard guard(sample_mu_);
  max_priority_ = value;
}

BufferCounters ReplayBuffer::counters() const {
  std::shared_lock lock(rows_mu_);
  std::lock_guard guard(sample_mu_);
  BufferCounters c = counters_;
  c.write_rng = write_rng_.state();
  c.sample_rng = sample_rng_.state();
  return c;
}

void ReplayBuffer::restore(const BufferCounters& state, const uint8_t* rows, bool strict) {
  std::unique_lock lock(rows_mu_);
  std::lock_guard guard(sample_mu_);
  if (store_->on_disk()) {
    const bool same = state.commit == counters_.commit && state.size == counters_.size && state.seen == counters_.seen;
    if (!same && strict) {
      throw std::runtime_error(
          "ReplayBuffer.load_state_dict: the state is from commit " + std::to_string(state.commit) + " (" +
          std::to_string(state.size) + " rows) but the directory is at commit " + std::to_string(counters_.commit) +
          " (" + std::to_string(counters_.size) + " rows); pass strict=False to keep the directory's rows and "
          "restore only the sampling state");
    }
    sample_rng_.set_state(state.sample_rng);
    if (same) {
      counters_.cursor = state.cursor;
      write_rng_.set_state(state.write_rng);
    }
    return;
  }
  if (state.size < 0 || state.size > config_.capacity || state.cursor < 0 || state.cursor >= config_.capacity ||
      state.seen < state.size) {
    throw std::invalid_argument("ReplayBuffer.load_state_dict: inconsistent counters for capacity " +
                                std::to_string(config_.capacity));
  }
  if (state.size > 0 && rows == nullptr) throw std::invalid_argument("ReplayBuffer.load_state_dict: rows are missing");
  if (state.size > 0) std::memcpy(store_->row(0), rows, static_cast<size_t>(state.size * row_bytes_));
  counters_ = state;
  write_rng_.set_state(state.write_rng);
  sample_rng_.set_state(state.sample_rng);
  if (tree_) {
    tree_.emplace(config_.capacity);
    for (int64_t i = 0; i < state.size; ++i) tree_->set(i, 1.0);
    max_priority_ = 1.0;
  }
}

}  // namespace lmkernels::replay
