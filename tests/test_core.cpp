// core/: checks and their messages, device/threads/seeding, progress, the HDF5 layer, the
// file readers (npy, IDX).
#include <catch2/catch.hpp>

#include <fstream>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "nfkit/core/checks.h"
#include "nfkit/core/files.h"
#include "nfkit/core/h5.h"
#include "nfkit/core/idx.h"
#include "nfkit/core/npy.h"
#include "nfkit/core/progress.h"
#include "nfkit/core/runtime.h"

using namespace nfkit;
using namespace nfkit::test;


TEST_CASE("checks throw one-line messages naming function, argument, value and expectation", "[core]") {
  auto w = torch::zeros({20}, torch::kFloat64);
  w[17] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(check_finite("ess", "log_weights", w), RuntimeError);
  CHECK_THROWS_WITH(check_finite("ess", "log_weights", w), "ess: log_weights[17] is nan, but must be finite");
  CHECK_NOTHROW(check_finite("ess", "log_weights", torch::ones({3})));
  CHECK_THROWS_AS(check_positive("StandardNormal", "temperature", 0.0), UsageError);
  CHECK_THROWS_WITH(check_positive("f", "sigma", -2.0), "f: sigma is -2, but must be positive and finite");
  CHECK_THROWS_WITH(check_in_range("f", "T", 1.5, 0.0, 1.0, true), "f: T is 1.5, but must be in (0, 1]");
  CHECK_THROWS_WITH(check_dim("f", "x", torch::zeros({2, 3, 4}), 2), "f: x has shape [2, 3, 4], but must have 2 dimensions");
  CHECK_THROWS_WITH(check_dtype("f", "x", torch::zeros({2}, torch::kInt64), torch::kFloat64),
                    Catch::Contains("has dtype Long, but must be Double"));
  // Usage and runtime errors are distinct types with distinct exit codes.
  try {
    usage_error("f", "bad");
  } catch (const Error& e) {
    CHECK(e.exit_code() == 2);
  }
  try {
    runtime_error("f", "bad");
  } catch (const Error& e) {
    CHECK(e.exit_code() == 1);
  }
  // Internal invariants say "bug".
  CHECK_THROWS_WITH([] { NFKIT_ASSERT(1 == 2, "impossible"); }(), Catch::Contains("bug"));
}

TEST_CASE("device parsing, threads and seeding", "[core]") {
  CHECK(parse_device("cpu") == c10::Device(c10::kCPU));
  CHECK_THROWS_WITH(parse_device("gpu"), Catch::Contains("expected cpu, cuda or cuda:N"));
  CHECK_THROWS_AS(parse_device("cpu:1"), UsageError);
  if (!torch::cuda::is_available()) {
    CHECK_THROWS_WITH(parse_device("cuda"), Catch::Contains("CUDA is not available"));
    CHECK_THROWS_AS(parse_device("cuda:1"), UsageError);
  }
  const int before = torch::get_num_threads();
  CHECK(set_threads(1) == 1);
  CHECK(torch::get_num_threads() == 1);
  CHECK(set_threads(0) == hardware_threads());
  set_threads(before);
  seed_all(42);
  auto a = torch::randn({5});
  seed_all(42);
  CHECK(torch::equal(a, torch::randn({5})));
  CHECK(derive_seed(1, 2, 3) == derive_seed(1, 2, 3));
  CHECK(derive_seed(1, 2, 3) != derive_seed(1, 2, 4));
  CHECK(derive_seed(1, 2, 3) != derive_seed(2, 2, 3));
  CHECK(static_cast<int64_t>(derive_seed(99, 1, 1)) >= 0);
}

TEST_CASE("progress: plain periodic lines off a terminal, silent when quiet", "[core]") {
  const auto path = test::temp_path("progress.txt");
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    Progress p("train", 10, ProgressOptions{false, 0.0, 0, f});
    for (int i = 1; i <= 10; ++i) p.update(i, "loss 1.0");
    p.finish();
    std::fclose(f);
  }
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  CHECK(text.find("train: 10/10 (100%)") != std::string::npos);
  CHECK(text.find("loss 1.0") != std::string::npos);
  CHECK(text.find('\r') == std::string::npos);  // no terminal control off a terminal
  const auto quiet = test::temp_path("quiet.txt");
  {
    std::FILE* f = std::fopen(quiet.c_str(), "w");
    Progress p("train", 10, ProgressOptions{true, 0.0, 0, f});
    p.update(5);
    p.finish();
    std::fclose(f);
  }
  std::ifstream qin(quiet);
  CHECK(std::string((std::istreambuf_iterator<char>(qin)), {}).empty());
  CHECK(format_duration(3725) == "1h02m");
  CHECK(format_duration(65) == "1m05s");
}

TEST_CASE("HDF5 layer: tensors and attributes round trip, formats are checked", "[core]") {
  const auto path = test::temp_path("roundtrip.h5");
  const auto f32 = torch::randn({3, 4});
  const auto f64 = torch::randn({2, 3, 2}, torch::kFloat64);
  const auto i64 = torch::arange(7, torch::kInt64);
  const auto scalar = torch::tensor(2.5, torch::kFloat64);
  {
    H5Writer w(path, "samples", 1);
    w.write("/a/f32", f32);
    w.write("/f64", f64);
    w.write("/deep/er/i64", i64);
    w.write("/scalar", scalar);
    w.write("/empty", torch::zeros({0, 3}, torch::kFloat64));
    w.set_attr("/", "note", std::string("hello"));
    w.set_attr("/a", "count", int64_t{42});
    w.set_attr("/a", "value", 0.125);
    w.commit();
  }
  H5Reader r(path);
  CHECK(r.expect_format("samples", 1) == 1);
  CHECK(torch::equal(r.read("/a/f32"), f32));
  CHECK(r.read("/a/f32").dtype() == torch::kFloat32);
  CHECK(torch::equal(r.read("/f64"), f64));
  CHECK(torch::equal(r.read("/deep/er/i64"), i64));
  CHECK(r.read("/scalar").item<double>() == 2.5);
  CHECK(r.read("/empty").sizes() == torch::IntArrayRef({0, 3}));
  CHECK(r.attr_string("/", "note") == "hello");
  CHECK(r.attr_int("/a", "count") == 42);
  CHECK(r.attr_double("/a", "value") == 0.125);
  CHECK(r.list("/a") == std::vector<std::string>{"f32"});
  CHECK_FALSE(r.exists("/nothing/here"));
  CHECK_THROWS_WITH(r.read("/nothing"), Catch::Contains("has no dataset '/nothing'"));
  CHECK_THROWS_WITH(r.expect_format("checkpoint", 1), Catch::Contains("is an nfkit 'samples' file"));
  CHECK_THROWS_WITH(r.expect_format("samples", 0), Catch::Contains("format_version 1"));

  // The same file through h5py, where available.
  const int rc = test::run_python("import h5py\nf = h5py.File('" + path + "', 'r')\n"
                                  "assert f.attrs['nfkit_format'] == 'samples'\n"
                                  "assert f['deep/er/i64'][()].tolist() == list(range(7))\n"
                                  "assert f['a'].attrs['count'] == 42\n");
  if (rc >= 0) CHECK(rc == 0);
}

TEST_CASE("HDF5 writes are atomic: no file under the final name until commit, a killed writer leaves the last good file", "[core]") {
  const auto path = test::temp_path("atomic.h5");
  {
    H5Writer w(path, "samples", 1);
    w.write("/x", torch::ones({2}));
    CHECK_FALSE(file_exists(path));
  }  // destroyed without commit
  CHECK_FALSE(file_exists(path));
  // An existing file survives a failed rewrite.
  {
    H5Writer w(path, "samples", 1);
    w.commit();
  }
  {
    H5Writer w(path, "samples", 1);
    w.set_attr("/", "partial", int64_t{1});
  }
  CHECK_FALSE(H5Reader(path).has_attr("/", "partial"));
  CHECK_THROWS_WITH(H5Writer("/nonexistent-dir/x.h5", "samples", 1), Catch::Contains("cannot be written"));
  // Missing, non-HDF5 and unknown files.
  CHECK_THROWS_WITH(H5Reader(test::temp_path("missing.h5")), Catch::Contains("cannot be read"));
  const auto junk = test::temp_path("junk.h5");
  std::ofstream(junk) << "not hdf5 at all";
  CHECK_THROWS_WITH(H5Reader(junk), Catch::Contains("is not an HDF5 file"));
  const auto plain = test::temp_path("plain.h5");
  {
    H5Writer w(plain, "samples", 1);
    w.commit();
  }
  CHECK_THROWS_WITH(H5Reader(plain).expect_format("checkpoint", 1), Catch::Contains("'samples'"));
  // A writer killed (SIGKILL: no destructor runs) before its commit: the last good file is
  // intact, the temporary it leaves is removed by the next write of that path.
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    H5Writer w(path, "samples", 1);
    w.write("/x", torch::zeros({1000}));
    w.set_attr("/", "partial", int64_t{1});
    raise(SIGKILL);
    _exit(0);  // not reached
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  const std::string stale = path + ".tmp-" + std::to_string(child);
  CHECK(file_exists(stale));
  CHECK_FALSE(H5Reader(path).has_attr("/", "partial"));
  CHECK_FALSE(H5Reader(path).exists("/x"));
  {
    H5Writer w(path, "samples", 1);
    w.commit();
  }
  CHECK_FALSE(file_exists(stale));
  // Text files too.
  const auto txt = test::temp_path("a.csv");
  write_file_atomic(txt, "1,2\n");
  CHECK(file_exists(txt));
  CHECK_THROWS_AS(write_file_atomic("/nonexistent-dir/a.csv", "x"), RuntimeError);
  CHECK(file_extension("dir.v2/file.H5") == "h5");
  CHECK(file_extension("dir.v2/file") == "");
}

TEST_CASE("files: make_directories creates parents and names what it cannot create", "[core]") {
  const auto base = test::temp_path("dirs");
  make_directories(base + "/a/b/c", "--out");
  CHECK(file_exists(base + "/a/b/c"));
  make_directories(base + "/a/b/c", "--out");  // existing: fine
  std::ofstream(base + "/file") << "x";
  CHECK_THROWS_WITH(make_directories(base + "/file/sub", "--out"),
                    Catch::Contains("--out") && Catch::Contains(base + "/file/sub"));
  CHECK_THROWS_AS(make_directories(base + "/file", "--out"), RuntimeError);
}

TEST_CASE("find_data_file: the path itself, then $NFKIT_DATA, else unchanged", "[core]") {
  const auto dir = nfkit::test::temp_path("datadir");
  nfkit::make_directories(dir + "/pta", "test");
  nfkit::write_file_atomic(dir + "/pta/x.txt", "1\n");
  ::unsetenv("NFKIT_DATA");
  CHECK(nfkit::find_data_file("data/pta/x.txt") == "data/pta/x.txt");  // nowhere: unchanged
  ::setenv("NFKIT_DATA", dir.c_str(), 1);
  CHECK(nfkit::find_data_file("data/pta/x.txt") == dir + "/pta/x.txt");
  CHECK(nfkit::find_data_file("other/pta/x.txt") == "other/pta/x.txt");  // only data/... is looked up
  const auto here = dir + "/pta/x.txt";
  CHECK(nfkit::find_data_file(here) == here);  // an existing path is used as given
  ::unsetenv("NFKIT_DATA");
}

TEST_CASE("npy: round trip, the shipped data, and corrupt files", "[core][io]") {
  auto t = torch::randn({3, 4}, torch::kFloat64);
  auto p = test::temp_path("x.npy");
  write_npy(p, t);
  CHECK(torch::equal(read_npy(p), t));
  auto d = read_npy(std::string(NFKIT_SOURCE_DIR) + "/data/pta/ng15_30f_fs_hd_ceffyl/density.npy");
  CHECK(d.sizes() == torch::IntArrayRef({1, 30, 10000}));
  write_file_atomic(p, "not numpy at all");
  CHECK_THROWS_WITH(read_npy(p), Catch::Contains("x.npy") && Catch::Contains("bad magic"));
  // A valid header whose data is cut short.
  write_npy(p, t);
  std::string bytes;
  {
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  write_file_atomic(p, bytes.substr(0, bytes.size() - 9));
  CHECK_THROWS_WITH(read_npy(p), Catch::Contains("truncated"));
}

TEST_CASE("idx: round trip, and missing, truncated or corrupt files give clear errors", "[core][io]") {
  torch::manual_seed(1);
  const auto imgs = torch::randint(0, 256, {7, 5, 3}, torch::kUInt8);
  for (const std::string name : {"images.idx", "images.idx.gz"}) {
    const auto p = temp_path(name);
    write_idx(p, imgs);
    CHECK(torch::equal(read_idx(p), imgs));
  }
  CHECK_THROWS_WITH(read_idx(temp_path("absent-idx.gz")), Catch::Contains("absent-idx.gz") && Catch::Contains("missing"));
  // Truncated data (plain), a corrupt gzip stream, and a file that is not IDX at all.
  const auto plain = temp_path("plain.idx");
  write_idx(plain, imgs);
  std::string bytes;
  {
    std::ifstream f(plain, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  const auto trunc = temp_path("trunc.idx");
  std::ofstream(trunc, std::ios::binary) << bytes.substr(0, bytes.size() - 10);
  CHECK_THROWS_WITH(read_idx(trunc), Catch::Contains("trunc.idx") && Catch::Contains("truncated"));
  const auto gz = temp_path("images2.idx.gz");
  write_idx(gz, imgs);
  std::string gbytes;
  {
    std::ifstream f(gz, std::ios::binary);
    gbytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  const auto bad = temp_path("corrupt.idx.gz");
  std::ofstream(bad, std::ios::binary) << gbytes.substr(0, gbytes.size() / 2);
  CHECK_THROWS_WITH(read_idx(bad), Catch::Contains("corrupt.idx.gz"));
  const auto text = temp_path("text.idx");
  std::ofstream(text) << "hello, world";
  CHECK_THROWS_WITH(read_idx(text), Catch::Contains("not an IDX file"));
  // Dimensions whose product overflows (found by fuzz/fuzz_idx): 2^16 x 2^16 x 2^16 x 2^16 wraps
  // to 0 bytes, which an empty data section used to match.
  const auto wrap = temp_path("wrap.idx");
  std::ofstream(wrap, std::ios::binary) << std::string("\0\0\x08\x04", 4) << std::string("\0\x01\0\0", 4)
                                        << std::string("\0\x01\0\0", 4) << std::string("\0\x01\0\0", 4)
                                        << std::string("\0\x01\0\0", 4);
  CHECK_THROWS_WITH(read_idx(wrap), Catch::Contains("wrap.idx: holds 0 data bytes, but its IDX header promises more"));
}

TEST_CASE("HDF5: a dataset whose shape its stored data cannot back is refused before allocating", "[core][io]") {
  // Found by fuzz/fuzz_h5: an unwritten chunked dataset of 10^12 values (a tiny file) made the
  // reader ask for 8 TB. Written by h5py, as another tool would.
  const auto path = temp_path("huge-unwritten.h5");
  REQUIRE(test::run_python("import h5py\nwith h5py.File('" + path + "', 'w') as f:\n"
                           "    f.create_dataset('x', shape=(10**6, 10**6), chunks=(1, 1), dtype='f8')\n"
                           "    f['y'] = [1.0, 2.0]\n") == 0);
  H5Reader r(path);
  CHECK_THROWS_WITH(r.read("/x"), Catch::Contains("huge-unwritten.h5: dataset '/x' stores 0 bytes, less than its "
                                                  "shape [1000000, 1000000] needs"));
  CHECK(torch::equal(r.read("/y"), torch::tensor({1.0, 2.0}, torch::kFloat64)));
}

TEST_CASE("errors are one line: text quoted back from a file cannot break the message", "[core]") {
  CHECK_THROWS_WITH(runtime_error("a\nb", "c\rd\x01" "e\tf"), "a\\nb: c\\rd\\x01e\tf");
  // Found by fuzz/fuzz_h5: a format name with a line break was quoted into the message.
  const auto path = temp_path("newline-kind.h5");
  {
    H5Writer w(path, "sam\nples", 1);
    w.commit();
  }
  try {
    H5Reader(path).expect_format("samples", 1);
    FAIL("expect_format accepted another kind");
  } catch (const RuntimeError& e) {
    const std::string m = e.what();
    CHECK(m.find('\n') == std::string::npos);
    CHECK(m.find("sam\\nples") != std::string::npos);
  }
}

TEST_CASE("test suite: every test name is one ctest entry and every test has a tag", "[core]") {
  // catch_discover_tests splits names at ';' (a name with one silently became two entries
  // that matched nothing, and 19 tests never ran); Catch itself refuses duplicate names.
  const auto& all = Catch::getRegistryHub().getTestCaseRegistry().getAllTests();
  CHECK(all.size() > 100);
  for (const auto& t : all) {
    INFO(t.name);
    CHECK(t.name.find(';') == std::string::npos);
    CHECK(!t.tags.empty());
  }
}
