// Python binding of ChunkCache (lmkernels._C.ChunkCache). Tensors cross as DLPack capsules
// (torch.utils.dlpack), so the cache holds the caller's tensors themselves, never copies made
// through Python. The typed API is lmkernels.chunk_cache.ChunkCache.
#include <ATen/DLConvertor.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "chunk_cache/chunk_cache.h"
#include "chunk_cache/chunk_cache_bindings.h"

namespace nb = nanobind;

namespace lmkernels::chunk_cache {
namespace {

at::Tensor from_capsule(nb::handle capsule) {
  if (!PyCapsule_IsValid(capsule.ptr(), "dltensor")) {
    throw nb::type_error("ChunkCache: expected a DLPack capsule (torch.utils.dlpack.to_dlpack)");
  }
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  at::Tensor t = at::fromDLPack(managed);
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");  // the tensor owns it now
  return t;
}

nb::object to_capsule(const at::Tensor& t) {
  DLManagedTensor* managed = at::toDLPack(t);
  PyObject* capsule = PyCapsule_New(managed, "dltensor", [](PyObject* self) {
    if (PyCapsule_IsValid(self, "dltensor")) {  // never consumed
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(self, "dltensor"));
      if (m->deleter) m->deleter(m);
    }
  });
  return nb::steal(capsule);
}

ChunkKey key_of(uint64_t chunk, uint64_t variant) { return ChunkKey{chunk, variant}; }

}  // namespace

void bind_chunk_cache(nb::module_& m) {
  nb::class_<ChunkCache>(m, "ChunkCache")
      .def(
          "__init__",
          [](ChunkCache* self, const std::string& model_id, int64_t device_budget, int64_t host_budget,
             int64_t disk_budget, const std::string& directory, const std::string& eviction,
             const std::string& device) {
            if (eviction != "score" && eviction != "lru") {
              throw nb::value_error("ChunkCache: eviction must be 'score' or 'lru'");
            }
            new (self) ChunkCache(model_id, device_budget, host_budget, disk_budget, directory,
                                  eviction == "lru" ? Eviction::kLru : Eviction::kScore, c10::Device(device));
          })
      .def("chunk_hash",
           [](const ChunkCache& c, uintptr_t tokens, int64_t n) {
             return c.chunk_hash(reinterpret_cast<const int64_t*>(tokens), n);
           })
      .def("put",
           [](ChunkCache& c, uint64_t chunk, uint64_t variant, nb::handle kv, nb::handle scores, nb::handle prefix,
              double cci) {
             at::Tensor k = from_capsule(kv), s = from_capsule(scores), p = from_capsule(prefix);
             nb::gil_scoped_release release;
             c.put(key_of(chunk, variant), k, s, p, cci);
           })
      .def("acquire",
           [](ChunkCache& c, uint64_t chunk, uint64_t variant) -> nb::object {
             std::optional<EntryTensors> got;
             {
               nb::gil_scoped_release release;
               got = c.acquire(key_of(chunk, variant));
             }
             if (!got) return nb::none();
             return nb::make_tuple(to_capsule(got->kv), to_capsule(got->scores), to_capsule(got->prefix));
           })
      // Every call that takes the cache's mutex first releases the GIL: dropping a tensor under
      // the mutex can need the GIL (torch's PyObject slot), so holding both in turn would deadlock.
      .def("release", [](ChunkCache& c, uint64_t chunk, uint64_t variant) {
        nb::gil_scoped_release release;
        c.release(key_of(chunk, variant));
      })
      .def("remove", [](ChunkCache& c, uint64_t chunk, uint64_t variant) {
        nb::gil_scoped_release release;
        return c.remove(key_of(chunk, variant));
      })
      .def("info",
           [](const ChunkCache& c, uint64_t chunk, uint64_t variant) -> nb::object {
             std::optional<EntryInfo> i;
             {
               nb::gil_scoped_release release;
               i = c.info(key_of(chunk, variant));
             }
             if (!i) return nb::none();
             static const char* tiers[] = {"device", "host", "disk"};
             nb::dict d;
             d["tier"] = tiers[static_cast<int>(i->tier)];
             d["bytes"] = i->bytes;
             d["tokens"] = i->tokens;
             d["hits"] = i->hits;
             d["pins"] = i->pins;
             d["last_access"] = i->last_access;
             d["cci"] = i->cci;
             d["prefix"] = to_capsule(i->prefix);
             return d;
           })
      .def("variants", &ChunkCache::variants, nb::call_guard<nb::gil_scoped_release>())
      .def("stats",
           [](const ChunkCache& c) {
             CacheStats s;
             {
               nb::gil_scoped_release release;
               s = c.stats();
             }
             nb::dict d;
             d["hits"] = s.hits;
             d["misses"] = s.misses;
             d["evictions"] = s.evictions;
             d["demotions"] = s.demotions;
             d["promotions"] = s.promotions;
             static const char* tiers[] = {"device", "host", "disk"};
             for (int t = 0; t < kTiers; ++t) {
               d[(std::string("bytes_") + tiers[t]).c_str()] = s.bytes[t];
               d[(std::string("entries_") + tiers[t]).c_str()] = s.entries[t];
               d[(std::string("budget_") + tiers[t]).c_str()] = s.budget[t];
             }
             return d;
           })
      .def("check_invariants", &ChunkCache::check_invariants, nb::call_guard<nb::gil_scoped_release>());
}

}  // namespace lmkernels::chunk_cache
