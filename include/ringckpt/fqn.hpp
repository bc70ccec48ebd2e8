// ringckpt/fqn.hpp — an item's fully qualified name, immutable and shared.
//
// A plan names a tensor once per chunk it reads or writes: a load of a
// tensor saved as 1,024 shards holds 1,024 read items, each naming it twice.
// An Fqn is a shared pointer to one immutable string, so copying it copies a
// pointer, and every item planned from one state-dict entry holds the same
// string. It reads as a `const std::string&` or a `std::string_view`
// wherever one is expected, and compares and orders as its text does.
#pragma once

#include <compare>
#include <cstddef>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <string_view>

namespace ringckpt {

class Fqn {
 public:
  Fqn() noexcept = default;
  Fqn(std::string name) : name_(shared(std::move(name))) {}
  Fqn(std::string_view name) : Fqn(std::string(name)) {}
  Fqn(const char* name) : Fqn(std::string(name)) {}

  const std::string& str() const noexcept { return name_ ? *name_ : empty_string(); }
  operator const std::string&() const noexcept { return str(); }
  operator std::string_view() const noexcept { return str(); }

  const char* c_str() const noexcept { return str().c_str(); }
  const char* data() const noexcept { return str().data(); }
  std::size_t size() const noexcept { return str().size(); }
  bool empty() const noexcept { return str().empty(); }

  // Whether a and b hold the very same string (then they are equal).
  static bool same(const Fqn& a, const Fqn& b) noexcept { return a.name_ == b.name_; }

  friend bool operator==(const Fqn& a, const Fqn& b) noexcept {
    return same(a, b) || a.str() == b.str();
  }
  friend std::strong_ordering operator<=>(const Fqn& a, const Fqn& b) noexcept {
    if (same(a, b)) return std::strong_ordering::equal;
    return a.str() <=> b.str();
  }
  // Against text (one overload for each form, so that none is ambiguous).
  friend bool operator==(const Fqn& a, std::string_view b) noexcept { return a.str() == b; }
  friend bool operator==(const Fqn& a, const std::string& b) noexcept { return a.str() == b; }
  friend bool operator==(const Fqn& a, const char* b) noexcept { return a.str() == b; }
  friend std::strong_ordering operator<=>(const Fqn& a, std::string_view b) noexcept {
    return std::string_view(a.str()) <=> b;
  }
  friend std::strong_ordering operator<=>(const Fqn& a, const std::string& b) noexcept {
    return a.str() <=> b;
  }
  friend std::strong_ordering operator<=>(const Fqn& a, const char* b) noexcept {
    return std::string_view(a.str()) <=> std::string_view(b);
  }

 private:
  // The empty name holds no string.
  static std::shared_ptr<const std::string> shared(std::string name) {
    if (name.empty()) return nullptr;
    return std::make_shared<const std::string>(std::move(name));
  }
  static const std::string& empty_string() noexcept {
    static const std::string kEmpty;
    return kEmpty;
  }

  std::shared_ptr<const std::string> name_;  // null for the empty name
};

std::ostream& operator<<(std::ostream& out, const Fqn& fqn);

}  // namespace ringckpt

template <>
struct std::hash<ringckpt::Fqn> {
  std::size_t operator()(const ringckpt::Fqn& fqn) const noexcept {
    return std::hash<std::string_view>{}(fqn.str());
  }
};
