#define BOOST_TEST_MODULE verify_checks
#include <boost/test/unit_test.hpp>

// verify checks everything load relies on and never throws: the safetensors
// header of a data file is compared with metadata.json name by name (byte
// range, dtype, shape; extra and missing entries), so a re-sealed header that
// renames, relabels or reshapes a tensor is reported naming the tensor; a data
// file that is a FIFO, directory, device or symbolic link is a fault, never a
// block or an exception. Both load and verify refuse metadata.json whose
// storage entries share bytes of a file (one check, in check_metadata).

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <span>
#include <string>
#include <vector>

#include "format/extent_checksum.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;

namespace {

// Rewrites the safetensors header of `dir`'s data file after `edit` (its
// padded length unchanged), then re-seals metadata.json's checksum of extent
// 0, which holds the header: only the header comparison can tell.
void reseal_header(const fs::path& dir,
                   const std::function<void(std::vector<SafetensorsEntry>&)>& edit) {
  const fs::path file = dir / first_data_file(dir);
  SafetensorsHeader h = read_header(file);
  edit(h.entries);
  const std::string bytes = encode_safetensors_header(h.entries, h.metadata);
  BOOST_TEST_REQUIRE(bytes.size() == h.data_start);
  overwrite_at(file, 0, bytes);
  const std::string data = slurp(file);
  const std::uint64_t sum = checksum_of(std::as_bytes(
      std::span<const char>(data.data(), std::min<std::size_t>(data.size(), kSmallIoExtent))));
  forge_metadata(dir, [&](Metadata& md) { md.files[0].extent_checksums[0] = sum; });
}

SafetensorsEntry& entry(std::vector<SafetensorsEntry>& entries, const std::string& name) {
  for (auto& e : entries) {
    if (e.name == name) return e;
  }
  BOOST_FAIL("no header entry " << name);
  return entries.front();
}

// verify, on another thread: aborts the run if it blocks (a FIFO opened for
// reading waits for a writer forever) and fails the test if it throws.
VerifyReport verify_within(const fs::path& dir,
                           std::chrono::seconds limit = std::chrono::seconds(60)) {
  auto done = std::async(std::launch::async, [dir] { return verify_dir(dir); });
  if (done.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "verify(%s) did not return within %llds: blocked\n", dir.c_str(),
                 static_cast<long long>(limit.count()));
    std::abort();
  }
  try {
    return done.get();
  } catch (const std::exception& e) {
    BOOST_ERROR("verify threw " << e.what());
  } catch (...) {
    BOOST_ERROR("verify threw something");
  }
  return {};
}

bool only_fault_in(const VerifyReport& r, const std::string& file) {
  return std::all_of(r.faults.begin(), r.faults.end(),
                     [&](const VerifyFault& f) { return ends_with(f.file, file); });
}

}  // namespace

// ===========================================================================
// Re-sealed headers.

// Re-sealing an unchanged header is invisible: the faults below come from
// the comparison, not from the re-sealing.
BOOST_AUTO_TEST_CASE(resealed_unchanged_header_verifies) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("same");
  reseal_header(dir, [](std::vector<SafetensorsEntry>&) {});
  BOOST_TEST(verify_within(dir).ok());
}

BOOST_AUTO_TEST_CASE(resealed_header_with_a_renamed_tensor) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("renamed");
  reseal_header(dir, [](auto& entries) { entry(entries, "enc.scale").name = "enc.scalf"; });
  const VerifyReport r = verify_within(dir);
  BOOST_TEST(r.faults.size() == 2u);
  BOOST_TEST(only_fault_in(r, c.data));
  BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
    return f.extent == -1 && contains(f.message, "tensor 'enc.scale' is missing") &&
           contains(f.message, "metadata.json places it");
  }));
  BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
    return contains(f.message, "tensor 'enc.scalf' is not in metadata.json");
  }));
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(resealed_header_with_a_relabelled_dtype) {
  PristineCheckpoint c;
  {
    const fs::path dir = c.copy("dtype");
    reseal_header(dir, [](auto& entries) { entry(entries, "enc.scale").dtype = DType::F16; });
    const VerifyReport r = verify_within(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, c.data));
    const std::string& m = r.faults[0].message;
    BOOST_TEST(contains(m, "'enc.scale' has dtype F16, but metadata.json says BF16"));
    BOOST_TEST(r.faults[0].offset == c.where("enc.scale").offset);
  }
  {  // A blob is written as U8 bytes; I8 is a relabelling too.
    const fs::path dir = c.copy("blob-dtype");
    reseal_header(dir, [](auto& entries) { entry(entries, "config").dtype = DType::I8; });
    const VerifyReport r = verify_within(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(contains(r.faults[0].message, "'config' has dtype I8, but metadata.json says U8"));
  }
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(resealed_header_with_a_transposed_shape) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("shape");
  reseal_header(dir, [](auto& entries) { entry(entries, "enc.weight").shape = {300, 100}; });
  const VerifyReport r = verify_within(dir);
  BOOST_TEST_REQUIRE(r.faults.size() == 1u);
  BOOST_TEST(ends_with(r.faults[0].file, c.data));
  BOOST_TEST(contains(r.faults[0].message,
                      "'enc.weight' has shape [300,100], but metadata.json says [100,300]"));
  expect_intact(c);
}

// Two tensors of one dtype and shape whose names are swapped: each lies
// where metadata.json places the other.
BOOST_AUTO_TEST_CASE(resealed_header_with_swapped_names) {
  TempDir dir;
  OwnedTensor a(DType::F32, {8, 8}, 1), b(DType::F32, {8, 8}, 2);
  StateDict sd;
  sd.add("a", a.view);
  sd.add("b", b.view);
  save(sd, dir / "ck", save_options());
  BOOST_TEST_REQUIRE(verify_within(dir / "ck").ok());
  reseal_header(dir / "ck", [](auto& entries) {
    entry(entries, "a").name = "tmp";
    entry(entries, "b").name = "a";
    entry(entries, "tmp").name = "b";
  });
  const VerifyReport r = verify_within(dir / "ck");
  BOOST_TEST(r.faults.size() == 2u);
  BOOST_TEST(only_fault_in(r, first_data_file(dir / "ck")));
  for (const std::string name : {"a", "b"}) {
    BOOST_TEST(any_fault(r, [&](const VerifyFault& f) {
      return contains(f.message, "tensor '" + name + "' lies at bytes [") &&
             contains(f.message, "but metadata.json places it at [");
    }));
  }
}

// An entry of no bytes that metadata.json does not know, and several faults
// at once: each is listed.
BOOST_AUTO_TEST_CASE(resealed_header_with_an_extra_entry_and_several_faults) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("extra");
  reseal_header(dir, [](auto& entries) {
    entries.push_back({"ghost", DType::U8, {0}, 0, 0});
    entry(entries, "dec.ids").dtype = DType::F32;
    entry(entries, "enc.weight").shape = {30000};
  });
  const VerifyReport r = verify_within(dir);
  BOOST_TEST(r.faults.size() == 3u);
  BOOST_TEST(only_fault_in(r, c.data));
  for (const std::string needle :
       {"'ghost' is not in", "'dec.ids' has dtype F32", "'enc.weight' has shape [30000]"}) {
    BOOST_TEST(any_fault(r, [&](const VerifyFault& f) { return contains(f.message, needle); }),
               "a fault holds " << needle);
  }
}

// Shards are named fqn@offsets in the header; a tensor saved whole by its
// fqn. verify matches both (a single shard covering its tensor included).
BOOST_AUTO_TEST_CASE(sharded_checkpoint_headers_verify) {
  TempDir dir;
  OwnedTensor top(DType::F32, {4, 6}, 1), bottom(DType::F32, {2, 6}, 2), whole(DType::I64, {5}, 3);
  OwnedTensor plain(DType::BF16, {3, 3}, 4), empty(DType::F32, {0, 4}, 5);
  StateDict sd;
  sd.add("w", ShardedTensor{DType::F32, {6, 6}, {{top.view, {0, 0}}, {bottom.view, {4, 0}}}});
  sd.add("v", ShardedTensor{DType::I64, {5}, {{whole.view, {0}}}});
  sd.add("plain", plain.view);
  sd.add("empty", empty.view);  // no bytes, at the offset of the item after it
  sd.add("step", bytes_of(std::string_view("12345")));
  save(sd, dir / "ck", save_options());
  std::vector<std::string> names;
  const fs::path ck = dir / "ck";
  for (const auto& e : read_header(ck / first_data_file(ck)).entries) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  const std::vector<std::string> expected = {"empty", "plain", "step", "v@0", "w@0,0", "w@4,0"};
  BOOST_TEST(names == expected, boost::test_tools::per_element());
  BOOST_TEST(verify_within(dir / "ck").ok());
}

// ===========================================================================
// Data files and metadata.json that are not regular files: faults naming the
// file, never an exception, never a block.

BOOST_AUTO_TEST_CASE(data_file_not_a_regular_file) {
  PristineCheckpoint c;
  struct Case {
    std::string name, kind;
    std::function<bool(const fs::path&)> make;  // false: not possible here
  };
  const std::vector<Case> cases = {
      {"fifo", "a FIFO", [](const fs::path& p) { return ::mkfifo(p.c_str(), 0644) == 0; }},
      {"directory", "a directory", [](const fs::path& p) { return fs::create_directory(p); }},
      {"symlink", "a symbolic link",
       [&](const fs::path& p) {  // to an intact copy outside the checkpoint
         fs::copy_file(c.pristine / c.data, c.root / "outside.safetensors",
                       fs::copy_options::overwrite_existing);
         fs::create_symlink(c.root / "outside.safetensors", p);
         return true;
       }},
      {"dangling", "a symbolic link",
       [&](const fs::path& p) {
         fs::create_symlink(c.root / "nowhere", p);
         return true;
       }},
      {"device", "a character device",
       [](const fs::path& p) {  // /dev/zero's numbers
         return ::mknod(p.c_str(), S_IFCHR | 0644, makedev(1, 5)) == 0;
       }},
  };
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("data file replaced by " << k.name) {
      const fs::path dir = c.copy("not-regular-" + k.name);
      fs::remove(dir / c.data);
      if (!k.make(dir / c.data)) {
        BOOST_TEST_MESSAGE("cannot make " << k.name << " here (" << std::strerror(errno)
                                          << "): skipped");
        continue;
      }
      const VerifyReport r = verify_within(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, c.data));
      BOOST_TEST(contains(r.faults[0].message, "is " + k.kind + ", not a regular file"));
      BOOST_TEST(r.files == 1u);
    }
  }
  expect_intact(c);
}

BOOST_AUTO_TEST_CASE(metadata_json_a_directory) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("metadata-dir");
  fs::remove(dir / kMetadataFile);
  fs::create_directory(dir / kMetadataFile);
  const VerifyReport r = verify_within(dir);
  BOOST_TEST_REQUIRE(r.faults.size() == 1u);
  BOOST_TEST(contains(r.faults[0].file, kMetadataFile));
}

// ===========================================================================
// Storage entries that share bytes: refused by load and by verify, naming
// both entries, the bytes and the file (the checksums are intact: only this
// check can tell).

BOOST_AUTO_TEST_CASE(overlapping_storage_entries_are_refused) {
  PristineCheckpoint c;
  const StorageInfo weight = c.where("enc.weight");
  struct Case {
    std::string name, fqn;
    std::uint64_t offset;  // the new offset of fqn's entry
    std::string message;
  };
  const std::uint64_t last10 = weight.offset + weight.length - 10;
  const std::vector<Case> cases = {
      {"same-start", "enc.scale", weight.offset,
       "storage entries 'enc.scale' chunk at [0,0] and 'enc.weight' chunk at [0,0] share bytes " +
           std::to_string(weight.offset) + ".." + std::to_string(weight.offset + 102800 - 1) +
           " of " + c.data},
      {"blob-tail", "config", last10,
       "storage entries 'enc.weight' chunk at [0,0] and 'config' share bytes " +
           std::to_string(last10) + ".." + std::to_string(last10 + 9) + " of " + c.data},
  };
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT(k.name) {
      const fs::path dir = c.copy("overlap-" + k.name);
      forge_metadata(dir, [&](Metadata& md) {
        for (auto& [index, info] : md.storage_data) {
          if (index.fqn == k.fqn) info.offset = k.offset;
        }
      });
      ZeroedDestination d(c);
      BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                            error_is(ErrorCode::kCorrupt, {kMetadataFile, k.message}));
      BOOST_TEST(d.untouched());
      const VerifyReport r = verify_within(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, kMetadataFile));
      BOOST_TEST(contains(r.faults[0].message, k.message));
    }
  }
  expect_intact(c);
}

// Leftovers of killed saves — a data file metadata.json does not list and a
// stale metadata.json.tmp — are notes naming them, not faults.
BOOST_AUTO_TEST_CASE(leftovers_are_notes_not_faults) {
  PristineCheckpoint c;
  const fs::path dir = c.copy("leftovers");
  {
    const VerifyReport r = verify_within(dir);
    BOOST_TEST(r.ok());
    BOOST_TEST(r.notes.empty());
  }
  const std::string leftover = "__0_0123456789abcdef_0.safetensors";
  spit(dir / leftover, "half a data file");
  spit(dir / (std::string(kMetadataFile) + ".tmp"), "{\"half\": ");
  spit(dir / "notes.txt", "not a data file: no note");
  const VerifyReport r = verify_within(dir);
  BOOST_TEST(r.ok(), faults_text(r));
  BOOST_TEST(r.files == 1u);
  BOOST_TEST_REQUIRE(r.notes.size() == 2u);
  BOOST_TEST(contains(r.notes[0], leftover), r.notes[0]);
  BOOST_TEST(contains(r.notes[0], "does not list"), r.notes[0]);
  BOOST_TEST(contains(r.notes[1], std::string(kMetadataFile) + ".tmp"), r.notes[1]);
  BOOST_TEST(contains(r.notes[1], "stale"), r.notes[1]);
}

// A header wrong everywhere: the first 16 faults are listed, then a count of
// the rest (a hostile header of millions of entries makes a bounded report).
BOOST_AUTO_TEST_CASE(many_header_faults_are_counted) {
  TempDir dir;
  std::vector<OwnedTensor> tensors;
  tensors.reserve(20);
  StateDict sd;
  for (int i = 0; i < 20; ++i) {
    tensors.emplace_back(DType::F32, Shape{4}, i);
    sd.add("t" + std::to_string(i), tensors.back().view);
  }
  save(sd, dir / "ck", save_options());
  reseal_header(dir / "ck", [](auto& entries) {
    for (auto& e : entries) e.dtype = DType::I32;
  });
  const VerifyReport r = verify_within(dir / "ck");
  BOOST_TEST_REQUIRE(r.faults.size() == 17u);
  BOOST_TEST(contains(r.faults.back().message, "safetensors header: 4 more faults"));
  for (std::size_t i = 0; i < 16; ++i) BOOST_TEST(contains(r.faults[i].message, "has dtype I32"));
}
