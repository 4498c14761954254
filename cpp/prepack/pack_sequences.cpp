// pack_sequences on CPU: checks and the torch op around bin_pack.
#include "prepack/pack_sequences.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <stdexcept>

#include "prepack/bin_pack.h"

namespace lmkernels::prepack {

std::tuple<at::Tensor, at::Tensor> pack_sequences_host(const at::Tensor& lengths, int64_t capacity,
                                                       const std::string& algorithm) {
  TORCH_CHECK(lengths.dim() == 1, "pack_sequences: lengths must be 1-D, got shape ", lengths.sizes());
  TORCH_CHECK(lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt,
              "pack_sequences: lengths must be int32 or int64, got ", lengths.scalar_type());
  TORCH_CHECK(capacity >= 1, "pack_sequences: capacity must be >= 1, got ", capacity);
  PackAlgorithm algo;
  try {
    algo = parse_pack_algorithm(algorithm);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, "pack_sequences: ", e.what());
  }
  const at::Tensor host = lengths.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t n = host.numel();
  const int64_t* len = host.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(len[i] >= 1, "pack_sequences: every length must be >= 1, but lengths[", i, "] = ", len[i]);
    TORCH_CHECK(len[i] <= capacity, "pack_sequences: lengths[", i, "] = ", len[i],
                " is longer than the capacity ", capacity);
  }
  at::Tensor row = at::empty({n}, host.options());
  at::Tensor offset = at::empty({n}, host.options());
  bin_pack(len, n, capacity, algo, row.data_ptr<int64_t>(), offset.data_ptr<int64_t>());
  return {row, offset};
}

namespace {

std::tuple<at::Tensor, at::Tensor> pack_sequences_cpu(const at::Tensor& lengths, int64_t capacity,
                                                      c10::string_view algorithm) {
  return pack_sequences_host(lengths, capacity, std::string(algorithm));
}

}  // namespace

TORCH_LIBRARY_IMPL(lmkernels, CPU, m) { m.impl("pack_sequences", &pack_sequences_cpu); }

}  // namespace lmkernels::prepack
