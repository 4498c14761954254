#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace lmkernels::io {
namespace {

[[noreturn]] void fail(const std::string& what, const std::string& path, int err) {
  throw std::runtime_error("cannot " + what + " '" + path + "': " + std::strerror(err));
}

struct Fd {
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  int get() const { return fd; }
  int fd;
};

}  // namespace

void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes, bool durable) {
  const std::string tmp = path + ".tmp";
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) fail("write", tmp, errno);
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("write", tmp, errno);
      }
      done += static_cast<size_t>(n);
    }
    if (durable && ::fsync(fd.get()) != 0) fail("fsync", tmp, errno);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename over", path, errno);
  if (durable) {
    const std::string dir = path.substr(0, path.find_last_of('/'));
    Fd dfd(::open(dir.empty() ? "/" : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dfd.get() >= 0) ::fsync(dfd.get());
  }
}

}  // namespace lmkernels::io
