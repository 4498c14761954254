// The chunk cache's disk tier: one safetensors file per entry ("kv", "scores" and "prefix"),
// readable by the safetensors package, written atomically.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace lmkernels::chunk_cache {

// What one entry stores: kv (any shape and dtype), scores float32 [tokens] and prefix int64
// [m, 2] (the chunks the KV was computed after, with the attention paid to each); all on host.
struct EntryTensors {
  at::Tensor kv, scores, prefix;
};

void write_entry_file(const std::string& path, const EntryTensors& host_tensors);
// Reads an entry written by write_entry_file; throws std::runtime_error if the file is
// missing or does not hold the expected shapes.
EntryTensors read_entry_file(const std::string& path, const std::vector<int64_t>& shape, at::ScalarType dtype,
                             int64_t tokens, int64_t prefix_len);

}  // namespace lmkernels::chunk_cache
