// lib/drivers/protocol_steps.hpp — the pieces every collective protocol of
// ringckpt (save, load) is made of.
//
// Every payload travels as a wire::RankStatus: OK with the step's encoded
// result, or the failure of the rank that raised it. A failure is passed on
// unchanged from step to step, so that the error every rank finally throws
// names the rank that failed and keeps its code, where and message. Every
// rank takes part in every collective of a protocol, failed or not: none is
// left waiting in one the others skipped.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "format/error_translation.hpp"
#include "plan/wire_codec.hpp"
#include "ringckpt/coordinator.hpp"
#include "ringckpt/error.hpp"

namespace ringckpt::detail {

// A failure another rank reported, on its way to being passed on as is.
struct Relayed {
  std::string status;
};

// One step of the protocol on `rank`: the payload `step` returns in an OK
// status, or what it raised as this rank's failure (or a Relayed one as is),
// translated as an Error at `where` (the checkpoint directory, or the rank)
// when it names no place itself.
template <typename F>
std::string guarded(int rank, const std::string& where, F&& step) {
  try {
    return wire::encode_ok(step());
  } catch (const Relayed& relayed) {
    return relayed.status;
  } catch (...) {
    // Whatever a planner or storage throws (out of memory included), this
    // rank stays in the protocol and reports it as an Error.
    try {
      const Error e = as_error(std::current_exception(), where);
      return wire::encode_failure({rank, e.code(), e.where(), e.message()});
    } catch (...) {
      // No memory even to describe the failure: a status of a few bytes,
      // so that this rank still reports rather than leaving the protocol.
      return wire::encode_failure({rank, ErrorCode::kIo, "", "out of memory"});
    }
  }
}

inline std::string from(std::string_view what, int rank) {
  return std::string(what) + " from rank " + std::to_string(rank);
}

// The payload of a status another rank sent; `source` names it in errors.
// A failure it carries is thrown as Relayed.
// REQUIRES: called inside guarded(), which catches Relayed.
inline std::string payload(std::string status, const std::string& source) {
  wire::RankStatus s = wire::decode_status(status, source);
  if (s.failure) throw Relayed{std::move(status)};
  return std::move(s.payload);
}

// The end of a protocol on every rank: throws the failure that rank 0
// broadcast, if any (naming the rank that failed, unless it is alone);
// else returns the payload it broadcast.
inline std::string conclude(const std::string& outcome, int world_size) {
  wire::RankStatus s = wire::decode_status(outcome, "outcome from rank 0");
  if (s.failure && world_size == 1) {
    throw Error(s.failure->code, s.failure->where, s.failure->message);
  }
  if (s.failure) throw wire::to_error(*s.failure);
  return std::move(s.payload);
}

// Throws unless `producer` (the step or the planner call that made them)
// produced one plan per rank: a scatter of any other count would fail on
// rank 0 alone and leave the others waiting.
inline void check_plan_count(std::size_t plans, int world_size, const char* producer) {
  if (plans != static_cast<std::size_t>(world_size)) {
    throw Error(ErrorCode::kInvalidArgument, producer,
                std::to_string(plans) + " plans for " + std::to_string(world_size) + " ranks");
  }
}

// The last step of a protocol, on every rank: each runs `step` (guarded),
// the coordinator gathers how it went, and every rank learns the outcome:
// it throws the first failure (naming the rank, see conclude) or returns.
// `status_name` names rank r's status in errors.
template <typename F>
void all_or_none(Coordinator& c, const std::string& where, std::string_view status_name,
                 F&& step) {
  std::vector<std::string> statuses = c.gather(guarded(c.rank(), where, [&] {
    step();
    return std::string();
  }));
  std::string outcome;
  if (c.is_coordinator()) {
    outcome = guarded(c.rank(), where, [&] {
      for (int r = 0; r < static_cast<int>(statuses.size()); ++r) {
        payload(std::move(statuses[r]), from(status_name, r));
      }
      return std::string();
    });
  }
  if (c.world_size() > 1) outcome = c.broadcast(std::move(outcome));
  conclude(outcome, c.world_size());
}

// The payloads of the statuses gathered from every rank, each decoded with
// decode(bytes, source, rank); `status_name` and `payload_name` name rank r's
// in errors. The first failure among them is thrown as Relayed.
// REQUIRES: called inside guarded().
template <typename Decode>
auto decode_each(std::vector<std::string>& statuses, std::string_view status_name,
                 std::string_view payload_name, Decode&& decode) {
  std::vector<decltype(decode(std::string_view(), std::string(), 0))> out;
  out.reserve(statuses.size());
  for (int r = 0; r < static_cast<int>(statuses.size()); ++r) {
    const std::string bytes = payload(std::move(statuses[r]), from(status_name, r));
    out.push_back(decode(bytes, from(payload_name, r), r));
  }
  return out;
}

// Step 2 of both protocols, on every rank: the coordinator turns the local
// plans gathered in `locals` into one encoded payload per rank
// (`global_payloads`, inside guarded), and each rank receives its own, or the
// failure of this step. Returns this rank's status.
template <typename GlobalPayloads>
std::string scatter_global(Coordinator& c, const std::string& where,
                           GlobalPayloads&& global_payloads) {
  std::vector<std::string> centrals;
  if (c.is_coordinator()) {
    std::vector<std::string> encoded;
    bool planned = false;
    const std::string status = guarded(c.rank(), where, [&] {
      encoded = global_payloads();
      check_plan_count(encoded.size(), c.world_size(), "the global plan step");
      for (auto& g : encoded) g = wire::encode_ok(g);
      planned = true;
      return std::string();
    });
    if (planned) {
      centrals = std::move(encoded);
    } else {
      centrals.assign(static_cast<std::size_t>(c.world_size()), status);
    }
  }
  return c.scatter(std::move(centrals));
}

}  // namespace ringckpt::detail
