// lib/plan/wire_primitives.hpp — the byte-level pieces of the wire codec:
// varints, zig-zag, strings, shapes, dtypes, names and chained paths, written by
// WireWriter and read back, hostile-safe, by WireReader (layout in
// wire_codec.hpp). Used by wire_codec.cpp only.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "plan/wire_codec.hpp"
#include "ringckpt/dtype.hpp"
#include "ringckpt/error.hpp"
#include "ringckpt/fqn.hpp"
#include "ringckpt/tensor.hpp"

namespace ringckpt::wire {

constexpr bool dtypes_in_enum_order() {
  for (std::size_t i = 0; i < std::size(kAllDTypes); ++i) {
    if (static_cast<std::size_t>(kAllDTypes[i]) != i) return false;
  }
  return true;
}
static_assert(dtypes_in_enum_order(), "the wire stores a DType as its position in kAllDTypes");
static_assert(sizeof(std::size_t) == sizeof(std::uint64_t), "index hints travel as 64 bits");

// Appends one payload. A name is stored against the previous name and the
// components seen before (layout in wire_codec.hpp); file paths are a chain of
// shared prefixes.
class WireWriter {
 public:
  WireWriter(Kind kind, std::size_t reserve) {
    out_.reserve(reserve);
    byte(kMagic);
    byte(kVersion);
    byte(static_cast<std::uint8_t>(kind));
  }

  void byte(std::uint8_t b) { out_.push_back(static_cast<char>(b)); }
  void u64(std::uint64_t v) {
    while (v >= 0x80) {
      byte(static_cast<std::uint8_t>(v | 0x80));
      v >>= 7;
    }
    byte(static_cast<std::uint8_t>(v));
  }
  void i64(std::int64_t v) {
    u64((static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63));
  }
  void fixed64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) byte(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  void string(std::string_view s) {
    u64(s.size());
    out_.append(s);
  }
  void shape(const Shape& s) {
    u64(s.size());
    for (std::int64_t d : s) i64(d);
  }
  void dtype(DType t) { byte(static_cast<std::uint8_t>(t)); }
  void fqn(std::string_view s) {
    // Components 0..shared-1 of s and of the previous name are equal iff
    // their bytes up to the end of component shared-1 of the previous name
    // are, and s ends or has a '.' there.
    const std::size_t common = static_cast<std::size_t>(
        std::mismatch(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(
                                                 std::min(s.size(), previous_.size())),
                      previous_.begin())
            .first -
        s.begin());
    std::size_t shared = 0;
    while (shared < ends_.size() &&
           (ends_[shared] < common ||
            (ends_[shared] == common && (common == s.size() || s[common] == '.')))) {
      ++shared;
    }
    ends_.resize(shared);
    // The other components start after the '.' that ends the last shared one
    // (none if s ends there).
    std::size_t start = shared == 0 ? 0 : ends_.back() + 1;
    std::size_t rest = 0;
    if (start <= s.size()) rest = 1 + static_cast<std::size_t>(
                                         std::count(s.begin() + static_cast<std::ptrdiff_t>(start),
                                                    s.end(), '.'));
    u64(shared);
    u64(rest);
    for (std::size_t i = 0; i < rest; ++i) {
      std::size_t end = s.find('.', start);
      if (end == std::string_view::npos) end = s.size();
      const std::string_view part = s.substr(start, end - start);
      const auto it = components_.find(part);
      if (it != components_.end()) {
        u64(it->second + 1);
      } else {
        u64(0);
        string(part);
        components_.emplace(std::string(part), components_.size());
      }
      ends_.push_back(end);
      start = end + 1;
    }
    previous_.assign(s);
  }
  void path(std::string_view s) { chained(s, previous_path_); }

  std::string take() && { return std::move(out_); }

 private:
  void chained(std::string_view s, std::string& previous) {
    const std::size_t n = std::min(s.size(), previous.size());
    const auto diff = std::mismatch(s.begin(), s.begin() + n, previous.begin());
    const auto shared = static_cast<std::size_t>(diff.first - s.begin());
    u64(shared);
    string(s.substr(shared));
    previous.assign(s);
  }

  struct ViewHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept {
      return std::hash<std::string_view>{}(s);
    }
  };

  std::string out_;
  // Names: the previous one and its components, each distinct component
  // written so far with its number (the order of first appearance).
  std::string previous_;             // the previous name
  std::vector<std::size_t> ends_;    // where each component of previous_ ends
  std::unordered_map<std::string, std::uint64_t, ViewHash, std::equal_to<>> components_;
  std::string previous_path_;
};

// Reads one payload; every fault throws Error(kCorrupt, source, ...). Every
// count is checked against the bytes left before anything is allocated.
// REQUIRES: `bytes` and `source` outlive the reader.
class WireReader {
 public:
  // Reads and checks the header: magic, version, `kind`.
  WireReader(std::string_view bytes, Kind kind, const std::string& source)
      : data_(bytes),
        source_(source),
        expansion_limit_(kExpansionFactor * bytes.size() + kExpansionFloor) {
    if (data_.size() < kHeaderSize) {
      fail("truncated: " + std::to_string(data_.size()) + " bytes, shorter than the " +
           std::to_string(kHeaderSize) + "-byte header");
    }
    const std::uint8_t magic = byte();
    if (magic != kMagic) fail("not a ringckpt wire payload (first byte " + hex(magic) + ")");
    const std::uint8_t version = byte();
    if (version != kVersion) {
      fail("wire version " + std::to_string(version) + ", this build reads version " +
           std::to_string(kVersion));
    }
    const std::uint8_t got = byte();
    if (got != static_cast<std::uint8_t>(kind)) {
      const std::string_view got_name = kind_name(static_cast<Kind>(got));
      fail("a " + (got_name.empty() ? "kind " + std::to_string(got) : std::string(got_name)) +
           " payload where a " + std::string(kind_name(kind)) + " was expected");
    }
  }

  [[noreturn]] void fail(const std::string& fault) const {
    throw Error(ErrorCode::kCorrupt, source_, fault + " (at byte " + std::to_string(pos_) + ")");
  }

  std::size_t left() const { return data_.size() - pos_; }

  std::uint8_t byte() {
    if (pos_ == data_.size()) fail("truncated");
    return static_cast<std::uint8_t>(data_[pos_++]);
  }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      const std::uint8_t b = byte();
      if (shift == 63 && b > 1) fail("a varint overflows 64 bits");
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        if (b == 0 && shift > 0) fail("a varint is not in shortest form");
        return v;
      }
    }
  }
  std::int64_t i64() {
    const std::uint64_t z = u64();
    return static_cast<std::int64_t>((z >> 1) ^ (~(z & 1) + 1));
  }
  std::uint64_t fixed64() {
    if (left() < 8) fail("truncated");
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(byte()) << (8 * i);
    return v;
  }
  // A count of elements that take at least `min_bytes` each.
  std::size_t count(std::size_t min_bytes, const char* what) {
    const std::uint64_t n = u64();
    if (n > left() / min_bytes) {
      fail(std::string(what) + " count " + std::to_string(n) + " exceeds the " +
           std::to_string(left()) + " bytes left");
    }
    return static_cast<std::size_t>(n);
  }
  std::string string() { return std::string(view(count(1, "string length"))); }
  // The next `n` bytes, in place. REQUIRES: n <= left().
  std::string_view view(std::size_t n) {
    const std::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  Shape shape() {
    Shape s(count(1, "dimension"));
    for (std::int64_t& d : s) d = i64();
    return s;
  }
  DType dtype() {
    const std::uint8_t t = byte();
    if (t >= std::size(kAllDTypes)) fail("dtype " + std::to_string(t) + " is not defined");
    return kAllDTypes[t];
  }
  template <typename Enum>
  Enum enumerator(Enum last, const char* what) {
    const std::uint64_t v = u64();
    if (v > static_cast<std::uint64_t>(last)) {
      fail(std::string(what) + " " + std::to_string(v) + " is not defined");
    }
    return static_cast<Enum>(v);
  }
  // Accounts for `n` bytes of output that no input byte pays for: a name
  // prefix shared with the previous name, a shape repeated from another
  // field. Without it a small payload could stand for terabytes.
  void expand(std::uint64_t n) {
    expanded_ += n;
    if (expanded_ > expansion_limit_) {
      fail("names and shapes repeated from earlier ones expand past " +
           std::to_string(expansion_limit_) + " bytes");
    }
  }
  // expand() for a copy of `s`.
  void expand(const Shape& s) { expand(s.size() * sizeof(std::int64_t)); }

  // A name: components shared with the previous name, then the others, each a
  // literal (numbered in order) or the number of an earlier literal. A name
  // equal to the previous one is the same Fqn (one string for a run of items
  // of one tensor).
  Fqn fqn() {
    const std::uint64_t shared = u64();
    if (shared > ends_.size()) {
      fail("a name shares " + std::to_string(shared) + " components with a previous name of " +
           std::to_string(ends_.size()));
    }
    const std::size_t rest = count(1, "name component");
    if (shared + rest == 0) fail("a name has no component");
    ends_.resize(static_cast<std::size_t>(shared));
    previous_.resize(ends_.empty() ? 0 : ends_.back());
    expand(previous_.size());
    for (std::size_t i = 0; i < rest; ++i) {
      const std::uint64_t code = u64();
      std::string_view part;
      if (code == 0) {
        part = view(count(1, "string length"));
        components_.push_back(part);
      } else {
        if (code > components_.size()) {
          fail("name component " + std::to_string(code - 1) + " is not defined (" +
               std::to_string(components_.size()) + " so far)");
        }
        part = components_[static_cast<std::size_t>(code - 1)];
        expand(part.size() + 1);
      }
      if (!ends_.empty()) previous_ += '.';
      previous_ += part;
      ends_.push_back(previous_.size());
    }
    if (previous_fqn_ != previous_) previous_fqn_ = Fqn(previous_);
    return previous_fqn_;
  }

  std::string path() { return chained(previous_path_); }

  // Called after the last field: throws if bytes are left over.
  void finish() const {
    if (left() != 0) fail(std::to_string(left()) + " bytes after the end of the payload");
  }

 private:
  static std::string hex(std::uint8_t b) {
    static constexpr char kDigits[] = "0123456789abcdef";
    return {'0', 'x', kDigits[b >> 4], kDigits[b & 0xf]};
  }

  std::string chained(std::string& previous) {
    const std::uint64_t shared = u64();
    if (shared > previous.size()) {
      fail("a name shares " + std::to_string(shared) + " bytes with a previous name of " +
           std::to_string(previous.size()));
    }
    expand(shared);
    std::string s = previous.substr(0, static_cast<std::size_t>(shared));
    s += string();
    previous = s;
    return s;
  }

  std::string_view data_;
  const std::string& source_;
  std::size_t pos_ = 0;  // next byte to read; pos_ <= data_.size()
  // What the payload may expand to beyond its own bytes (see expand()).
  static constexpr std::uint64_t kExpansionFactor = 16;
  static constexpr std::uint64_t kExpansionFloor = std::uint64_t{64} << 20;
  const std::uint64_t expansion_limit_;
  std::uint64_t expanded_ = 0;  // <= expansion_limit_
  // Names: every literal component so far (in order, viewing data_), the
  // previous name and where each of its components ends.
  std::vector<std::string_view> components_;
  std::string previous_;
  Fqn previous_fqn_;  // previous_, shared
  std::vector<std::size_t> ends_;
  std::string previous_path_;
};

}  // namespace ringckpt::wire
