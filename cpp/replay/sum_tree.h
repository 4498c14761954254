// A sum tree over per-row priorities for proportional sampling: O(log n) update and draw.
// Leaves sit at [P, 2P) for P the next power of two; each inner node is recomputed from its
// children on update (never incremented), so rounding errors do not accumulate.
#pragma once

#include <cstdint>
#include <vector>

namespace lmkernels::replay {

class SumTree {
 public:
  explicit SumTree(int64_t capacity) {
    leaves_ = 1;
    while (leaves_ < capacity) leaves_ *= 2;
    nodes_.assign(2 * leaves_, 0.0);
  }

  void set(int64_t index, double priority) {
    int64_t node = leaves_ + index;
    nodes_[node] = priority;
    for (node /= 2; node >= 1; node /= 2) nodes_[node] = nodes_[2 * node] + nodes_[2 * node + 1];
  }

  double get(int64_t index) const { return nodes_[leaves_ + index]; }
  double total() const { return nodes_[1]; }

  // The leaf whose cumulative range holds `mass` in [0, total()); never a zero-priority leaf
  // (a mass rounded past the last positive leaf falls back to the left).
  int64_t find(double mass) const {
    int64_t node = 1;
    while (node < leaves_) {
      const int64_t left = 2 * node;
      if (mass < nodes_[left] || nodes_[left + 1] <= 0.0) {
        node = left;
      } else {
        mass -= nodes_[left];
        node = left + 1;
      }
    }
    return node - leaves_;
  }

 private:
  int64_t leaves_ = 1;
  std::vector<double> nodes_;
};

}  // namespace lmkernels::replay
