// lib/plan/wire_codec.hpp — the one binary form of everything that crosses
// ranks: save and load plans, write results, metadata, and each rank's status
// (its payload, or the error it raised) in the collective protocol.
//
// Not a file format: both ends are ranks of one job, built from one source.
// Every payload starts with a 3-byte header:
//
//   byte 0  kMagic (0xB5)
//   byte 1  kVersion
//   byte 2  Kind
//
// then its body, made of:
//   varint   unsigned LEB128, shortest form only (at most 10 bytes)
//   signed   zig-zag, then varint
//   string   varint length, then the bytes (any bytes, NUL included)
//   name     split at each '.' into components: varint count of leading
//            components equal to the previous name's of the same payload,
//            varint count of the others, then each of them as varint code:
//            0 and a string (a literal, numbered in order from 0), or k + 1
//            for literal k. So "model.layers.17.attention.wq.weight" after
//            "model.layers.17.attention.wk.weight" takes 4 bytes, and after
//            "model.layers.16.ffn_norm.weight" 9 bytes (all but "17" seen before).
//   path     varint length shared with the previous path of the payload, then
//            the rest as a string.
//   shape    varint rank, then one signed per dimension
//   dtype    one byte: the position in kAllDTypes
// A WriteItem is its name, a head byte (type and which fields follow), then
// its fields, each stored against what the previous tensor item and its own
// fields already say (same chunk sizes, global shape or dtype as the previous
// item, chunk offsets zero, global shape equal to the chunk, index offset equal
// to the chunk offsets; bytes_io_size 0), so that a replicated whole tensor
// (the same item on every rank) costs its name and two bytes, and a row shard
// a few more.
//
// Decoding takes hostile input: every count and length is checked against the
// bytes left before anything is allocated; what earlier bytes stand for
// (shared name components, repeated shapes) may expand a payload at most 16-fold
// plus 64 MiB (a plan beyond that, thousands of names of tens of KB each, is
// refused); and a truncated, overlong (a varint not in shortest form, bytes
// after the end), wrong-magic, wrong-version or wrong-kind payload throws
// Error(kCorrupt, source, fault), `source` naming the payload and the rank it
// came from. Encoding is deterministic: equal values give equal bytes (what
// fingerprint() relies on).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ringckpt/error.hpp"
#include "ringckpt/metadata.hpp"
#include "ringckpt/plan.hpp"

namespace ringckpt::wire {

inline constexpr std::uint8_t kMagic = 0xB5;
// 2: component-coded names, compact WriteItems; 3: Metadata carries storage_meta
inline constexpr std::uint8_t kVersion = 3;
inline constexpr std::size_t kHeaderSize = 3;

enum class Kind : std::uint8_t {
  kSavePlan = 1,
  kLoadPlan = 2,
  kWriteResults = 3,
  kMetadata = 4,
  kRankStatus = 5,
  // Reserved for plan caching: "my plan is the one I sent last time", with the
  // fingerprint() of that plan as its body (8 bytes, little-endian). No
  // decoder here accepts it yet; every other decoder refuses it as a wrong kind.
  kSamePlan = 6,
};

// "save plan", "rank status", ...
std::string_view kind_name(Kind kind) noexcept;

std::string encode(const SavePlan& plan);
std::string encode(const LoadPlan& plan);
std::string encode(const WriteResults& results);
std::string encode(const Metadata& metadata);

// `source` names the payload in errors ("save plan from rank 2").
SavePlan decode_save_plan(std::string_view bytes, const std::string& source);
LoadPlan decode_load_plan(std::string_view bytes, const std::string& source);
WriteResults decode_write_results(std::string_view bytes, const std::string& source);
Metadata decode_metadata(std::string_view bytes, const std::string& source);

// XXH3-64 of an encoded payload (a plan: equal plans, index hints included,
// have equal fingerprints). What a kSamePlan token carries.
std::uint64_t fingerprint(std::string_view encoded);

// ---------------------------------------------------------------------------
// Rank status: what one rank reports for one step of the protocol, either OK
// with a payload (itself an encoded payload, or empty) or the error it raised.

struct RankError {
  int rank = 0;  // the rank that raised it; >= 0
  ErrorCode code = ErrorCode::kInvalidArgument;
  std::string where;
  std::string message;
};

struct RankStatus {
  std::optional<RankError> failure;  // set if the rank failed
  std::string payload;               // empty when failure is set
};

std::string encode_ok(std::string_view payload);
// REQUIRES: failure.rank >= 0.
std::string encode_failure(const RankError& failure);
RankStatus decode_status(std::string_view bytes, const std::string& source);

// The Error every rank throws for `failure`: its code and where, and its
// message with the rank appended ("<message> (on rank 1)").
Error to_error(const RankError& failure);

}  // namespace ringckpt::wire
