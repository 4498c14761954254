#include "prepack/bin_pack.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <stdexcept>
#include <utility>

namespace lmkernels::prepack {

PackAlgorithm parse_pack_algorithm(const std::string& name) {
  if (name == "bfd") return PackAlgorithm::kBestFitDecreasing;
  if (name == "ffd") return PackAlgorithm::kFirstFitDecreasing;
  throw std::invalid_argument("algorithm must be 'bfd' or 'ffd', got '" + name + "'");
}

namespace {

// Rows by remaining space in a balanced tree: best fit = the smallest space that still fits.
void best_fit(const std::vector<int64_t>& order, const int64_t* lengths, int64_t capacity,
              int64_t* row, int64_t* offset) {
  std::set<std::pair<int64_t, int64_t>> rows_by_space;  // (space left, row)
  int64_t rows = 0;
  for (int64_t i : order) {
    const int64_t len = lengths[i];
    auto it = rows_by_space.lower_bound({len, -1});
    int64_t r, space;
    if (it == rows_by_space.end()) {
      r = rows++;
      space = capacity;
    } else {
      r = it->second;
      space = it->first;
      rows_by_space.erase(it);
    }
    row[i] = r;
    offset[i] = capacity - space;
    rows_by_space.insert({space - len, r});
  }
}

// Max segment tree over rows' remaining space: first fit = the leftmost row that fits.
void first_fit(const std::vector<int64_t>& order, const int64_t* lengths, int64_t capacity,
               int64_t* row, int64_t* offset) {
  const int64_t n = static_cast<int64_t>(order.size());
  int64_t leaves = 1;
  while (leaves < n) leaves *= 2;
  std::vector<int64_t> tree(2 * leaves, capacity);  // every row starts empty
  for (int64_t i : order) {
    const int64_t len = lengths[i];
    int64_t node = 1;
    while (node < leaves) node = tree[2 * node] >= len ? 2 * node : 2 * node + 1;
    const int64_t r = node - leaves;
    row[i] = r;
    offset[i] = capacity - tree[node];
    tree[node] -= len;
    for (node /= 2; node >= 1; node /= 2) tree[node] = std::max(tree[2 * node], tree[2 * node + 1]);
  }
}

}  // namespace

void bin_pack(const int64_t* lengths, int64_t n, int64_t capacity, PackAlgorithm algorithm,
              int64_t* row, int64_t* offset) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  if (algorithm == PackAlgorithm::kBestFitDecreasing) {
    best_fit(order, lengths, capacity, row, offset);
  } else {
    first_fit(order, lengths, capacity, row, offset);
  }
}

}  // namespace lmkernels::prepack
