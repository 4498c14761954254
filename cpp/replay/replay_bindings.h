// Registers lmkernels._C.ReplayBuffer on the native module.
#pragma once

#include <nanobind/nanobind.h>

namespace lmkernels::replay {
void bind_replay(nanobind::module_& m);
}
