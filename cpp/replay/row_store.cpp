#include "replay/row_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace lmkernels::replay {
namespace {

[[noreturn]] void fail_errno(const std::string& what, const std::string& path, int err) {
  throw std::runtime_error("ReplayBuffer: cannot " + what + " '" + path + "': " + std::strerror(err));
}

std::string shard_path(const std::string& directory, int64_t index) {
  char name[32];
  std::snprintf(name, sizeof(name), "/rows-%05lld.bin", static_cast<long long>(index));
  return directory + name;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

RowStore::RowStore(std::string directory, int64_t capacity, int64_t row_bytes, int64_t shard_rows)
    : directory_(std::move(directory)), capacity_(capacity), row_bytes_(row_bytes), shard_rows_(shard_rows) {
  if (directory_.empty()) {
    shard_rows_ = capacity_;
    memory_.assign(static_cast<size_t>(capacity_ * row_bytes_), 0);
    shards_.push_back({memory_.data(), capacity_ * row_bytes_});
  }
}

RowStore::~RowStore() {
  if (!on_disk()) return;
  for (const Shard& s : shards_) ::munmap(s.data, static_cast<size_t>(s.bytes));
}

void RowStore::reserve(int64_t rows, bool must_exist) {
  const int64_t needed = (rows + shard_rows_ - 1) / shard_rows_;
  while (static_cast<int64_t>(shards_.size()) < needed) open_shard(static_cast<int64_t>(shards_.size()), must_exist);
}

void RowStore::open_shard(int64_t index, bool must_exist) {
  const std::string path = shard_path(directory_, index);
  const int64_t first = index * shard_rows_;
  const int64_t rows = capacity_ - first < shard_rows_ ? capacity_ - first : shard_rows_;
  const int64_t bytes = rows * row_bytes_;
  Fd fd(::open(path.c_str(), must_exist ? O_RDWR | O_CLOEXEC : O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail_errno(must_exist ? "open the shard (the buffer directory is damaged)" : "create", path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_errno("stat", path, errno);
  if (st.st_size < bytes) {
    if (must_exist) throw std::runtime_error("ReplayBuffer: shard '" + path + "' is shorter than its rows (damaged)");
    // Reserve the blocks now: a full disk must fail here, not as SIGBUS inside a later copy.
    const int err = ::posix_fallocate(fd.get(), 0, bytes);
    if (err == EOPNOTSUPP || err == EINVAL) {
      if (::ftruncate(fd.get(), bytes) != 0) fail_errno("size", path, errno);
    } else if (err != 0) {
      fail_errno("allocate " + std::to_string(bytes) + " bytes for", path, err);
    }
  }
  void* data = ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (data == MAP_FAILED) fail_errno("map", path, errno);
  shards_.push_back({static_cast<uint8_t*>(data), bytes});
}

void RowStore::sync() const {
  if (!on_disk()) return;
  for (const Shard& s : shards_) {
    if (::msync(s.data, static_cast<size_t>(s.bytes), MS_SYNC) != 0) fail_errno("sync", directory_, errno);
  }
}

}  // namespace lmkernels::replay
