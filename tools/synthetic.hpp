// tools/synthetic.hpp — seeded, repeatable state dicts shaped like models.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ringckpt/tensor.hpp"

namespace ringckpt::tools {

enum class ModelKind {
  transformer,  // embedding, per-layer attention + MLP matrices (BF16), norms and
                // biases, two F32 optimizer moments per parameter, a step blob
  uniform,      // N equal F32 tensors of 64 MiB (fewer if the size is small)
  small,        // 100,000 tiny tensors (the many-small-writes case)
};

// How much a model holds.
struct ModelSize {
  std::uint64_t bytes = 0;  // total bytes of all tensors and blobs
  std::size_t tensors = 0;  // number of entries
};

// A state dict and the memory it points to (one page-aligned arena, touched
// once at creation). Data is a cheap seeded pattern: repeatable, not constant.

struct SyntheticModel {
  StateDict state_dict;
  std::uint64_t bytes = 0;  // total bytes of all tensors and blobs
  std::size_t tensors = 0;  // number of entries
  std::shared_ptr<std::byte> arena;
  std::uint64_t arena_bytes = 0;

  ModelSize size() const { return {bytes, tensors}; }
};

// Parses "transformer" | "uniform" | "small"; false for anything else.
bool parse_model_kind(const std::string& text, ModelKind& out);

// A model of about `target_bytes` (within a few percent; small ignores the
// size beyond choosing tensor length). Throws std::invalid_argument for a
// size too small to shape the model.
SyntheticModel make_model(ModelKind kind, std::uint64_t target_bytes, std::uint64_t seed);

// The size make_model(kind, target_bytes, any seed) has, without making it
// (no memory mapped or filled). Throws as make_model does.
ModelSize model_size(ModelKind kind, std::uint64_t target_bytes);

// Rewrites every tensor's bytes with the pattern for `seed` (an optimizer
// step that touches every parameter), and the step blob with `seed`.
void refill(SyntheticModel& model, std::uint64_t seed);

// Parses sizes like "256MiB", "4GiB", "16MB", "1048576"; false if malformed.
bool parse_size(const std::string& text, std::uint64_t& out);
std::string format_bytes(std::uint64_t bytes);  // "256.0 MiB"

}  // namespace ringckpt::tools
