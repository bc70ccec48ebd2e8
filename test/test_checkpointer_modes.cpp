// test/test_checkpointer_modes.cpp — the Checkpointer's staging modes, saves from many
// threads, the synchronous forms and a planner given per save.
#define BOOST_TEST_MODULE checkpointer
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <barrier>
#include <cstring>
#include <mutex>
#include <thread>

#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace fs = std::filesystem;

// ------------------------------------------------------------------------
// Staging semantics: once staged fires, the caller owns its tensors again.

BOOST_AUTO_TEST_SUITE(staging)

BOOST_AUTO_TEST_CASE(values_mutated_after_staged_are_saved_old) {
  struct Case {
    StagingMode mode;
    std::size_t ring;
    std::size_t state;
  };
  // snapshot needs a ring that holds the state dict; bounded and the second
  // lazy case use a ring smaller than it.
  const Case cases[] = {{StagingMode::snapshot, 4 * MiB, 3 * MiB},
                        {StagingMode::bounded, 1 * MiB, 3 * MiB},
                        {StagingMode::lazy, 4 * MiB, 3 * MiB},
                        {StagingMode::lazy, 1 * MiB, 3 * MiB}};
  TempDir root;
  int n = 0;
  for (const Case& c : cases) {
    BOOST_TEST_CONTEXT("mode " << mode_name(c.mode) << ", ring " << c.ring) {
      Checkpointer ckpt(options(StagingMode::lazy, c.ring));
      auto m = model_of(c.state, 7 + n);
      if (c.ring < c.state) {
        BOOST_TEST_REQUIRE(m->nbytes() > c.ring);
      } else {
        BOOST_TEST_REQUIRE(m->nbytes() + 64 * KiB < c.ring);
      }
      const auto old = m->contents();
      const fs::path dir = root / ("ckpt-" + std::to_string(n++));

      SaveHandle h = ckpt.async_save(m->sd(), dir, with_mode(c.mode));
      if (c.mode == StagingMode::snapshot) {
        BOOST_TEST(ready(h.staged), "snapshot returns only once staged");
      }
      h.staged.get();
      m->scribble(12345);  // the training step mutates its tensors at once
      BOOST_TEST_REQUIRE((m->contents() != old));
      h.committed.get();
      BOOST_TEST(verify(dir, small_io()).ok());
      BOOST_TEST((load_contents(ckpt, *m, dir) == old));
    }
  }
}

BOOST_AUTO_TEST_CASE(state_dict_freed_after_staged) {
  // After staged the caller may free what the state dict pointed to (and the
  // state dict itself).
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded));
  std::vector<std::vector<std::byte>> old;
  SaveHandle h;
  {
    auto m = model_of(3 * MiB, 3);
    old = m->contents();
    h = ckpt.async_save(m->sd(), root / "c");
    h.staged.get();
    m->scribble(99);
  }  // freed here
  h.committed.get();
  auto m = model_of(3 * MiB, 0);
  BOOST_TEST((load_contents(ckpt, *m, root / "c") == old));
}

BOOST_AUTO_TEST_CASE(larger_than_ring_bounded_is_byte_exact) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(8 * MiB, 11);
  BOOST_TEST_REQUIRE(m->nbytes() > 8 * ckpt.options().io.ring_bytes - 16 * KiB);
  const auto old = m->contents();
  ckpt.async_save(m->sd(), root / "big").committed.get();
  const VerifyReport v = verify(root / "big", small_io());
  BOOST_TEST(v.ok());
  BOOST_TEST(v.extents > 100u);  // 64 KiB extents
  BOOST_TEST((load_contents(ckpt, *m, root / "big") == old));
}

BOOST_AUTO_TEST_CASE(snapshot_with_too_small_a_ring_is_refused) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto m = model_of(8 * MiB, 11);
  auto e = error_of([&] { ckpt.async_save(m->sd(), root / "snap", with_mode(StagingMode::snapshot)); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kInvalidArgument));
  BOOST_TEST(std::string(e->what()).find("ring") != std::string::npos, e->what());
  BOOST_TEST(checkpoint_files(root / "snap").empty());
  // The same as the default mode.
  {
    Checkpointer snap(options(StagingMode::snapshot, 1 * MiB));
    auto e2 = error_of([&] { snap.async_save(m->sd(), root / "snap2"); });
    BOOST_TEST_REQUIRE(e2.has_value());
    BOOST_TEST((e2->code() == ErrorCode::kInvalidArgument));
  }
  // The checkpointer is unharmed: the same state dict saves bounded.
  ckpt.async_save(m->sd(), root / "snap").committed.get();
  BOOST_TEST((load_contents(ckpt, *m, root / "snap") == m->contents()));
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------
// Saves from several threads through one Checkpointer.

BOOST_AUTO_TEST_CASE(concurrent_saves_from_four_threads) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::lazy, 2 * MiB));
  constexpr int kThreads = 4;
  constexpr int kSaves = 3;
  const StagingMode modes[] = {StagingMode::lazy, StagingMode::bounded, StagingMode::snapshot};
  std::barrier start(kThreads);
  std::mutex mu;
  std::vector<std::string> failures;  // guarded by mu
  auto fail = [&](std::string what) {
    std::lock_guard lock(mu);
    failures.push_back(std::move(what));
  };

  auto worker = [&](int t) {
    try {
      const std::string prefix = "rank" + std::to_string(t) + ".";
      auto m = model_of(600 * KiB + t * 40 * KiB, 100 + t, prefix);
      std::vector<std::vector<std::vector<std::byte>>> saved;
      std::vector<SaveHandle> handles;
      start.arrive_and_wait();
      for (int s = 0; s < kSaves; ++s) {
        m->scribble(100 + t * 10 + s);
        saved.push_back(m->contents());
        const fs::path dir = root / ("t" + std::to_string(t) + "-s" + std::to_string(s));
        SaveHandle h = ckpt.async_save(m->sd(), dir, with_mode(modes[(t + s) % 3]));
        h.staged.get();  // then mutate for the next save, which queues behind this one
        handles.push_back(h);
      }
      for (auto& h : handles) h.committed.get();  // each save's own commit
      for (int s = 0; s < kSaves; ++s) {
        const fs::path dir = root / ("t" + std::to_string(t) + "-s" + std::to_string(s));
        Metadata md = read_metadata(dir);
        for (const auto& [name, _] : md.state_dict_metadata) {
          if (!name.starts_with(prefix)) fail(dir.string() + " holds a foreign entry " + name);
        }
        if (md.state_dict_metadata.size() != 4) fail(dir.string() + ": wrong entry count");
        if (load_contents(ckpt, *m, dir) != saved[s]) fail(dir.string() + " loads other bytes");
        std::size_t data_files = 0;
        for (const auto& e : fs::directory_iterator(dir)) data_files += e.path().extension() == ".safetensors";
        if (data_files != md.files.size()) fail(dir.string() + ": stray data files");
      }
    } catch (const std::exception& e) {
      fail(std::string("thread ") + std::to_string(t) + ": " + e.what());
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  // verify() sets up an io_uring of its own: run it here, not on the workers,
  // where ThreadSanitizer (blind to liburing's raw mmap) would take one
  // worker's new ring, mapped where another's was, for a race.
  for (int t = 0; t < kThreads; ++t) {
    for (int s = 0; s < kSaves; ++s) {
      const fs::path dir = root / ("t" + std::to_string(t) + "-s" + std::to_string(s));
      if (!verify(dir, small_io()).ok()) fail(dir.string() + " does not verify");
    }
  }
  for (const auto& f : failures) BOOST_ERROR(f);
  BOOST_TEST(failures.empty());
}

// ------------------------------------------------------------------------
// Synchronous forms and the I/O report.

BOOST_AUTO_TEST_CASE(sync_save_and_load_round_trip_and_report) {
  TempDir root("/var/tmp");
  Checkpointer ckpt(options());
  auto m = model_of(2 * MiB, 111);
  const Metadata md = ckpt.save(m->sd(), root / "c");
  BOOST_TEST(md.state_dict_metadata.size() == 4u);
  BOOST_TEST(md.state_dict_metadata.contains("layer.0.weight"));
  BOOST_TEST(md.state_dict_metadata.contains("step"));
  BOOST_TEST(md.files.size() == 1u);
  auto into = m->blank();
  ckpt.load(into->sd(), root / "c");
  BOOST_TEST((into->contents() == m->contents()));

  const IoReport r = ckpt.report();
  BOOST_TEST(r.registered_buffers);
  if (ringckpt::test::grants_o_direct(root.path())) {
    BOOST_TEST(r.direct_io);
  } else {
    BOOST_TEST(!r.direct_io);
    BOOST_TEST(!r.notes.empty(), "the O_DIRECT fallback is reported");
  }
}

BOOST_AUTO_TEST_CASE(empty_and_blob_only_state_dicts) {
  TempDir root;
  Checkpointer ckpt(options());
  for (StagingMode mode : {StagingMode::snapshot, StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      const fs::path empty = root / ("empty-" + std::string(mode_name(mode)));
      StateDict none;
      ckpt.async_save(none, empty, with_mode(mode)).committed.get();
      StateDict none_back;
      ckpt.load(none_back, empty);
      BOOST_TEST(verify(empty, small_io()).ok());

      const fs::path blob = root / ("blob-" + std::string(mode_name(mode)));
      StateDict b;
      b.add("step", bytes_of(std::uint64_t{77}));
      ckpt.async_save(b, blob, with_mode(mode)).committed.get();
      StateDict b_back;
      b_back.add("step", Bytes{});
      ckpt.load(b_back, blob);
      BOOST_TEST((std::get<Bytes>(*b_back.find("step")) == bytes_of(std::uint64_t{77})));
    }
  }
}

// ------------------------------------------------------------------------
// The planner given in AsyncSaveOptions stages the data: a dtype-converting
// planner (F32 stored as BF16) has resolve_data called from the staging
// threads, once per item, before staged fires.

namespace {

std::uint16_t to_bf16(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<std::uint16_t>(bits >> 16);
}

class Bf16Planner : public DefaultSavePlanner {
 public:
  std::atomic<int> calls{0};
  std::atomic<int> on_caller_thread{0};
  std::thread::id caller = std::this_thread::get_id();

  SavePlan create_local_plan() override {
    SavePlan plan = DefaultSavePlanner::create_local_plan();
    for (WriteItem& w : plan.items) {
      if (w.tensor_data && w.tensor_data->properties.dtype == DType::F32) {
        w.tensor_data->properties.dtype = DType::BF16;
      }
    }
    return plan;
  }
  ItemData resolve_data(const WriteItem& item) override {
    ++calls;
    if (std::this_thread::get_id() == caller) ++on_caller_thread;
    if (!item.tensor_data || item.tensor_data->properties.dtype != DType::BF16) {
      return DefaultSavePlanner::resolve_data(item);
    }
    const StateValue* v = state_dict_->find(item.index.fqn);
    const auto& t = std::get<TensorView>(*v);
    if (t.dtype != DType::F32) return DefaultSavePlanner::resolve_data(item);
    const float* src = static_cast<const float*>(t.data);
    const std::uint64_t n = static_cast<std::uint64_t>(t.numel());
    // Any byte range of the converted tensor, on demand.
    return ItemData::produced(n * 2, [src](std::uint64_t off, std::span<std::byte> out) {
      for (std::size_t i = 0; i < out.size(); ++i) {
        const std::uint64_t b = off + i;
        const std::uint16_t h = to_bf16(src[b / 2]);
        out[i] = static_cast<std::byte>(b % 2 == 0 ? h & 0xff : h >> 8);
      }
    });
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(planner_in_options_resolves_on_staging_threads) {
  TempDir root;
  Checkpointer ckpt(options(StagingMode::lazy, 1 * MiB));
  const std::int64_t n = 300 * 1024 + 5;  // 1.2 MB of F32: more than the ring
  Model m({{"w", DType::F32, {n}}, {"b", DType::BF16, {777}}}, 121, 99);
  std::vector<float> old(static_cast<std::size_t>(n));
  std::memcpy(old.data(), std::get<TensorView>(*m.sd().find("w")).data, old.size() * 4);

  Bf16Planner planner;
  AsyncSaveOptions o;
  o.planner = &planner;
  SaveHandle h = ckpt.async_save(m.sd(), root / "c", o);
  h.staged.get();
  const int calls_at_staged = planner.calls.load();
  m.scribble(122);  // mutations after staged are not seen
  h.committed.get();

  BOOST_TEST(calls_at_staged == 3);  // once per item: w, b and the blob
  BOOST_TEST(planner.calls.load() == 3);
  BOOST_TEST(planner.on_caller_thread.load() == 0, "resolve_data ran on the calling thread");

  const Metadata md = read_metadata(root / "c");
  const auto& tm = std::get<TensorStorageMetadata>(md.state_dict_metadata.at("w"));
  BOOST_TEST((tm.properties.dtype == DType::BF16));
  BOOST_TEST(verify(root / "c", small_io()).ok());

  // Load w as BF16: every element is the truncation of the old F32 value.
  Model into({{"w", DType::BF16, {n}}, {"b", DType::BF16, {777}}}, 0, 99);
  ckpt.load(into.sd(), root / "c");
  const auto* w = static_cast<const std::uint16_t*>(std::get<TensorView>(*into.sd().find("w")).data);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < old.size(); ++i) wrong += w[i] != to_bf16(old[i]);
  BOOST_TEST(wrong == 0u);
}

