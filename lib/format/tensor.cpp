#include "ringckpt/tensor.hpp"

#include "ringckpt/error.hpp"

namespace ringckpt {

std::int64_t numel(const Shape& shape) noexcept {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

StateDict& StateDict::add(std::string fqn, StateValue value) {
  if (fqn.empty()) throw Error(ErrorCode::kInvalidArgument, "state dict", "empty key");
  if (index_.contains(fqn)) {
    throw Error(ErrorCode::kInvalidArgument, fqn, "key added to the state dict twice");
  }
  index_.emplace(fqn, entries_.size());
  entries_.push_back(Entry{std::move(fqn), std::move(value)});
  return *this;
}

StateValue* StateDict::find(std::string_view fqn) noexcept {
  auto it = index_.find(fqn);
  return it == index_.end() ? nullptr : &entries_[it->second].value;
}

const StateValue* StateDict::find(std::string_view fqn) const noexcept {
  auto it = index_.find(fqn);
  return it == index_.end() ? nullptr : &entries_[it->second].value;
}

std::uint64_t StateDict::nbytes() const noexcept {
  std::uint64_t total = 0;
  for (const auto& e : entries_) {
    if (auto* t = std::get_if<TensorView>(&e.value)) {
      total += t->nbytes();
    } else if (auto* s = std::get_if<ShardedTensor>(&e.value)) {
      for (const auto& shard : s->shards) total += shard.local.nbytes();
    } else {
      total += std::get<Bytes>(e.value).size();
    }
  }
  return total;
}

}  // namespace ringckpt
