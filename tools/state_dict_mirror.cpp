// tools/state_dict_mirror.cpp — a state dict shaped like the model, and the
// comparison of two.
#include "state_dict_mirror.hpp"

#include <algorithm>
#include <cstring>
#include <variant>

namespace ringckpt::tools::bench {

StateDict mirror_state_dict(const SyntheticModel& model, std::byte* dst,
                            std::vector<std::unique_ptr<std::byte[]>>& extra) {
  const auto* base = model.arena.get();
  auto place = [&](const TensorView& t) {
    TensorView v = t;
    const auto* p = static_cast<const std::byte*>(t.data);
    if (p >= base && p + t.nbytes() <= base + model.arena_bytes) {
      v.data = dst + (p - base);
    } else {
      extra.push_back(std::make_unique<std::byte[]>(std::max<std::size_t>(1, t.nbytes())));
      v.data = extra.back().get();
    }
    return v;
  };
  StateDict out;
  for (const auto& e : model.state_dict) {
    if (const auto* t = std::get_if<TensorView>(&e.value)) {
      out.add(e.fqn, place(*t));
    } else if (const auto* s = std::get_if<ShardedTensor>(&e.value)) {
      ShardedTensor st = *s;
      for (auto& sh : st.shards) sh.local = place(sh.local);
      out.add(e.fqn, std::move(st));
    } else {
      out.add(e.fqn, std::get<Bytes>(e.value));
    }
  }
  return out;
}

std::string first_difference(const StateDict& a, const StateDict& b) {
  if (a.size() != b.size()) return "entry count differs";
  auto j = b.begin();
  for (auto i = a.begin(); i != a.end(); ++i, ++j) {
    bool same = true;
    if (const auto* t = std::get_if<TensorView>(&i->value)) {
      const auto* u = std::get_if<TensorView>(&j->value);
      same = u && u->nbytes() == t->nbytes() && std::memcmp(t->data, u->data, t->nbytes()) == 0;
    } else if (const auto* s = std::get_if<ShardedTensor>(&i->value)) {
      const auto* u = std::get_if<ShardedTensor>(&j->value);
      same = u && u->shards.size() == s->shards.size();
      for (std::size_t k = 0; same && k < s->shards.size(); ++k) {
        same = std::memcmp(s->shards[k].local.data, u->shards[k].local.data,
                           s->shards[k].local.nbytes()) == 0;
      }
    } else {
      const auto* u = std::get_if<Bytes>(&j->value);
      same = u && *u == std::get<Bytes>(i->value);
    }
    if (!same) return i->fqn;
  }
  return "";
}

}  // namespace ringckpt::tools::bench
