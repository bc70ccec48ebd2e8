#define BOOST_TEST_MODULE hostile_files
#include <boost/test/unit_test.hpp>

// Hostile files in a checkpoint directory: symbolic links planted where a
// save creates its data files, its temporary metadata.json.tmp or
// metadata.json itself are never written through (the file they point to
// stays byte-for-byte as it was); load and verify refuse a data file or
// metadata.json that is a link (even to a faithful copy), a FIFO or a
// directory, with an error naming the file and never a hang; and a
// metadata.json over IoOptions::max_metadata_bytes is refused, naming the
// file and the limit, before it is read. Each save, load and verify opens
// the checkpoint directory once and names its files relative to that handle:
// the path swapped for a link to another directory mid-operation changes
// nothing (the link's target stays as it was), and names that would leave the
// directory are refused.

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <string>
#include <vector>

#include "load/verify_directory.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;

namespace {

// A file outside every checkpoint directory that a planted link points to.
struct Victim {
  fs::path path;
  std::string content;
  Victim(const fs::path& dir, const std::string& name)
      : path(dir / name), content("victim " + name + ": must never change\n") {
    spit(path, content);
  }
  bool untouched() const {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && slurp(path) == content;
  }
};

// The data files metadata.json of `dir` lists (names are not hard-coded: they
// may carry a save generation).
std::vector<std::string> data_file_names(const fs::path& dir) {
  std::vector<std::string> out;
  for (const FileInfo& f : read_metadata(dir).files) out.push_back(f.relative_path);
  BOOST_TEST_REQUIRE(!out.empty());
  return out;
}

// Plants at dir/name, for every name, a symlink to a victim of its own made in
// `outside`; returns the victims.
std::vector<Victim> plant_links(const fs::path& dir, const std::vector<std::string>& names,
                                const fs::path& outside) {
  std::vector<Victim> victims;
  for (const std::string& name : names) {
    victims.emplace_back(outside, "victim-" + name);
    fs::remove(dir / name);
    fs::create_symlink(victims.back().path, dir / name);
  }
  return victims;
}

bool is_link(const fs::path& p) { return fs::is_symlink(fs::symlink_status(p)); }

StateDict state_dict_of(const PristineCheckpoint& c) {
  StateDict sd;
  sd.add("enc.weight", c.weight.view);
  sd.add("config", c.config);
  sd.add("enc.scale", c.scale.view);
  sd.add("dec.ids", c.ids.view);
  return sd;
}

SaveOptions overwrite_options() {
  SaveOptions o = save_options();
  o.overwrite = true;
  return o;
}

// Runs fn on a thread of its own and waits at most 30 s for it. Should it
// block (opening a FIFO for reading waits for a writer), each FIFO is opened
// for writing and closed again, which ends the wait, and the test fails.
void run_bounded(const std::string& what, const std::function<void()>& fn,
                 const std::vector<fs::path>& fifos) {
  auto done = std::async(std::launch::async, fn);
  if (done.wait_for(std::chrono::seconds(30)) == std::future_status::ready) {
    done.get();
    return;
  }
  for (const fs::path& f : fifos) {
    int fd = ::open(f.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
  }
  done.wait();
  BOOST_ERROR(what << " blocked on a FIFO for 30 s");
}

// load of `dir` fails with an Error naming `file` and "not a regular file";
// verify reports a fault naming `file` with the same words. Neither blocks.
void expect_refused(const PristineCheckpoint& c, const fs::path& dir, const fs::path& file,
                    const std::vector<fs::path>& fifos = {}) {
  const std::string name = file.filename().string();
  run_bounded("load", [&] {
    ZeroedDestination d(c);
    BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                          error_is(ErrorCode::kCorrupt, {name, "not a regular file"}));
    BOOST_TEST(d.untouched());
  }, fifos);
  run_bounded("verify", [&] {
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST(!r.ok());
    BOOST_TEST(any_fault(r, [&](const VerifyFault& f) {
      return contains(f.file, name) && contains(f.message, "not a regular file");
    }), faults_text(r));
  }, fifos);
}

}  // namespace

// ===========================================================================
// Saves never write through a planted link.

BOOST_AUTO_TEST_CASE(links_at_data_file_names_are_replaced_not_written_through) {
  PristineCheckpoint c;
  TempDir outside;
  const std::vector<std::string> names = data_file_names(c.pristine);

  // A fresh directory whose data file names (as a save into a fresh directory
  // chooses them) are links to files elsewhere.
  const fs::path fresh = c.root / "fresh";
  fs::create_directories(fresh);
  const std::vector<Victim> victims = plant_links(fresh, names, outside.path());
  save(state_dict_of(c), fresh, save_options());
  for (const Victim& v : victims) BOOST_TEST(v.untouched(), v.path);
  for (const std::string& name : data_file_names(fresh)) BOOST_TEST(!is_link(fresh / name), name);
  BOOST_TEST(verify_dir(fresh).ok());

  // Overwriting a checkpoint whose data files were swapped for links.
  const fs::path again = c.copy("again");
  const std::vector<Victim> victims2 = plant_links(again, data_file_names(again), outside.path());
  save(state_dict_of(c), again, overwrite_options());
  for (const Victim& v : victims2) BOOST_TEST(v.untouched(), v.path);
  for (const std::string& name : data_file_names(again)) BOOST_TEST(!is_link(again / name), name);
  BOOST_TEST(verify_dir(again).ok());
  ZeroedDestination d(c);
  load(d.sd, again, load_options());
  BOOST_TEST(d.matches(c));
}

BOOST_AUTO_TEST_CASE(link_at_metadata_tmp_is_replaced_not_written_through) {
  PristineCheckpoint c;
  TempDir outside;
  for (bool existing : {false, true}) {
    BOOST_TEST_CONTEXT("into " << (existing ? "an existing checkpoint" : "a fresh directory")) {
      const fs::path dir = existing ? c.copy("existing") : c.root / "fresh";
      fs::create_directories(dir);
      Victim victim(outside.path(), existing ? "tmp-existing" : "tmp-fresh");
      fs::create_symlink(victim.path, dir / (std::string(kMetadataFile) + ".tmp"));
      save(state_dict_of(c), dir, existing ? overwrite_options() : save_options());
      BOOST_TEST(victim.untouched());
      BOOST_TEST(!fs::exists(fs::symlink_status(dir / (std::string(kMetadataFile) + ".tmp"))));
      BOOST_TEST(!is_link(dir / kMetadataFile));
      BOOST_TEST(verify_dir(dir).ok());
    }
  }
}

BOOST_AUTO_TEST_CASE(link_at_metadata_json_is_refused_or_replaced) {
  PristineCheckpoint c;
  TempDir outside;
  for (bool overwrite : {false, true}) {
    BOOST_TEST_CONTEXT("overwrite " << overwrite) {
      const fs::path dir = c.root / ("link" + std::to_string(overwrite));
      fs::create_directories(dir);
      Victim victim(outside.path(), "metadata-" + std::to_string(overwrite));
      fs::create_symlink(victim.path, dir / kMetadataFile);
      try {
        save(state_dict_of(c), dir, overwrite ? overwrite_options() : save_options());
        // Saved: the link itself was replaced by the new metadata.json.
        BOOST_TEST(!is_link(dir / kMetadataFile));
        BOOST_TEST(verify_dir(dir).ok());
      } catch (const Error& e) {
        BOOST_TEST_MESSAGE("refused: " << e.what());
        BOOST_TEST(!overwrite);
        BOOST_TEST(contains(e.what(), kMetadataFile));
      }
      BOOST_TEST(victim.untouched());
    }
  }
  // A dangling link: the file it names is never created.
  const fs::path dir = c.root / "dangling";
  fs::create_directories(dir);
  const fs::path nowhere = outside.path() / "never-created";
  fs::create_symlink(nowhere, dir / kMetadataFile);
  save(state_dict_of(c), dir, save_options());
  BOOST_TEST(!fs::exists(fs::symlink_status(nowhere)));
  BOOST_TEST(!is_link(dir / kMetadataFile));
  BOOST_TEST(verify_dir(dir).ok());
}

BOOST_AUTO_TEST_CASE(create_refuses_a_directory_or_fifo_in_the_way) {
  TempDir dir;
  const CheckpointDirectory d = CheckpointDirectory::open(dir.path());
  fs::create_directories(dir / "data.safetensors");
  BOOST_CHECK_EXCEPTION(d.create_file("data.safetensors", false), Error,
                        error_is(ErrorCode::kIo, {"data.safetensors", "a directory"}));
  BOOST_TEST(fs::is_directory(dir / "data.safetensors"));
  BOOST_TEST_REQUIRE(::mkfifo((dir / "metadata.json.tmp").c_str(), 0644) == 0);
  BOOST_CHECK_EXCEPTION(d.write_file_atomically("metadata.json", "{}"), Error,
                        error_is(ErrorCode::kIo, {"metadata.json.tmp", "a FIFO"}));
  BOOST_TEST(fs::is_fifo(fs::symlink_status(dir / "metadata.json.tmp")));
  BOOST_TEST(!fs::exists(fs::symlink_status(dir / "metadata.json")));
}

// ===========================================================================
// Load and verify read only regular files inside the checkpoint directory.

BOOST_AUTO_TEST_CASE(symlinked_metadata_is_refused_even_to_a_faithful_copy) {
  PristineCheckpoint c;
  TempDir outside;
  const fs::path dir = c.copy("linked-metadata");
  fs::rename(dir / kMetadataFile, outside / "metadata.json");
  fs::create_symlink(outside / "metadata.json", dir / kMetadataFile);
  expect_refused(c, dir, dir / kMetadataFile);
  BOOST_CHECK_EXCEPTION(read_metadata(dir), Error,
                        error_is(ErrorCode::kCorrupt, {kMetadataFile, "symlink"}));
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(symlinked_data_file_is_refused_even_to_a_faithful_copy) {
  PristineCheckpoint c;
  TempDir outside;
  const fs::path dir = c.copy("linked-data");
  for (const std::string& name : data_file_names(dir)) {
    fs::rename(dir / name, outside / name);
    fs::create_symlink(outside / name, dir / name);
    expect_refused(c, dir, dir / name);
  }
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(fifo_in_place_of_metadata_or_data_never_blocks) {
  PristineCheckpoint c;
  {
    const fs::path dir = c.copy("fifo-metadata");
    fs::remove(dir / kMetadataFile);
    BOOST_TEST_REQUIRE(::mkfifo((dir / kMetadataFile).c_str(), 0644) == 0);
    expect_refused(c, dir, dir / kMetadataFile, {dir / kMetadataFile});
    run_bounded("read_metadata", [&] {
      BOOST_CHECK_EXCEPTION(read_metadata(dir), Error,
                            error_is(ErrorCode::kCorrupt, {kMetadataFile, "FIFO"}));
    }, {dir / kMetadataFile});
  }
  {
    const fs::path dir = c.copy("fifo-data");
    const std::string name = data_file_names(dir).front();
    fs::remove(dir / name);
    BOOST_TEST_REQUIRE(::mkfifo((dir / name).c_str(), 0644) == 0);
    expect_refused(c, dir, dir / name, {dir / name});
  }
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(directory_in_place_of_metadata_or_data_is_refused) {
  PristineCheckpoint c;
  {
    const fs::path dir = c.copy("dir-metadata");
    fs::remove(dir / kMetadataFile);
    fs::create_directories(dir / kMetadataFile);
    expect_refused(c, dir, dir / kMetadataFile);
  }
  {
    const fs::path dir = c.copy("dir-data");
    const std::string name = data_file_names(dir).front();
    fs::remove(dir / name);
    fs::create_directories(dir / name);
    expect_refused(c, dir, dir / name);
  }
}

BOOST_AUTO_TEST_CASE(dev_zero_behind_a_link_is_refused) {
  PristineCheckpoint c;
  {
    const fs::path dir = c.copy("zero-metadata");
    fs::remove(dir / kMetadataFile);
    fs::create_symlink("/dev/zero", dir / kMetadataFile);
    expect_refused(c, dir, dir / kMetadataFile);
  }
  {
    const fs::path dir = c.copy("zero-data");
    const std::string name = data_file_names(dir).front();
    fs::remove(dir / name);
    fs::create_symlink("/dev/zero", dir / name);
    expect_refused(c, dir, dir / name);
  }
}

// ===========================================================================
// The directory is opened once: swapping its path for a link mid-operation
// neither writes into nor reads from the link's target.

namespace {

// Every entry of dir (not recursive): name -> its content, or its type where
// it is not a regular file. Equal snapshots: the directory is unchanged.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const fs::file_status st = fs::symlink_status(e.path());
    out[e.path().filename().string()] =
        st.type() == fs::file_type::regular
            ? "file: " + slurp(e.path())
            : "type " + std::to_string(static_cast<int>(st.type()));
  }
  return out;
}

// Moves dir to `moved` and leaves at dir a symbolic link to `target`.
void swap_for_link(const fs::path& dir, const fs::path& moved, const fs::path& target) {
  fs::rename(dir, moved);
  fs::create_symlink(target, dir);
}

// Planners that run `hook` once, as the local plan is made: by then the save's
// writer (the load's reader) has opened the checkpoint directory, and no data
// file is created (read) yet.
class HookedSavePlanner final : public DefaultSavePlanner {
 public:
  std::function<void()> hook;
  SavePlan create_local_plan() override {
    if (hook) std::exchange(hook, nullptr)();
    return DefaultSavePlanner::create_local_plan();
  }
};

class HookedLoadPlanner final : public DefaultLoadPlanner {
 public:
  std::function<void()> hook;
  LoadPlan create_local_plan() override {
    if (hook) std::exchange(hook, nullptr)();
    return DefaultLoadPlanner::create_local_plan();
  }
};

// The target of a link swapped in: the same checkpoint (same file names) with
// a byte of every item flipped, so that reading any of it fails its XXH3 check.
fs::path make_decoy(const PristineCheckpoint& c) {
  const fs::path decoy = c.copy("decoy");
  std::fstream f(decoy / c.data, std::ios::in | std::ios::out | std::ios::binary);
  for (const char* fqn : {"enc.weight", "config", "enc.scale", "dec.ids"}) {
    f.seekp(static_cast<std::streamoff>(c.where(fqn).offset));
    f.put('\x5a');
  }
  BOOST_TEST_REQUIRE(f.good());
  return decoy;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_save_whose_directory_is_swapped_for_a_link_writes_only_where_it_opened) {
  PristineCheckpoint c;
  const std::vector<std::string> variants = {"save into a fresh directory", "save overwriting",
                                             "Checkpointer lazy save"};
  for (std::size_t v = 0; v < variants.size(); ++v) {
    BOOST_TEST_CONTEXT(variants[v]) {
      const std::string n = std::to_string(v);
      // The link's target holds a whole checkpoint: a save through the link
      // would replace its metadata.json and remove its data file.
      const fs::path victim = c.copy("victim" + n);
      const auto before = snapshot(victim);
      const fs::path dir = v == 1 ? c.copy("swap" + n) : c.root / ("swap" + n);
      fs::create_directories(dir);
      const fs::path moved = c.root / ("moved" + n);
      HookedSavePlanner planner;
      planner.hook = [&] { swap_for_link(dir, moved, victim); };
      if (v == 2) {
        Checkpointer ckpt{CheckpointerOptions{small_io()}};
        AsyncSaveOptions o;
        o.mode = StagingMode::lazy;
        o.planner = &planner;
        ckpt.save(state_dict_of(c), dir, o);
      } else {
        SaveOptions o = save_options(&planner);
        o.overwrite = v == 1;
        save(state_dict_of(c), dir, o);
      }
      BOOST_TEST_REQUIRE(!planner.hook);  // it ran
      BOOST_TEST(is_link(dir));
      BOOST_TEST((snapshot(victim) == before));
      // The checkpoint is whole in the directory the save opened, and an
      // overwritten one's old data file is gone from there.
      BOOST_TEST(verify_dir(moved).ok());
      const std::vector<std::string> names = data_file_names(moved);
      BOOST_TEST(snapshot(moved).size() == names.size() + 1);  // + metadata.json
      ZeroedDestination d(c);
      load(d.sd, moved, load_options());
      BOOST_TEST(d.matches(c));
    }
  }
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(a_load_whose_directory_is_swapped_for_a_link_reads_what_it_opened) {
  PristineCheckpoint c;
  const fs::path decoy = make_decoy(c);
  const auto before = snapshot(decoy);
  for (bool checkpointer : {false, true}) {
    BOOST_TEST_CONTEXT((checkpointer ? "Checkpointer::load" : "ringckpt::load")) {
      const std::string n = std::to_string(checkpointer);
      const fs::path dir = c.copy("load-swap" + n);
      HookedLoadPlanner planner;
      planner.hook = [&] { swap_for_link(dir, c.root / ("load-moved" + n), decoy); };
      ZeroedDestination d(c);
      if (checkpointer) {
        Checkpointer ckpt{CheckpointerOptions{small_io()}};
        ckpt.load(d.sd, dir, &planner);
      } else {
        load(d.sd, dir, load_options(&planner));
      }
      BOOST_TEST_REQUIRE(!planner.hook);
      BOOST_TEST(is_link(dir));
      BOOST_TEST(d.matches(c));
      // A load that starts now opens the decoy, and its flipped bytes are caught.
      ZeroedDestination d2(c);
      BOOST_CHECK_EXCEPTION(load(d2.sd, dir, load_options()), Error,
                            error_is(ErrorCode::kCorrupt, {c.data}));
      BOOST_TEST(!verify_dir(dir).ok());
    }
  }
  BOOST_TEST((snapshot(decoy) == before));
  expect_intact(c);
}

// verify has no hook between opening the directory and reading its files, so
// the handle it would open is opened here and the path swapped before the
// verify of that handle (what ringckpt::verify runs once it has opened it).
BOOST_AUTO_TEST_CASE(a_verify_whose_directory_is_swapped_for_a_link_reads_what_it_opened) {
  PristineCheckpoint c;
  const fs::path decoy = make_decoy(c);
  const auto before = snapshot(decoy);
  const fs::path dir = c.copy("verify-swap");
  const CheckpointDirectory handle = CheckpointDirectory::open(dir);
  swap_for_link(dir, c.root / "verify-moved", decoy);
  const VerifyReport r = detail::verify_directory(handle, small_io(), {});
  BOOST_TEST(r.ok(), faults_text(r));
  BOOST_TEST(r.files == 1u);
  BOOST_TEST(r.extents == c.md.files[0].extent_checksums.size());
  // A verify that starts now opens the decoy, and finds its flipped bytes.
  const VerifyReport through_link = verify_dir(dir);
  BOOST_TEST(!through_link.ok());
  BOOST_TEST(any_fault(through_link, [&](const VerifyFault& f) {
    return contains(f.file, c.data) && contains(f.message, "checksum");
  }), faults_text(through_link));
  BOOST_TEST((snapshot(decoy) == before));
}

BOOST_AUTO_TEST_CASE(a_link_the_user_names_as_the_directory_is_followed) {
  PristineCheckpoint c;
  const fs::path real = c.root / "real";
  fs::create_directories(real);
  const fs::path link = c.root / "via-link";
  fs::create_symlink(real, link);
  save(state_dict_of(c), link, save_options());
  BOOST_TEST(is_link(link));
  BOOST_TEST(fs::is_regular_file(fs::symlink_status(real / kMetadataFile)));
  BOOST_TEST(verify_dir(link).ok());
  ZeroedDestination d(c);
  load(d.sd, link, load_options());
  BOOST_TEST(d.matches(c));
}

BOOST_AUTO_TEST_CASE(names_that_leave_the_directory_are_refused) {
  TempDir dir;
  fs::create_directories(dir / "sub");
  spit(dir / "sub" / "f", "in sub");
  spit(dir / "outside", "outside sub");
  const CheckpointDirectory d = CheckpointDirectory::open(dir / "sub");
  const auto refused = error_is(ErrorCode::kInvalidArgument, {"not a plain file name"});
  for (const std::string bad : {"../outside", "/etc/passwd", "..", ".", "", "a/b"}) {
    BOOST_TEST_CONTEXT("name " << bad) {
      BOOST_CHECK_EXCEPTION(d.read_small_file(bad), Error, refused);
      BOOST_CHECK_EXCEPTION(d.open_read(bad, false), Error, refused);
      BOOST_CHECK_EXCEPTION(d.stat(bad), Error, refused);
      BOOST_CHECK_EXCEPTION(d.create_file(bad, false), Error, refused);
      BOOST_CHECK_EXCEPTION(d.write_file_atomically(bad, "x"), Error, refused);
      BOOST_CHECK_EXCEPTION(d.rename("f", bad), Error, refused);
      BOOST_TEST(!d.remove(bad));
    }
  }
  BOOST_TEST(slurp(dir / "outside") == "outside sub");
  BOOST_TEST(slurp(dir / "sub" / "f") == "in sub");
  std::vector<std::string> names = d.list();
  BOOST_TEST(names == std::vector<std::string>{"f"}, boost::test_tools::per_element());
}

// ===========================================================================
// Bounded reads of metadata.json.

BOOST_AUTO_TEST_CASE(metadata_over_the_limit_is_refused_naming_file_and_limit) {
  PristineCheckpoint c;
  const std::uint64_t size = fs::file_size(c.pristine / kMetadataFile);
  // A limit just below the file's size, through IoOptions.
  LoadOptions lo = load_options();
  lo.io.max_metadata_bytes = size - 1;
  ZeroedDestination d(c);
  BOOST_CHECK_EXCEPTION(
      load(d.sd, c.pristine, lo), Error,
      error_is(ErrorCode::kCorrupt, {kMetadataFile, "exceeds the limit of " + std::to_string(size - 1),
                                     "max_metadata_bytes"}));
  BOOST_TEST(d.untouched());
  IoOptions io = small_io();
  io.max_metadata_bytes = size - 1;
  const VerifyReport r = verify(c.pristine, io);
  BOOST_TEST(any_fault(r, [&](const VerifyFault& f) {
    return contains(f.file, kMetadataFile) && contains(f.message, "exceeds the limit");
  }), faults_text(r));
  // At exactly its size the same metadata.json is read.
  io.max_metadata_bytes = size;
  BOOST_TEST(verify(c.pristine, io).ok());

  // A sparse metadata.json past the default 1 GiB is refused from its size,
  // at once, without allocating it.
  const fs::path dir = c.copy("huge");
  BOOST_TEST_REQUIRE(::truncate((dir / kMetadataFile).c_str(),
                                static_cast<off_t>(kDefaultMaxMetadataBytes + 1)) == 0);
  const auto start = std::chrono::steady_clock::now();
  BOOST_CHECK_EXCEPTION(
      read_metadata(dir), Error,
      error_is(ErrorCode::kCorrupt,
               {kMetadataFile, "exceeds the limit of " + std::to_string(kDefaultMaxMetadataBytes)}));
  const bool quick = std::chrono::steady_clock::now() - start < std::chrono::seconds(5);
  BOOST_TEST(quick);
  ZeroedDestination d2(c);
  BOOST_CHECK_EXCEPTION(load(d2.sd, dir, load_options()), Error,
                        error_is(ErrorCode::kCorrupt, {kMetadataFile, "exceeds the limit"}));
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(read_small_file_holds_its_limit) {
  TempDir dir;
  spit(dir / "f", std::string(100, 'x'));
  const CheckpointDirectory d = CheckpointDirectory::open(dir.path());
  BOOST_TEST(d.read_small_file("f", 100).size() == 100u);
  BOOST_CHECK_EXCEPTION(d.read_small_file("f", 99), Error,
                        error_is(ErrorCode::kCorrupt, {"f", "100 bytes exceeds the limit of 99"}));
}

// Out of memory while reading metadata.json (within the size limit) is an
// Error naming the file, not a bare std::bad_alloc. In a forked child whose
// address space is capped (sanitizers reserve vast shadow memory, so not
// under them).
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
BOOST_AUTO_TEST_CASE(out_of_memory_reading_metadata_names_the_file) {
  TempDir dir;
  const fs::path md = dir / kMetadataFile;
  spit(md, "");
  BOOST_TEST_REQUIRE(::truncate(md.c_str(), static_cast<off_t>(kDefaultMaxMetadataBytes)) == 0);
  std::uint64_t pages = 0;
  std::ifstream("/proc/self/statm") >> pages;
  BOOST_TEST_REQUIRE(pages > 0u);
  const rlim_t cap = pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)) + (256u << 20);
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    const rlimit lim{cap, cap};
    if (::setrlimit(RLIMIT_AS, &lim) != 0) ::_exit(3);
    try {
      read_metadata(dir.path());
      ::_exit(4);
    } catch (const Error& e) {
      const bool named = e.code() == ErrorCode::kIo && e.where() == md.string() &&
                         contains(e.message(), "out of memory");
      ::_exit(named ? 0 : 1);
    } catch (...) {
      ::_exit(2);
    }
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      BOOST_FAIL("the child reading metadata.json did not finish in 60 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  BOOST_TEST_REQUIRE(WIFEXITED(status));
  // 0: Error(kIo, metadata.json, "out of memory ..."); 1: another Error;
  // 2: another exception; 3: setrlimit refused; 4: no error at all.
  BOOST_TEST(WEXITSTATUS(status) == 0);
}
#endif
