// Bin packing of sequence lengths into rows of a fixed capacity (prepacking).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lmkernels::prepack {

enum class PackAlgorithm { kBestFitDecreasing, kFirstFitDecreasing };

// Parses "bfd" / "ffd"; throws std::invalid_argument naming the value.
PackAlgorithm parse_pack_algorithm(const std::string& name);

// Places every length (all in [1, capacity]) into a row; returns each one's row and offset.
// Items are placed longest first (ties by index), so the result is deterministic. O(n log n).
void bin_pack(const int64_t* lengths, int64_t n, int64_t capacity, PackAlgorithm algorithm,
              int64_t* row, int64_t* offset);

}  // namespace lmkernels::prepack
