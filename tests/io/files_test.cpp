#include "io/files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "base/error.h"

using namespace hymba;
using ::testing::HasSubstr;

namespace {
std::string fresh_dir(const std::string& tag) {
  std::string d = ::testing::TempDir() + "/hymba_files_" + tag + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}
}  // namespace

TEST(IoFiles, AtomicWriteReadOverwrite) {
  const std::string d = fresh_dir("rw"), p = d + "/a.txt";
  EXPECT_FALSE(file_exists(p));
  write_file_atomic(p, std::string("hello"));
  EXPECT_TRUE(file_exists(p));
  EXPECT_EQ(read_file(p), "hello");
  write_file_atomic(p, std::string("second\0x", 8));
  EXPECT_EQ(read_file(p), std::string("second\0x", 8));
  // No temp files left behind.
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(d)) (void)e, ++n;
  EXPECT_EQ(n, 1);
}

namespace {
int entries(const std::string& d) {
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(d)) (void)e, ++n;
  return n;
}
}  // namespace

// A writer killed before commit() (here: _exit in a child, no destructor) leaves the old file as
// it was and no temp file next to it.
TEST(IoFiles, KilledWriterLeavesNothing) {
  const std::string d = fresh_dir("kill"), p = d + "/a.bin";
  write_file_atomic(p, std::string("old"));
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    AtomicFile f(p);
    f.write("new data", 8);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(read_file(p), "old");
  EXPECT_EQ(entries(d), 1);
}

// Temp names of processes that are gone are removed by the next writer of the same target; a live
// process's are kept, and so are other targets'.
TEST(IoFiles, StaleTempsOfDeadWritersAreRemoved) {
  const std::string d = fresh_dir("stale"), p = d + "/a.bin";
  pid_t dead = ::fork();
  ASSERT_GE(dead, 0);
  if (dead == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(dead, nullptr, 0), dead);
  const std::string stale = p + ".tmp." + std::to_string(dead) + ".Ab12Cd";
  const std::string live = p + ".tmp." + std::to_string(::getppid()) + ".Ef34Gh";
  const std::string other = d + "/b.bin.tmp." + std::to_string(dead) + ".Ij56Kl";
  for (const auto& f : {stale, live, other}) write_file_atomic(f, std::string("x"));
  write_file_atomic(p, std::string("data"));
  EXPECT_FALSE(file_exists(stale));
  EXPECT_TRUE(file_exists(live));
  EXPECT_TRUE(file_exists(other));
  EXPECT_EQ(read_file(p), "data");
}

TEST(IoFiles, ErrorsNameThePath) {
  const std::string d = fresh_dir("err");
  try {
    read_file(d + "/missing.bin");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("missing.bin"));
  }
  try {
    write_file_atomic(d + "/no/such/folder/x.json", std::string("{}"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no/such/folder/x.json"));
  }
  if (::geteuid() != 0) {  // root ignores permissions
    const std::string ro = d + "/ro";
    std::filesystem::create_directories(ro);
    ::chmod(ro.c_str(), 0555);
    try {
      write_file_atomic(ro + "/x.json", std::string("{}"));
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(ro + "/x.json"));
    }
    ::chmod(ro.c_str(), 0755);
  }
}

TEST(IoFiles, NpyHeaderAndData) {
  const std::string p = fresh_dir("npy") + "/x.npy";
  const float v[6] = {1, 2, 3, 4, 5, -6.5f};
  write_npy_f32(p, v, {2, 3});
  const std::string s = read_file(p);
  ASSERT_GE(s.size(), 10u);
  EXPECT_EQ(s.substr(0, 6), "\x93NUMPY");
  EXPECT_EQ(s[6], 1);
  EXPECT_EQ(s[7], 0);
  const size_t hl = uint8_t(s[8]) | size_t(uint8_t(s[9])) << 8;
  EXPECT_EQ((10 + hl) % 64, 0u);
  const std::string dict = s.substr(10, hl);
  EXPECT_THAT(dict, HasSubstr("'descr': '<f4'"));
  EXPECT_THAT(dict, HasSubstr("'fortran_order': False"));
  EXPECT_THAT(dict, HasSubstr("'shape': (2, 3)"));
  EXPECT_EQ(dict.back(), '\n');
  ASSERT_EQ(s.size(), 10 + hl + sizeof v);
  EXPECT_EQ(std::memcmp(s.data() + 10 + hl, v, sizeof v), 0);

  write_npy_f32(p, v, {6});
  EXPECT_THAT(read_file(p), HasSubstr("'shape': (6,)"));
}
