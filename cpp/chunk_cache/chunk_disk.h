// The chunk cache's disk tier: one safetensors file per entry ("kv" and "scores"), readable
// by the safetensors package, written atomically.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace lmkernels::chunk_cache {

void write_entry_file(const std::string& path, const at::Tensor& kv_host, const at::Tensor& scores_host);
// Reads an entry written by write_entry_file; throws std::runtime_error if the file is
// missing or does not hold the expected shapes.
std::pair<at::Tensor, at::Tensor> read_entry_file(const std::string& path, const std::vector<int64_t>& shape,
                                                  at::ScalarType dtype, int64_t tokens);

}  // namespace lmkernels::chunk_cache
