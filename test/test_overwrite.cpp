// test_overwrite.cpp — saving over a checkpoint keeps the old one whole until
// the new metadata.json has committed: a save refused at planning, cancelled,
// or failing mid-write leaves the old checkpoint loadable byte-exact and
// nothing of its own behind (a full disk: test_full_disk.cpp); a save that
// commits leaves only its own files; what a killed save left is removed by
// the next save into the directory.
#define BOOST_TEST_MODULE overwrite
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "io/io_fault_injection.hpp"
#include "plan/layout.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace ringckpt;
using namespace ringckpt::test;
using namespace std::chrono_literals;

namespace {

// Disarms the injected fault however the test ends.
struct FaultAfter {
  explicit FaultAfter(std::uint64_t nth) { detail::inject_io_completion_fault(nth); }
  ~FaultAfter() { detail::inject_io_completion_fault(0); }
};

template <class T>
bool within(std::shared_future<T>& f, std::chrono::seconds limit = 60s) {
  return f.wait_for(limit) == std::future_status::ready;
}

AsyncSaveOptions overwrite(StagingMode mode = StagingMode::lazy) {
  AsyncSaveOptions o;
  o.mode = mode;
  o.overwrite = true;
  return o;
}

SaveOptions overwrite_sync() {
  SaveOptions o = save_options();
  o.overwrite = true;
  return o;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(old_checkpoint_survives)

BOOST_AUTO_TEST_CASE(snapshot_that_does_not_fit_the_ring) {
  TempDir root;
  const fs::path dir = root / "c";
  Checkpointer ckpt(options(StagingMode::lazy, 1 * MiB));
  auto old_model = model_of(256 * KiB, 1);
  ckpt.save(old_model->sd(), dir);
  const Saved old(dir, *old_model);

  auto big = model_of(4 * MiB, 2);
  // Refused while planning, in async_save itself (snapshot plans there).
  auto e = error_of([&] { ckpt.async_save(big->sd(), dir, overwrite(StagingMode::snapshot)); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kInvalidArgument), e->what());
  BOOST_TEST(contains(e->what(), "ring"), e->what());
  old.expect_intact(ckpt, *old_model);
}

BOOST_AUTO_TEST_CASE(state_dict_with_a_negative_dimension) {
  TempDir root;
  const fs::path dir = root / "c";
  Checkpointer ckpt(options());
  auto old_model = model_of(256 * KiB, 3);
  ckpt.save(old_model->sd(), dir);
  const Saved old(dir, *old_model);

  std::vector<std::byte> bytes(64);
  StateDict bad;
  bad.add("layer.0.weight", TensorView{bytes.data(), DType::F32, {-4, 4}});
  // Through ringckpt::save ...
  BOOST_CHECK_THROW(save(bad, dir, overwrite_sync()), Error);
  old.expect_intact(ckpt, *old_model);
  // ... and through the Checkpointer, in every mode.
  for (StagingMode mode : {StagingMode::snapshot, StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      auto e = error_of([&] {
        SaveHandle h = ckpt.async_save(bad, dir, overwrite(mode));
        BOOST_TEST_REQUIRE(within(h.committed));
        h.committed.get();
      });
      BOOST_TEST_REQUIRE(e.has_value());
      old.expect_intact(ckpt, *old_model);
    }
  }
}

BOOST_AUTO_TEST_CASE(cancel_mid_save) {
  TempDir root;
  const fs::path dir = root / "c";
  Checkpointer ckpt(options(StagingMode::bounded, 1 * MiB));
  auto old_model = model_of(256 * KiB, 5);
  ckpt.save(old_model->sd(), dir);
  const Saved old(dir, *old_model);

  auto big = model_of(64 * MiB, 6);
  SaveHandle h = ckpt.async_save(big->sd(), dir, overwrite(StagingMode::bounded));
  // Cancel once the new generation's data file exists: mid-save.
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (listing(dir) == old.files && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  const bool writing = listing(dir) != old.files;
  const bool staged_before = ready(h.staged);
  h.cancel();
  BOOST_TEST(writing, "the save never created its data file");
  BOOST_TEST(!staged_before, "64 MiB through a 1 MiB ring staged before cancel could be called?");
  BOOST_TEST_REQUIRE(within(h.committed));
  auto e = error_of([&] { h.committed.get(); });
  BOOST_TEST_REQUIRE(e.has_value());
  BOOST_TEST((e->code() == ErrorCode::kCancelled), e->what());
  old.expect_intact(ckpt, *old_model);
}

BOOST_AUTO_TEST_CASE(write_failing_mid_save) {
  TempDir root;
  const fs::path dir = root / "c";
  Checkpointer ckpt(options(StagingMode::lazy, 1 * MiB));
  auto old_model = model_of(256 * KiB, 7);
  ckpt.save(old_model->sd(), dir);
  const Saved old(dir, *old_model);
  auto big = model_of(4 * MiB, 8);

  {  // Through ringckpt::save: the 5th I/O completion throws.
    FaultAfter fault(5);
    auto e = error_of([&] { save(big->sd(), dir, overwrite_sync()); });
    BOOST_TEST_REQUIRE(e.has_value());
    BOOST_TEST((e->code() == ErrorCode::kIo), e->what());
  }
  old.expect_intact(ckpt, *old_model);

  for (StagingMode mode : {StagingMode::snapshot, StagingMode::bounded, StagingMode::lazy}) {
    BOOST_TEST_CONTEXT("mode " << mode_name(mode)) {
      std::optional<Error> e;
      {
        FaultAfter fault(5);
        // A 4 MiB snapshot does not fit the 1 MiB ring: snapshot saves 512 KiB.
        auto small = model_of(512 * KiB, 9);
        Model& m = mode == StagingMode::snapshot ? *small : *big;
        SaveHandle h = ckpt.async_save(m.sd(), dir, overwrite(mode));
        BOOST_TEST_REQUIRE(within(h.committed));
        e = error_of([&] { h.committed.get(); });
      }
      BOOST_TEST_REQUIRE(e.has_value());
      BOOST_TEST((e->code() == ErrorCode::kIo), e->what());
      old.expect_intact(ckpt, *old_model);
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(committed_overwrite)

BOOST_AUTO_TEST_CASE(leaves_only_the_new_generation) {
  TempDir root;
  const fs::path dir = root / "c";
  Checkpointer ckpt(options());
  auto m = model_of(512 * KiB, 11);
  ckpt.save(m->sd(), dir);
  std::set<std::string> before = listing(dir);

  for (int round = 0; round < 3; ++round) {
    BOOST_TEST_CONTEXT("round " << round) {
      m->scribble(12 + round);
      if (round % 2 == 0) {
        save(m->sd(), dir, overwrite_sync());
      } else {
        SaveHandle h = ckpt.async_save(m->sd(), dir, overwrite());
        BOOST_TEST_REQUIRE(within(h.committed));
        h.committed.get();
      }
      const std::set<std::string> after = listing(dir);
      BOOST_TEST((after == committed_files(dir)), "only metadata.json and its data files");
      for (const std::string& name : before) {
        if (name != kMetadataFile) BOOST_TEST(!after.contains(name), name << " of the old save");
      }
      BOOST_TEST(verify(dir, small_io()).ok());
      BOOST_TEST((load_contents(ckpt, *m, dir) == m->contents()));
      before = after;
    }
  }
}

// Several ranks (threads of one process) share one generation, and the
// coordinator removes the old files of every rank.
BOOST_AUTO_TEST_CASE(of_several_ranks) {
  TempDir root;
  const fs::path dir = root / "c";
  std::vector<std::unique_ptr<Model>> models;
  for (int r = 0; r < 2; ++r) models.push_back(model_of(512 * KiB, 21 + r, "rank" + std::to_string(r) + "."));
  auto run = [&](std::uint64_t seed) {
    ThreadGroup group(2);
    std::vector<std::thread> ranks;
    std::vector<std::string> errors(2);
    for (int r = 0; r < 2; ++r) {
      models[r]->scribble(seed + r);
      ranks.emplace_back([&, r] {
        try {
          SaveOptions o = overwrite_sync();
          o.coordinator = &group.member(r);
          save(models[r]->sd(), dir, o);
        } catch (const std::exception& e) {
          errors[r] = e.what();
        }
      });
    }
    for (auto& t : ranks) t.join();
    BOOST_TEST_REQUIRE(errors[0] == "");
    BOOST_TEST_REQUIRE(errors[1] == "");
  };
  run(22);
  const std::set<std::string> first = listing(dir);
  run(24);
  const std::set<std::string> second = listing(dir);
  BOOST_TEST((second == committed_files(dir)));
  BOOST_TEST(second.size() == 3u, "metadata.json and one data file per rank");
  for (const std::string& name : first) {
    if (name != kMetadataFile) BOOST_TEST(!second.contains(name), name << " of the old save");
  }
  std::set<std::string> generations;
  for (const auto& f : read_metadata(dir).files) {
    generations.insert(f.relative_path.substr(f.relative_path.find('_', 2) + 1, 16));
  }
  BOOST_TEST(generations.size() == 1u, "every rank writes the same generation");
  BOOST_TEST(verify(dir, small_io()).ok());
  Checkpointer ckpt(options());
  for (auto& m : models) BOOST_TEST((load_contents(ckpt, *m, dir) == m->contents()));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(leftovers)

// What a killed save leaves: data files of a generation no metadata.json
// lists and a stale metadata.json.tmp. The next save removes them, and only
// them: not other files, not links (nor what they point to).
BOOST_AUTO_TEST_CASE(are_removed_by_the_next_save) {
  TempDir root;
  const fs::path victim = root / "victim.safetensors";
  spit(victim, "not a checkpoint's file");
  auto m = model_of(256 * KiB, 31);
  Checkpointer ckpt(options());

  for (const bool has_checkpoint : {false, true}) {
    BOOST_TEST_CONTEXT((has_checkpoint ? "over a checkpoint" : "into a fresh directory")) {
      const fs::path dir = root / (has_checkpoint ? "old" : "fresh");
      fs::create_directories(dir);
      if (has_checkpoint) ckpt.save(m->sd(), dir);
      const std::vector<std::string> leftovers = {
          data_file_name("0123456789abcdef", 0, 0), data_file_name("0123456789abcdef", 1, 7),
          "__0_0.safetensors",  // named as before generations existed
      };
      for (const auto& name : leftovers) spit(dir / name, std::string(5000, 'x'));
      spit(dir / "metadata.json.tmp", "{\"stale\": true}");
      const std::vector<std::string> kept = {"notes.txt", "__0_0.safetensors.bak",
                                             "__x_0.safetensors"};
      for (const auto& name : kept) spit(dir / name, "keep me");
      const std::string link = data_file_name("fedcba9876543210");
      fs::create_symlink(victim, dir / link);

      m->scribble(has_checkpoint ? 32 : 33);
      if (has_checkpoint) {
        SaveHandle h = ckpt.async_save(m->sd(), dir, overwrite());
        BOOST_TEST_REQUIRE(within(h.committed));
        h.committed.get();
      } else {
        save(m->sd(), dir, save_options());
      }
      std::set<std::string> expected = committed_files(dir);
      expected.insert(kept.begin(), kept.end());
      expected.insert(link);
      BOOST_TEST((listing(dir) == expected));
      BOOST_TEST(fs::is_symlink(dir / link));
      BOOST_TEST(slurp(victim) == "not a checkpoint's file");
      BOOST_TEST(verify(dir, small_io()).ok());
      BOOST_TEST((load_contents(ckpt, *m, dir) == m->contents()));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
