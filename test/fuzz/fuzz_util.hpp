// test/fuzz/fuzz_util.hpp — what the libFuzzer targets share: how a violated
// property or a stray exception becomes a finding, and field-by-field
// comparison of decoded values.
//
// A finding is __builtin_trap() after a line on stderr saying what broke:
// libFuzzer reports the crash and saves the input. Every function a target
// fuzzes may return or throw ringckpt::Error; any other exception escaping is
// a finding (the library promises ringckpt::Error for every failure).
#pragma once

#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <variant>

#include "ringckpt/error.hpp"
#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"

namespace ringckpt::fuzz {

[[noreturn]] inline void finding(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "FUZZ FINDING: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::fflush(stderr);
  __builtin_trap();
}

#define FUZZ_CHECK(cond) \
  ((cond) ? (void)0 : ::ringckpt::fuzz::finding("property violated", #cond " at " __FILE__))

// fn()'s value, or nullopt if it threw ringckpt::Error; anything else thrown
// is a finding.
template <typename Fn>
auto returns_or_error(Fn&& fn) -> std::optional<std::invoke_result_t<Fn>> {
  try {
    return fn();
  } catch (const Error&) {
    return std::nullopt;
  } catch (const std::exception& e) {
    finding("an exception other than ringckpt::Error escaped", e.what());
  } catch (...) {
    finding("a non-std exception escaped");
  }
}

// fn()'s value; any exception, ringckpt::Error included, is a finding (for
// what must succeed: re-encoding and re-decoding what was accepted once).
template <typename Fn>
auto must(const char* what, Fn&& fn) -> std::invoke_result_t<Fn> {
  try {
    return fn();
  } catch (const std::exception& e) {
    finding(what, e.what());
  } catch (...) {
    finding(what, "non-std exception");
  }
}

// ---------------------------------------------------------------------------
// Equality of what a checkpoint's metadata says (the index hint included).

inline bool same(const MetadataIndex& a, const MetadataIndex& b) {
  return a == b && a.index == b.index;
}

inline bool same(const ChunkStorageMetadata& a, const ChunkStorageMetadata& b) { return a == b; }

inline bool same(const StorageMetadata& a, const StorageMetadata& b) {
  if (a.index() != b.index()) return false;
  const auto* ta = std::get_if<TensorStorageMetadata>(&a);
  if (ta == nullptr) return true;  // both bytes
  const auto& tb = std::get<TensorStorageMetadata>(b);
  return ta->properties == tb.properties && ta->size == tb.size && ta->chunks == tb.chunks;
}

inline bool same(const Metadata& a, const Metadata& b) {
  if (a.version != b.version || a.planner_data != b.planner_data || a.files != b.files ||
      a.storage_meta != b.storage_meta ||
      a.state_dict_metadata.size() != b.state_dict_metadata.size() ||
      a.storage_data.size() != b.storage_data.size()) {
    return false;
  }
  for (auto ia = a.state_dict_metadata.begin(), ib = b.state_dict_metadata.begin();
       ia != a.state_dict_metadata.end(); ++ia, ++ib) {
    if (ia->first != ib->first || !same(ia->second, ib->second)) return false;
  }
  for (auto ia = a.storage_data.begin(), ib = b.storage_data.begin(); ia != a.storage_data.end();
       ++ia, ++ib) {
    if (!same(ia->first, ib->first) || !(ia->second == ib->second)) return false;
  }
  return true;
}

}  // namespace ringckpt::fuzz
