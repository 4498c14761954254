#include "replay/replay_meta.h"

#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace lmkernels::replay {
namespace {

constexpr char kMagic[8] = {'L', 'M', 'K', 'R', 'P', 'L', 'Y', '1'};
constexpr uint32_t kVersion = 1;

uint64_t fnv1a(const uint8_t* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ data[i]) * 0x100000001b3ull;
  return h;
}

template <class T>
void put(std::vector<uint8_t>& out, const T& value) {
  const auto* p = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), p, p + sizeof(T));
}

class Reader {
 public:
  Reader(const std::vector<uint8_t>& bytes, const std::string& path) : bytes_(bytes), path_(path) {}
  template <class T>
  T get() {
    if (pos_ + sizeof(T) > bytes_.size()) damaged("truncated");
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  [[noreturn]] void damaged(const std::string& why) const {
    throw std::runtime_error("ReplayBuffer: metadata '" + path_ + "' is damaged (" + why + ")");
  }

 private:
  const std::vector<uint8_t>& bytes_;
  const std::string& path_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<uint8_t> encode_meta(const BufferMeta& m) {
  std::vector<uint8_t> out(kMagic, kMagic + sizeof(kMagic));
  put(out, kVersion);
  put(out, static_cast<int32_t>(m.config.writer));
  for (int64_t v : {m.config.capacity, m.config.seq_len, m.config.item_bytes, m.config.shard_rows}) put(out, v);
  const BufferCounters& c = m.counters;
  for (int64_t v : {c.size, c.seen, c.cursor, c.commit}) put(out, v);
  for (uint64_t v : c.write_rng) put(out, v);
  for (uint64_t v : c.sample_rng) put(out, v);
  put(out, static_cast<int64_t>(m.pending.size()));
  for (int64_t slot : m.pending) put(out, slot);
  put(out, fnv1a(out.data(), out.size()));
  return out;
}

BufferMeta decode_meta(const std::vector<uint8_t>& bytes, const std::string& path) {
  Reader r(bytes, path);
  if (bytes.size() < sizeof(kMagic) + 8 || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    r.damaged("not a replay buffer metadata file");
  }
  uint64_t stored_sum;
  std::memcpy(&stored_sum, bytes.data() + bytes.size() - 8, 8);
  if (fnv1a(bytes.data(), bytes.size() - 8) != stored_sum) r.damaged("checksum mismatch");
  for (size_t i = 0; i < sizeof(kMagic); ++i) r.get<char>();
  if (r.get<uint32_t>() != kVersion) r.damaged("unknown version");
  BufferMeta m;
  const int32_t writer = r.get<int32_t>();
  if (writer < 0 || writer > 2) r.damaged("unknown writer");
  m.config.writer = static_cast<Writer>(writer);
  m.config.capacity = r.get<int64_t>();
  m.config.seq_len = r.get<int64_t>();
  m.config.item_bytes = r.get<int64_t>();
  m.config.shard_rows = r.get<int64_t>();
  BufferCounters& c = m.counters;
  c.size = r.get<int64_t>();
  c.seen = r.get<int64_t>();
  c.cursor = r.get<int64_t>();
  c.commit = r.get<int64_t>();
  for (auto& v : c.write_rng) v = r.get<uint64_t>();
  for (auto& v : c.sample_rng) v = r.get<uint64_t>();
  const auto pending = r.get<int64_t>();
  if (pending < 0 || pending > m.config.capacity) r.damaged("bad pending count");
  for (int64_t i = 0; i < pending; ++i) m.pending.push_back(r.get<int64_t>());
  const BufferConfig& k = m.config;
  if (k.capacity <= 0 || k.seq_len <= 0 || (k.item_bytes != 2 && k.item_bytes != 4) || k.shard_rows <= 0 ||
      c.size < 0 || c.size > k.capacity || c.cursor < 0 || c.cursor >= k.capacity || c.seen < c.size) {
    r.damaged("inconsistent fields");
  }
  for (int64_t slot : m.pending) {
    if (slot < 0 || slot >= c.size) r.damaged("pending slot out of range");
  }
  return m;
}

BufferMeta read_meta_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("ReplayBuffer: cannot read '" + path + "'");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return decode_meta(bytes, path);
}

}  // namespace lmkernels::replay
