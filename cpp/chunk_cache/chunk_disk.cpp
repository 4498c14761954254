#include "chunk_cache/chunk_disk.h"

#include <ATen/ops/empty.h>

#include <cstring>
#include <fstream>
#include <stdexcept>

#include "io/atomic_file.h"

namespace lmkernels::chunk_cache {
namespace {

const char* safetensors_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    default: throw std::invalid_argument("ChunkCache: dtype cannot be stored on disk");
  }
}

std::string tensor_header(const char* name, const at::Tensor& t, int64_t begin) {
  std::string h = std::string("\"") + name + "\":{\"dtype\":\"" + safetensors_dtype(t.scalar_type()) + "\",\"shape\":[";
  for (int64_t d = 0; d < t.dim(); ++d) h += (d ? "," : "") + std::to_string(t.size(d));
  return h + "],\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(begin + t.nbytes()) + "]}";
}

}  // namespace

void write_entry_file(const std::string& path, const EntryTensors& t) {
  const int64_t kv_end = static_cast<int64_t>(t.kv.nbytes());
  const int64_t scores_end = kv_end + static_cast<int64_t>(t.scores.nbytes());
  std::string header = "{" + tensor_header("kv", t.kv, 0) + "," + tensor_header("scores", t.scores, kv_end) + "," +
                       tensor_header("prefix", t.prefix, scores_end) + "}";
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t header_len = header.size();
  std::vector<uint8_t> bytes(8 + header.size() + scores_end + t.prefix.nbytes());
  std::memcpy(bytes.data(), &header_len, 8);  // little-endian on every platform we build for
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  uint8_t* data = bytes.data() + 8 + header.size();
  std::memcpy(data, t.kv.data_ptr(), t.kv.nbytes());
  std::memcpy(data + kv_end, t.scores.data_ptr(), t.scores.nbytes());
  if (t.prefix.nbytes() > 0) std::memcpy(data + scores_end, t.prefix.data_ptr(), t.prefix.nbytes());
  io::write_file_atomically(path, bytes, /*durable=*/false);
}

EntryTensors read_entry_file(const std::string& path, const std::vector<int64_t>& shape, at::ScalarType dtype,
                             int64_t tokens, int64_t prefix_len) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("ChunkCache: cannot read '" + path + "'");
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  in.seekg(static_cast<std::streamoff>(8 + header_len));
  at::Tensor kv = at::empty(shape, at::TensorOptions().dtype(dtype));
  at::Tensor scores = at::empty({tokens}, at::TensorOptions().dtype(at::kFloat));
  in.read(static_cast<char*>(kv.data_ptr()), static_cast<std::streamsize>(kv.nbytes()));
  at::Tensor prefix = at::empty({prefix_len, 2}, at::TensorOptions().dtype(at::kLong));
  in.read(static_cast<char*>(scores.data_ptr()), static_cast<std::streamsize>(scores.nbytes()));
  if (prefix_len > 0) in.read(static_cast<char*>(prefix.data_ptr()), static_cast<std::streamsize>(prefix.nbytes()));
  if (!in) throw std::runtime_error("ChunkCache: '" + path + "' is shorter than its entry (damaged)");
  return {kv, scores, prefix};
}

}  // namespace lmkernels::chunk_cache
