// Python binding of ReplayBuffer (lmkernels._C.ReplayBuffer). Arrays cross as DLPack views
// (no copy); every bulk call releases the GIL. The typed API is lmkernels.replay.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "replay/replay_bindings.h"
#include "replay/replay_buffer.h"

namespace nb = nanobind;

namespace lmkernels::replay {
namespace {

using CpuArray = nb::ndarray<nb::device::cpu, nb::c_contig>;

int64_t item_bytes_of(const CpuArray& a) { return static_cast<int64_t>(a.dtype().bits / 8); }

void require(bool ok, const std::string& message) {
  if (!ok) throw nb::value_error(message.c_str());
}

void check_rows(const ReplayBuffer& b, const CpuArray& rows, const char* what) {
  const BufferConfig& c = b.config();
  require(rows.ndim() == 2 && static_cast<int64_t>(rows.shape(1)) == c.seq_len,
          std::string(what) + ": expected rows of shape [n, " + std::to_string(c.seq_len) + "]");
  require(item_bytes_of(rows) == c.item_bytes, std::string(what) + ": rows have the wrong dtype for this buffer");
}

nb::tuple counters_to_tuple(const BufferCounters& c) {
  nb::list w, s;
  for (uint64_t v : c.write_rng) w.append(v);
  for (uint64_t v : c.sample_rng) s.append(v);
  return nb::make_tuple(c.size, c.seen, c.cursor, c.commit, w, s);
}

BufferCounters counters_from_tuple(const nb::tuple& t) {
  require(t.size() == 6, "ReplayBuffer state: expected (size, seen, cursor, commit, write_rng, sample_rng)");
  BufferCounters c;
  c.size = nb::cast<int64_t>(t[0]);
  c.seen = nb::cast<int64_t>(t[1]);
  c.cursor = nb::cast<int64_t>(t[2]);
  c.commit = nb::cast<int64_t>(t[3]);
  auto w = nb::cast<std::vector<uint64_t>>(t[4]);
  auto s = nb::cast<std::vector<uint64_t>>(t[5]);
  require(w.size() == 4 && s.size() == 4, "ReplayBuffer state: a random state is four 64-bit words");
  std::copy(w.begin(), w.end(), c.write_rng.begin());
  std::copy(s.begin(), s.end(), c.sample_rng.begin());
  return c;
}

Writer parse_writer(const std::string& name) {
  if (name == "fifo") return Writer::kFifo;
  if (name == "reservoir") return Writer::kReservoir;
  if (name == "random") return Writer::kRandom;
  throw nb::value_error(("ReplayBuffer: writer must be 'fifo', 'reservoir' or 'random', got '" + name + "'").c_str());
}

}  // namespace

void bind_replay(nb::module_& m) {
  nb::class_<ReplayBuffer>(m, "ReplayBuffer")
      .def(
          "__init__",
          [](ReplayBuffer* self, int64_t capacity, int64_t seq_len, int64_t item_bytes, const std::string& writer,
             const std::string& directory, int64_t shard_rows, uint64_t seed, bool prioritized, bool durable) {
            BufferConfig c{capacity, seq_len, item_bytes, shard_rows, parse_writer(writer)};
            nb::gil_scoped_release release;
            new (self) ReplayBuffer(c, directory, seed, prioritized, durable);
          },
          nb::arg("capacity"), nb::arg("seq_len"), nb::arg("item_bytes"), nb::arg("writer"), nb::arg("directory"),
          nb::arg("shard_rows"), nb::arg("seed"), nb::arg("prioritized"), nb::arg("durable"))
      // The hot calls take raw addresses: lmkernels.replay has checked shape, dtype, device
      // and contiguity, and a DLPack conversion would cost more than gathering 32 rows.
      .def("add_ptr",
           [](ReplayBuffer& b, uintptr_t rows, int64_t n) {
             nb::gil_scoped_release release;
             return b.add(reinterpret_cast<const uint8_t*>(rows), n);
           })
      .def("sample_ptr",
           [](ReplayBuffer& b, int64_t n, uintptr_t indices, uintptr_t out, int64_t out_item_bytes) {
             std::vector<int64_t> scratch(indices ? 0 : static_cast<size_t>(n));
             auto* idx = indices ? reinterpret_cast<int64_t*>(indices) : scratch.data();
             nb::gil_scoped_release release;
             b.sample(n, idx, reinterpret_cast<uint8_t*>(out), out_item_bytes);
           })
      .def("gather_ptr",
           [](const ReplayBuffer& b, uintptr_t indices, int64_t n, uintptr_t out, int64_t out_item_bytes) {
             nb::gil_scoped_release release;
             b.gather(reinterpret_cast<const int64_t*>(indices), n, reinterpret_cast<uint8_t*>(out), out_item_bytes);
           })
      .def("update_priorities_ptr",
           [](ReplayBuffer& b, uintptr_t indices, uintptr_t priorities, int64_t n) {
             nb::gil_scoped_release release;
             b.update_priorities(reinterpret_cast<const int64_t*>(indices), reinterpret_cast<const double*>(priorities), n);
           })
      .def("get_priorities_ptr",
           [](const ReplayBuffer& b, uintptr_t indices, int64_t n, uintptr_t out) {
             b.get_priorities(reinterpret_cast<const int64_t*>(indices), reinterpret_cast<double*>(out), n);
           })
      .def("restore",
           [](ReplayBuffer& b, const nb::tuple& state, nb::object rows, bool strict) {
             const BufferCounters c = counters_from_tuple(state);
             const uint8_t* data = nullptr;
             if (!rows.is_none()) {
               auto array = nb::cast<CpuArray>(rows);
               check_rows(b, array, "ReplayBuffer.load_state_dict");
               require(static_cast<int64_t>(array.shape(0)) == c.size,
                       "ReplayBuffer.load_state_dict: the rows do not match the saved size");
               data = static_cast<const uint8_t*>(array.data());
             }
             nb::gil_scoped_release release;
             b.restore(c, data, strict);
           },
           nb::arg("state"), nb::arg("rows").none(), nb::arg("strict"))
      .def("state", [](const ReplayBuffer& b) { return counters_to_tuple(b.counters()); })
      .def_prop_ro("size", [](const ReplayBuffer& b) { return b.counters().size; })
      .def_prop_ro("seen", [](const ReplayBuffer& b) { return b.counters().seen; })
      .def_prop_ro("shard_rows", [](const ReplayBuffer& b) { return b.config().shard_rows; })
      .def_prop_ro("prioritized", &ReplayBuffer::prioritized)
      .def_prop_ro("recovered_rows", &ReplayBuffer::recovered_rows)
      .def_prop_ro("total_priority", &ReplayBuffer::total_priority)
      .def_prop_rw("max_priority", &ReplayBuffer::max_priority, &ReplayBuffer::set_max_priority);
}

}  // namespace lmkernels::replay
