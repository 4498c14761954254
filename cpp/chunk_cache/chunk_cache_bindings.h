// Registers lmkernels._C.ChunkCache on the native module.
#pragma once

#include <nanobind/nanobind.h>

namespace lmkernels::chunk_cache {
void bind_chunk_cache(nanobind::module_& m);
}
