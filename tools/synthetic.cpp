// synthetic.cpp — seeded, model-shaped state dicts for `ringckpt demo` and
// `ringckpt bench`.
//
// Layout invariant: every tensor of a SyntheticModel lives in one page-aligned
// arena, at a 64-byte aligned offset, in state-dict order. The fill pattern is
// a pure function of (seed, 8-byte word index in the arena), so the arena can
// be filled by several threads at once and refill(seed) reproduces it exactly.

#include "synthetic.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <thread>
#include <variant>

#include "format/file_extents.hpp"  // round_up

namespace ringckpt::tools {
namespace {

constexpr std::uint64_t kTensorAlignment = 64;
constexpr std::uint64_t kPageSize = 4096;
constexpr std::uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // splitmix64's increment
// The transformer's optimizer step counter: one blob besides its tensors.
constexpr const char* kStepName = "step";
constexpr std::uint64_t kStepBytes = sizeof(std::int64_t);
bool has_step(ModelKind kind) { return kind == ModelKind::transformer; }

using detail::round_up;

// splitmix64's output function: a good 64-bit mix in a few multiplies.
inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Fills words [first, last) of `words` with the pattern for `seed`.
void fill_words(std::uint64_t* words, std::uint64_t first, std::uint64_t last,
                std::uint64_t seed) {
  const std::uint64_t base = mix64(seed + kGolden);
  for (std::uint64_t i = first; i < last; ++i) words[i] = mix64(base + i * kGolden);
}

// Fills the whole arena; large arenas are split across threads so that
// creating a multi-GiB model takes well under a second per GiB.
void fill_arena(std::byte* arena, std::uint64_t arena_bytes, std::uint64_t seed) {
  auto* words = reinterpret_cast<std::uint64_t*>(arena);
  const std::uint64_t word_count = arena_bytes / sizeof(std::uint64_t);
  constexpr std::uint64_t kWordsPerThreadMin = (32ull << 20) / sizeof(std::uint64_t);
  const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
  const std::uint64_t thread_count =
      std::clamp<std::uint64_t>(word_count / kWordsPerThreadMin, 1, std::min(hardware, 16u));
  if (thread_count == 1) {
    fill_words(words, 0, word_count, seed);
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(thread_count);
  const std::uint64_t per_thread = (word_count + thread_count - 1) / thread_count;
  for (std::uint64_t t = 0; t < thread_count; ++t) {
    const std::uint64_t first = t * per_thread;
    const std::uint64_t last = std::min(word_count, first + per_thread);
    if (first >= last) break;
    threads.emplace_back(fill_words, words, first, last, seed);
  }
  for (auto& thread : threads) thread.join();
}

// One tensor of the model before the arena exists.
struct TensorSpec {
  std::string name;
  DType dtype;
  Shape shape;
  std::uint64_t nbytes() const {
    return static_cast<std::uint64_t>(ringckpt::numel(shape)) * dtype_size(dtype);
  }
};

// Parameters (elements) of a transformer with hidden size h and L layers,
// laid out as in transformer_specs below.
std::uint64_t transformer_params(std::uint64_t h, std::uint64_t layers) {
  const std::uint64_t embedding = 8 * h * h;           // vocab = 8h
  const std::uint64_t per_layer = 12 * h * h + 11 * h;  // q,k,v,o + up/down, biases, 2 norms
  return embedding + layers * per_layer + h;           // + final norm
}

// Bytes on disk: BF16 parameters (2) plus two F32 moments (8), plus the step.
std::uint64_t transformer_bytes(std::uint64_t h, std::uint64_t layers) {
  return 10 * transformer_params(h, layers) + kStepBytes;
}

// Chooses (hidden, layers) so the model is within a few percent of the
// target, preferring a realistic aspect (about 64 hidden units per layer, as
// in GPT-2's 768 x 12; Llama-7B has 128) among the candidates close enough:
// 256 MiB gives hidden 512 x 8 layers, 16 GiB hidden 2080 x 32.
void choose_transformer_shape(std::uint64_t target, std::uint64_t& hidden,
                              std::uint64_t& layers) {
  constexpr std::uint64_t kHiddenStep = 16;
  constexpr std::uint64_t kHiddenMax = 65536;
  if (target < transformer_bytes(kHiddenStep, 1)) {
    throw std::invalid_argument("a transformer needs at least " +
                                format_bytes(transformer_bytes(kHiddenStep, 1)));
  }
  double best_error = std::numeric_limits<double>::infinity();
  double best_aspect = std::numeric_limits<double>::infinity();
  bool best_close = false;
  for (std::uint64_t h = kHiddenStep; h <= kHiddenMax; h += kHiddenStep) {
    const std::uint64_t fixed = transformer_bytes(h, 0);
    if (fixed >= target) break;
    const double per_layer = 10.0 * (12.0 * h * h + 11.0 * h);
    const auto l = std::max<std::uint64_t>(
        1, static_cast<std::uint64_t>(std::llround((target - fixed) / per_layer)));
    const double error =
        std::fabs(static_cast<double>(transformer_bytes(h, l)) - target) / target;
    const double aspect = std::fabs(std::log(static_cast<double>(h) / (64.0 * l)));
    const bool close = error <= 0.03;
    const bool better =
        close ? (!best_close || aspect < best_aspect) : (!best_close && error < best_error);
    if (better) {
      hidden = h;
      layers = l;
      best_error = error;
      best_aspect = aspect;
      best_close = close;
    }
  }
}

std::vector<TensorSpec> transformer_specs(std::uint64_t target) {
  std::uint64_t hidden_u = 0, layers = 0;
  choose_transformer_shape(target, hidden_u, layers);
  const auto h = static_cast<std::int64_t>(hidden_u);
  std::vector<TensorSpec> params;
  params.push_back({"model.embed_tokens.weight", DType::BF16, {8 * h, h}});
  for (std::uint64_t i = 0; i < layers; ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    params.push_back({prefix + "input_layernorm.weight", DType::BF16, {h}});
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      params.push_back({prefix + "self_attn." + proj + ".weight", DType::BF16, {h, h}});
      params.push_back({prefix + "self_attn." + proj + ".bias", DType::BF16, {h}});
    }
    params.push_back({prefix + "post_attention_layernorm.weight", DType::BF16, {h}});
    params.push_back({prefix + "mlp.up_proj.weight", DType::BF16, {4 * h, h}});
    params.push_back({prefix + "mlp.up_proj.bias", DType::BF16, {4 * h}});
    params.push_back({prefix + "mlp.down_proj.weight", DType::BF16, {h, 4 * h}});
    params.push_back({prefix + "mlp.down_proj.bias", DType::BF16, {h}});
  }
  params.push_back({"model.norm.weight", DType::BF16, {h}});

  // Parameters, then Adam's first moments, then its second moments (F32),
  // the order a {"model": ..., "optim": ...} state dict flattens to.
  std::vector<TensorSpec> specs = params;
  for (const char* moment : {"optim.exp_avg.", "optim.exp_avg_sq."}) {
    for (const auto& p : params) specs.push_back({moment + p.name, DType::F32, p.shape});
  }
  return specs;
}

// A 1-D length as a 2-D [rows, 1024] shape when it divides evenly: a shape
// that reads like a weight matrix in `inspect`.
Shape matrix_shape(std::int64_t elements) {
  if (elements >= 1024 && elements % 1024 == 0) return {elements / 1024, 1024};
  return {elements};
}

std::vector<TensorSpec> uniform_specs(std::uint64_t target) {
  constexpr std::uint64_t kMaxTensorBytes = 64ull << 20;
  const std::uint64_t tensor_bytes =
      round_up(std::min(kMaxTensorBytes, std::max<std::uint64_t>(target / 4, 4)), 4);
  const std::uint64_t count = std::max<std::uint64_t>(
      1, (target + tensor_bytes / 2) / tensor_bytes);
  std::vector<TensorSpec> specs;
  specs.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    specs.push_back({"tensor." + std::to_string(i), DType::F32,
                     matrix_shape(static_cast<std::int64_t>(tensor_bytes / 4))});
  }
  return specs;
}

std::vector<TensorSpec> small_specs(std::uint64_t target) {
  constexpr std::uint64_t kCount = 100'000;
  const std::uint64_t tensor_bytes = round_up(std::max<std::uint64_t>(16, target / kCount), 4);
  std::vector<TensorSpec> specs;
  specs.reserve(kCount);
  for (std::uint64_t i = 0; i < kCount; ++i) {
    specs.push_back({"small." + std::to_string(i), DType::F32,
                     {static_cast<std::int64_t>(tensor_bytes / 4)}});
  }
  return specs;
}

std::vector<TensorSpec> specs_of(ModelKind kind, std::uint64_t target_bytes) {
  if (target_bytes == 0) throw std::invalid_argument("model size must be positive");
  switch (kind) {
    case ModelKind::transformer: return transformer_specs(target_bytes);
    case ModelKind::uniform: return uniform_specs(target_bytes);
    case ModelKind::small: return small_specs(target_bytes);
  }
  return {};
}

std::shared_ptr<std::byte> map_arena(std::uint64_t bytes) {
  void* memory = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(memory),
                                    [bytes](std::byte* p) { ::munmap(p, bytes); });
}

}  // namespace

bool parse_model_kind(const std::string& text, ModelKind& out) {
  if (text == "transformer") out = ModelKind::transformer;
  else if (text == "uniform") out = ModelKind::uniform;
  else if (text == "small") out = ModelKind::small;
  else return false;
  return true;
}

ModelSize model_size(ModelKind kind, std::uint64_t target_bytes) {
  ModelSize size;
  for (const auto& spec : specs_of(kind, target_bytes)) {
    size.bytes += spec.nbytes();
    ++size.tensors;
  }
  if (has_step(kind)) {
    size.bytes += kStepBytes;
    ++size.tensors;
  }
  return size;
}

SyntheticModel make_model(ModelKind kind, std::uint64_t target_bytes, std::uint64_t seed) {
  std::vector<TensorSpec> specs = specs_of(kind, target_bytes);
  std::vector<std::uint64_t> offsets;
  offsets.reserve(specs.size());
  std::uint64_t arena_used = 0;
  for (const auto& spec : specs) {
    offsets.push_back(arena_used);
    arena_used = round_up(arena_used + spec.nbytes(), kTensorAlignment);
  }

  SyntheticModel model;
  model.arena_bytes = round_up(std::max<std::uint64_t>(arena_used, 1), kPageSize);
  model.arena = map_arena(model.arena_bytes);
  fill_arena(model.arena.get(), model.arena_bytes, seed);

  for (std::size_t i = 0; i < specs.size(); ++i) {
    model.state_dict.add(std::move(specs[i].name),
                         TensorView{model.arena.get() + offsets[i], specs[i].dtype,
                                    std::move(specs[i].shape)});
  }
  if (has_step(kind)) model.state_dict.add(kStepName, bytes_of(static_cast<std::int64_t>(seed)));
  model.bytes = model.state_dict.nbytes();
  model.tensors = model.state_dict.size();
  return model;
}

void refill(SyntheticModel& model, std::uint64_t seed) {
  fill_arena(model.arena.get(), model.arena_bytes, seed);
  if (auto* step = model.state_dict.find(kStepName)) {
    if (auto* blob = std::get_if<Bytes>(step)) *blob = bytes_of(static_cast<std::int64_t>(seed));
  }
}

bool parse_size(const std::string& text, std::uint64_t& out) {
  // <digits>[.<digits>][suffix], suffix case-insensitive: B, K/KB, KiB, ...
  std::size_t pos = 0;
  std::uint64_t whole = 0;
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  if (pos >= text.size() || !is_digit(text[pos])) return false;
  for (; pos < text.size() && is_digit(text[pos]); ++pos) {
    const std::uint64_t digit = static_cast<std::uint64_t>(text[pos] - '0');
    if (whole > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) return false;
    whole = whole * 10 + digit;
  }
  std::string fraction;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    for (; pos < text.size() && is_digit(text[pos]); ++pos) fraction += text[pos];
    if (fraction.empty()) return false;
  }

  std::string suffix;
  for (; pos < text.size(); ++pos) {
    suffix += static_cast<char>(std::tolower(static_cast<unsigned char>(text[pos])));
  }
  struct Unit { const char* name; std::uint64_t multiplier; };
  static constexpr Unit kUnits[] = {
      {"", 1},          {"b", 1},
      {"k", 1ull << 10}, {"kib", 1ull << 10}, {"kb", 1000ull},
      {"m", 1ull << 20}, {"mib", 1ull << 20}, {"mb", 1000ull * 1000},
      {"g", 1ull << 30}, {"gib", 1ull << 30}, {"gb", 1000ull * 1000 * 1000},
      {"t", 1ull << 40}, {"tib", 1ull << 40}, {"tb", 1000ull * 1000 * 1000 * 1000},
  };
  const Unit* unit = nullptr;
  for (const auto& u : kUnits) {
    if (suffix == u.name) unit = &u;
  }
  if (unit == nullptr) return false;

  if (whole > std::numeric_limits<std::uint64_t>::max() / unit->multiplier) return false;
  std::uint64_t result = whole * unit->multiplier;
  if (!fraction.empty()) {
    // The fractional part adds less than one multiplier; long double keeps
    // every multiplier here exact.
    const long double part = std::stold("0." + fraction) * unit->multiplier;
    const auto extra = static_cast<std::uint64_t>(std::llround(part));
    if (result > std::numeric_limits<std::uint64_t>::max() - extra) return false;
    result += extra;
  }
  if (result == 0) return false;
  out = result;
  return true;
}

std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  // 1023.96 KiB would print as "1024.0 KiB": move up a unit before that.
  while (value >= 1023.95 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%.1f %s", value, kUnits[unit]);
  return text;
}

}  // namespace ringckpt::tools
