#define BOOST_TEST_MODULE corruption_data
#include <boost/test/unit_test.hpp>

// Damaged data files — flipped bits in tensor bytes and in the safetensors
// header, files cut short or grown, missing, a forged header length, a fault
// in a rank's second file, a full disk — are caught by both ringckpt::load
// (an Error with the right code, whose what() names the file and the fault)
// and ringckpt::verify (a fault naming the file and extent); no damaged byte
// reaches the caller, and a fresh load of an intact copy still works after
// every failure. Hostile metadata.json is test_corruption_metadata.cpp.

#include <sys/mount.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "format/extent_checksum.hpp"
#include "ringckpt/ringckpt.hpp"
#include "test_util.hpp"

using namespace ringckpt;
using namespace ringckpt::test;
namespace fs = std::filesystem;

// ===========================================================================
// A flipped bit in tensor (or blob) bytes: the extent that holds it fails its
// checksum; load names the file, the extent and the fault and delivers none
// of that extent; verify lists exactly that extent.

BOOST_AUTO_TEST_CASE(flipped_bit_in_item_bytes) {
  PristineCheckpoint c;
  struct Case {
    std::string fqn;
    std::uint64_t byte;  // within the item
  };
  const std::vector<Case> cases = {
      {"enc.weight", 70000},  // extent 1
      {"config", 5},          // a blob
      {"enc.scale", 100},     // first bytes of enc.scale, extent 1
      {"enc.scale", 90000},   // extent 3, shared with dec.ids
      {"dec.ids", 159999},    // the last byte of the file, in the partial tail extent
  };
  int n = 0;
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("bit flipped in " << k.fqn << " byte " << k.byte) {
      const fs::path dir = c.copy("flip" + std::to_string(n));
      const StorageInfo at = c.where(k.fqn);
      const std::uint64_t off = at.offset + k.byte;
      const std::uint64_t extent = off / kSmallIoExtent;
      const std::uint64_t lo = extent * kSmallIoExtent;
      const std::uint64_t hi = std::min(c.file_size(), lo + kSmallIoExtent);
      flip_bit(dir / c.data, off, n % 8);
      ++n;

      ZeroedDestination d(c);
      BOOST_CHECK_EXCEPTION(
          load(d.sd, dir, load_options()), Error,
          error_is(ErrorCode::kCorrupt, {c.data, "extent " + std::to_string(extent) + " ",
                                         "checksum mismatch"}));
      // Not one byte of the bad extent reached the caller.
      for (const std::string fqn : {"enc.weight", "enc.scale", "dec.ids"}) {
        const StorageInfo s = c.where(fqn);
        const std::uint64_t a = std::max(lo, s.offset), b = std::min(hi, s.offset + s.length);
        if (a >= b) continue;
        const auto& t = d.tensor(fqn);
        BOOST_TEST_INFO("destination " << fqn << " bytes " << a - s.offset << ".." << b - s.offset);
        BOOST_TEST(std::all_of(t.storage.begin() + (a - s.offset), t.storage.begin() + (b - s.offset),
                               [](std::byte x) { return x == std::byte{0}; }));
      }
      BOOST_TEST(d.config()->empty());  // blobs are handed over only after every extent passed

      const VerifyReport r = verify_dir(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, c.data));
      BOOST_TEST(r.faults[0].extent == static_cast<std::int64_t>(extent));
      BOOST_TEST(r.faults[0].offset == lo);
      BOOST_TEST(r.faults[0].length == hi - lo);
      BOOST_TEST(contains(r.faults[0].message, "checksum mismatch"));
      BOOST_TEST(r.extents == 6u);
      expect_intact(c);
    }
  }
}

// A flipped bit inside the JSON of the safetensors header. Load reads and
// verifies the header extent whatever it loads, so even a load of a tensor
// that lies far from the header fails, naming the header.
BOOST_AUTO_TEST_CASE(flipped_bit_in_safetensors_header) {
  PristineCheckpoint c;
  for (std::uint64_t byte : {std::uint64_t{20}, std::uint64_t{3}, std::uint64_t{4000}}) {
    BOOST_TEST_CONTEXT("bit flipped in header byte " << byte) {
      const fs::path dir = c.copy("header" + std::to_string(byte));
      flip_bit(dir / c.data, byte, 1);
      const auto fails = error_is(ErrorCode::kCorrupt, {c.data, "extent 0 ",
                                                        "safetensors header", "checksum mismatch"});
      {
        ZeroedDestination d(c);
        BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error, fails);
        // enc.weight starts in extent 0: none of its bytes there were delivered.
        const std::uint64_t in_extent0 = kSmallIoExtent - c.where("enc.weight").offset;
        BOOST_TEST(std::all_of(d.weight.storage.begin(), d.weight.storage.begin() + in_extent0,
                               [](std::byte x) { return x == std::byte{0}; }));
        BOOST_TEST(d.config()->empty());
      }
      {
        BOOST_TEST_REQUIRE(c.where("dec.ids").offset >= kSmallIoExtent);  // far from extent 0
        ZeroedDestination d(c, /*with_all=*/false);
        BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error, fails);
      }
      const VerifyReport r = verify_dir(dir);
      BOOST_TEST(!r.ok());
      // The extent that holds the header fails its checksum, and the header
      // itself no longer parses (or its length prefix is wrong): a whole-file
      // fault that says so.
      BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
        return f.extent == 0 && contains(f.message, "checksum mismatch");
      }));
      BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
        return f.extent == -1 && contains(f.message, "safetensors header");
      }));
      for (const auto& f : r.faults) BOOST_TEST(ends_with(f.file, c.data));
      expect_intact(c);
    }
  }
}

// A data file shorter or longer than metadata.json records.
BOOST_AUTO_TEST_CASE(truncated_or_extended_data_file) {
  PristineCheckpoint c;
  const std::uint64_t size = c.file_size();
  struct Case {
    std::uint64_t new_size;
    std::string fault;
  };
  const std::vector<Case> cases = {
      {size - 1, "truncated"},   {size - 5000, "truncated"}, {size - kSmallIoExtent, "truncated"},
      {100, "truncated"},        {4, "truncated"},           {0, "truncated"},
      {size + 1, "more than"},   {size + kSmallIoExtent, "more than"},
  };
  int n = 0;
  for (const auto& k : cases) {
    BOOST_TEST_CONTEXT("data file of " << k.new_size << " bytes, " << size << " recorded") {
      const fs::path dir = c.copy("size" + std::to_string(n++));
      fs::resize_file(dir / c.data, k.new_size);
      ZeroedDestination d(c);
      BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                            error_is(ErrorCode::kCorrupt, {c.data, k.fault}));
      BOOST_TEST(d.untouched());
      const VerifyReport r = verify_dir(dir);
      BOOST_TEST_REQUIRE(r.faults.size() == 1u);
      BOOST_TEST(ends_with(r.faults[0].file, c.data));
      BOOST_TEST(r.faults[0].extent == -1);
      BOOST_TEST(contains(r.faults[0].message, k.fault));
      expect_intact(c);
    }
  }
}

BOOST_AUTO_TEST_CASE(missing_files) {
  PristineCheckpoint c;
  {
    const fs::path dir = c.copy("no-data");
    fs::remove(dir / c.data);
    ZeroedDestination d(c);
    BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                          error_is(ErrorCode::kNotFound, {c.data, "missing"}));
    BOOST_TEST(d.untouched());
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, c.data));
    BOOST_TEST(contains(r.faults[0].message, "missing"));
    expect_intact(c);
  }
  {
    const fs::path dir = c.copy("no-metadata");
    fs::remove(dir / kMetadataFile);
    ZeroedDestination d(c);
    BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                          error_is(ErrorCode::kNotFound, {"metadata.json"}));
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, "metadata.json"));
    expect_intact(c);
  }
}

// A data file whose 8-byte header length claims 2^60 bytes. With the extent
// checksum fixed up in a forged metadata.json, only the header check can
// catch it: verify reports a clear header fault. Load trusts metadata.json's
// byte ranges and checksums (it does not parse the safetensors header), so it
// either refuses the file or delivers the intact tensor bytes, never garbage.
BOOST_AUTO_TEST_CASE(absurd_header_length) {
  PristineCheckpoint c;
  std::string prefix(8, '\0');
  const std::uint64_t absurd = std::uint64_t{1} << 60;
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((absurd >> (8 * i)) & 0xff);

  {  // Checksum left stale: load catches it by the header extent's checksum.
    const fs::path dir = c.copy("absurd-stale");
    overwrite_at(dir / c.data, 0, prefix);
    ZeroedDestination d(c);
    BOOST_CHECK_EXCEPTION(load(d.sd, dir, load_options()), Error,
                          error_is(ErrorCode::kCorrupt, {c.data, "safetensors header"}));
    const VerifyReport r = verify_dir(dir);
    BOOST_TEST(any_fault(r, [](const VerifyFault& f) {
      return f.extent == -1 && contains(f.message, "length prefix");
    }));
    BOOST_TEST(any_fault(r, [](const VerifyFault& f) { return f.extent == 0; }));
    expect_intact(c);
  }
  {  // Checksum fixed up: only the header check can catch it.
    const fs::path dir = c.copy("absurd-forged");
    overwrite_at(dir / c.data, 0, prefix);
    const std::string data = slurp(dir / c.data);
    const std::uint64_t sum = checksum_of(
        std::as_bytes(std::span<const char>(
            data.data(), std::min<std::size_t>(data.size(), kSmallIoExtent))));
    forge_metadata(dir, [&](Metadata& md) { md.files[0].extent_checksums[0] = sum; });
    BOOST_TEST_REQUIRE(read_metadata(dir).files[0].extent_checksums[0] == sum);

    const VerifyReport r = verify_dir(dir);
    BOOST_TEST_REQUIRE(r.faults.size() == 1u);
    BOOST_TEST(ends_with(r.faults[0].file, c.data));
    BOOST_TEST(r.faults[0].extent == -1);
    BOOST_TEST(contains(r.faults[0].message, "safetensors header"));
    BOOST_TEST(contains(r.faults[0].message, "length prefix"));
    BOOST_TEST(contains(r.faults[0].message, std::to_string(absurd)));

    ZeroedDestination d(c);
    try {
      load(d.sd, dir, load_options());
      BOOST_TEST_MESSAGE("load delivered the (intact) tensor bytes of the forged file");
      BOOST_TEST(d.matches(c));
    } catch (const Error& e) {
      BOOST_TEST_MESSAGE("load refused: " << e.what());
      BOOST_TEST((e.code() == ErrorCode::kCorrupt && contains(e.what(), c.data)));
    }
    expect_intact(c);
  }
}

BOOST_AUTO_TEST_CASE(dtype_mismatch_names_the_key) {
  PristineCheckpoint c;
  OwnedTensor wrong(DType::BF16, {100, 300}, 0);
  std::fill(wrong.storage.begin(), wrong.storage.end(), std::byte{0});
  StateDict sd;
  sd.add("enc.weight", wrong.view);
  DefaultLoadPlanner strict(DefaultLoadPlanner::Options{.strict_dtype = true});  // else a cast
  BOOST_CHECK_EXCEPTION(load(sd, c.pristine, load_options(&strict)), Error, [](const Error& e) {
    BOOST_TEST_MESSAGE(e.what());
    return e.code() == ErrorCode::kMismatch && e.where() == "enc.weight" &&
           contains(e.what(), "F32") && contains(e.what(), "BF16");
  });
  BOOST_TEST(ZeroedDestination::zero(wrong));
  expect_intact(c);
}

// A rank that writes several data files: a fault in the second one names
// that file, not the first.
BOOST_AUTO_TEST_CASE(fault_in_a_second_data_file_names_it) {
  TempDir root;
  std::vector<OwnedTensor> ts;
  for (int i = 0; i < 4; ++i) ts.emplace_back(DType::F32, Shape{100, 100}, 70 + i);
  StateDict sd;
  for (int i = 0; i < 4; ++i) sd.add("t" + std::to_string(i), ts[i].view);
  SaveOptions so = save_options();
  so.io.max_file_bytes = 80000;
  save(sd, root / "ckpt", so);
  const std::string second = data_file(root / "ckpt", 0, 1);
  flip_bit(root / "ckpt" / second, 4096 + 777, 5);

  std::vector<OwnedTensor> back;
  for (const auto& t : ts) back.push_back(t.blank_like());
  StateDict into;
  for (int i = 0; i < 4; ++i) into.add("t" + std::to_string(i), back[i].view);
  BOOST_CHECK_EXCEPTION(load(into, root / "ckpt", load_options()), Error,
                        error_is(ErrorCode::kCorrupt, {second, "extent 0 ",
                                                       "checksum mismatch"}));
  const VerifyReport r = verify_dir(root / "ckpt");
  BOOST_TEST_REQUIRE(r.faults.size() == 1u);
  BOOST_TEST(ends_with(r.faults[0].file, second));
  BOOST_TEST(r.faults[0].extent == 0);
}

// ===========================================================================
// A full disk: a 1 MiB tmpfs. An older checkpoint in a sibling directory on
// the same mount stays loadable; a 4 MiB save fails with kIo naming the data
// file and ENOSPC, commits nothing and leaves nothing behind.

BOOST_AUTO_TEST_CASE(full_disk) {
  TmpfsMount mnt(1 << 20);
  if (!mnt.mounted()) {
    BOOST_TEST_MESSAGE("cannot mount a 1 MiB tmpfs here (" << mnt.error()
                                                           << "): the full-disk case is skipped");
    return;
  }
  const fs::path old_dir = mnt.path() / "step-100";
  const fs::path new_dir = mnt.path() / "step-200";

  OwnedTensor small(DType::F32, {64, 100}, 21);  // 25 KiB
  {
    StateDict sd;
    sd.add("w", small.view);
    sd.add("step", bytes_of(std::int64_t{100}));
    save(sd, old_dir, save_options());
  }
  const std::string old_metadata = slurp(old_dir / kMetadataFile);

  OwnedTensor big(DType::F32, {1024, 1024}, 22);  // 4 MiB: four times the disk
  StateDict sd;
  sd.add("w", big.view);
  sd.add("step", bytes_of(std::int64_t{200}));
  BOOST_CHECK_EXCEPTION(save(sd, new_dir, save_options()), Error,
                        error_is(ErrorCode::kIo, {(new_dir / "__0_").string(), "_0.safetensors",
                                                  std::strerror(ENOSPC)}));
  // Nothing committed, nothing left behind.
  BOOST_TEST(!fs::exists(new_dir / kMetadataFile));
  BOOST_TEST(!fs::exists(new_dir / "metadata.json.tmp"));
  if (fs::exists(new_dir)) {
    for (const auto& e : fs::directory_iterator(new_dir)) {
      BOOST_ERROR("left behind after the failed save: " << e.path());
    }
  }
  // The older checkpoint on the same full disk is untouched and loadable.
  BOOST_TEST(slurp(old_dir / kMetadataFile) == old_metadata);
  OwnedTensor back = small.blank_like();
  StateDict into;
  into.add("w", back.view);
  into.add("step", Bytes{});
  load(into, old_dir, load_options());
  BOOST_TEST((back.storage == small.storage));
  std::int64_t step = 0;
  std::memcpy(&step, std::get<Bytes>(*into.find("step")).data(), sizeof step);
  BOOST_TEST(step == 100);
  BOOST_TEST(verify(old_dir, small_io()).ok());

  // The space the failed save took is free again: a save that fits succeeds.
  StateDict again;
  again.add("w", small.view);
  save(again, new_dir, save_options());
  BOOST_TEST(verify(new_dir, small_io()).ok());
}
