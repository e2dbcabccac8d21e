#include "io/files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
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
