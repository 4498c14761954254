// Whole-file replacement that a crash cannot tear, shared by the stateful cores.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lmkernels::io {

// Writes `bytes` to `path` so that a reader sees either the old or the new file whole:
// write a temporary, optionally fsync it, rename it over `path`, optionally fsync the folder.
// Throws std::runtime_error naming the path and the system error.
void write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes, bool durable);

}  // namespace lmkernels::io
