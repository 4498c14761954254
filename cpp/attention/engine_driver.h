// Runs a schedule of work items on the attention engine: threads, ISA choice, scratch.
#pragma once

#include <vector>

#include "attention/engine.h"

namespace lmkernels::attention {

// Items are handed out to at::parallel_for threads heaviest first (by `cost`), one at a time:
// the longest-processing-time rule keeps every thread busy to the end, even with one long
// sequence among many short ones. `items` must hold at most positions_per_item(group)
// query positions each.
void run_schedule(const Args& args, const std::vector<WorkItem>& items, const std::vector<int64_t>& cost);

}  // namespace lmkernels::attention
