#include "io/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>

#include "base/error.h"
#include "io/files.h"

using namespace hymba;
using ::testing::HasSubstr;

namespace {

std::string fresh_dir(const std::string& tag) {
  std::string d = ::testing::TempDir() + "/hymba_st_" + tag + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// A raw file: 8-byte length + header text + data bytes.
std::string raw_file(const std::string& header, size_t data_bytes, uint64_t len_override = 0) {
  uint64_t n = len_override ? len_override : header.size();
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(n >> (8 * i));
  return s + header + std::string(data_bytes, '\x01');
}

// Runs open() on `path` and returns the error message ("" if none).
std::string open_error(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string bad_file(const std::string& tag, const std::string& content) {
  const std::string p = fresh_dir("bad") + "/" + tag + ".safetensors";
  write_file_atomic(p, content);
  return p;
}

}  // namespace

TEST(IoSafetensors, RoundTripEveryDtype) {
  const std::string d = fresh_dir("rt");
  const float f32[6] = {1.5f, -2, 3.25f, 0, 1e-3f, 65504};
  uint16_t bf[6], f16[6];
  from_f32(bf, DType::BF16, f32, 6);
  from_f32(f16, DType::F16, f32, 6);
  const double f64[3] = {1.0 / 3, -7, 1e300};
  const int32_t i32[2] = {-5, 7};
  const int64_t i64[3] = {1ll << 40, -1, 0};
  std::vector<TensorOut> outs = {
      {"b.f32", DType::F32, {2, 3}, f32},     {"a.bf16", DType::BF16, {3, 2}, bf},
      {"c.f16", DType::F16, {6}, f16},        {"d.f64", DType::F64, {3}, f64},
      {"e.i32", DType::I32, {1, 2}, i32},     {"f.i64", DType::I64, {3}, i64},
      {"g.empty", DType::F32, {0, 4}, nullptr}, {"h.scalar", DType::F32, {}, f32}};
  write_safetensors(d + "/model.safetensors", outs, {{"format", "pt"}, {"note", "x y"}});

  // Header length is a multiple of 8 so data (and each tensor here) is 8-aligned.
  const std::string raw = read_file(d + "/model.safetensors");
  uint64_t hl = 0;
  for (int i = 7; i >= 0; --i) hl = hl << 8 | uint8_t(raw[size_t(i)]);
  EXPECT_EQ(hl % 8, 0u);

  for (const std::string& path : {d, d + "/model.safetensors"}) {
    auto f = SafetensorsFile::open(path);
    EXPECT_EQ(f->tensors().size(), outs.size());
    EXPECT_EQ(f->metadata().at("format"), "pt");
    EXPECT_EQ(f->metadata().at("note"), "x y");
    for (auto& o : outs) {
      const TensorInfo* t = f->find(o.name);
      ASSERT_NE(t, nullptr) << o.name;
      EXPECT_EQ(t->dtype, o.dtype) << o.name;
      EXPECT_EQ(t->shape, o.shape) << o.name;
      EXPECT_EQ(t->nbytes, size_t(t->numel()) * dtype_size(o.dtype));
      if (t->nbytes) {
        EXPECT_EQ(std::memcmp(t->data, o.data, t->nbytes), 0) << o.name;
      }
    }
    EXPECT_EQ(f->find("nope"), nullptr);
    EXPECT_EQ(f->find("h.scalar")->numel(), 1);
  }
}

TEST(IoSafetensors, ShardedFolderWithIndex) {
  const std::string d = fresh_dir("shard");
  const float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
  write_safetensors(d + "/model-00001-of-00002.safetensors", {{"x.a", DType::F32, {2, 2}, a}});
  write_safetensors(d + "/model-00002-of-00002.safetensors", {{"x.b", DType::F32, {2}, b}});
  write_file_atomic(d + "/model.safetensors.index.json",
                    std::string(R"({"metadata": {"total_size": 24}, "weight_map": {
                      "x.a": "model-00001-of-00002.safetensors",
                      "x.b": "model-00002-of-00002.safetensors"}})"));
  auto f = SafetensorsFile::open(d);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(static_cast<const float*>(f->find("x.a")->data)[3], 4.0f);
  EXPECT_EQ(static_cast<const float*>(f->find("x.b")->data)[1], 6.0f);
  // The index path itself also works.
  EXPECT_EQ(SafetensorsFile::open(d + "/model.safetensors.index.json")->tensors().size(), 2u);

  // Index naming a shard that does not exist.
  write_file_atomic(d + "/model.safetensors.index.json",
                    std::string(R"({"weight_map": {"x.a": "model-00001-of-00002.safetensors",
                      "x.c": "model-00003-of-00003.safetensors"}})"));
  std::string e = open_error(d);
  EXPECT_THAT(e, HasSubstr("model-00003-of-00003.safetensors"));
  EXPECT_THAT(e, HasSubstr("x.c"));

  // Index putting a tensor in a shard that does not hold it.
  write_file_atomic(d + "/model.safetensors.index.json",
                    std::string(R"({"weight_map": {"x.a": "model-00001-of-00002.safetensors",
                      "x.b": "model-00001-of-00002.safetensors"}})"));
  e = open_error(d);
  EXPECT_THAT(e, HasSubstr("'x.b'"));
  EXPECT_THAT(e, HasSubstr("model-00001-of-00002.safetensors"));

  // Empty folder.
  EXPECT_THAT(open_error(fresh_dir("empty")), HasSubstr("model.safetensors"));
}

TEST(IoSafetensors, BadFilesNameFileAndTensor) {
  struct Case {
    std::string tag, content;
    std::vector<std::string> expect;
  };
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  std::vector<Case> cases = {
      {"short", std::string("\x05\0\0", 3), {"short", "too short"}},
      {"hlen_big", raw_file("{}", 0, 1000), {"hlen_big", "exceeds the file size"}},
      {"hlen_absurd", raw_file("{}", 0, 200ull << 20), {"hlen_absurd", "absurd"}},
      {"not_json", raw_file("{not json", 0), {"not_json", "not valid JSON"}},
      {"not_object", raw_file("[1,2]", 0), {"not_object", "not a JSON object"}},
      {"no_dtype", raw_file(R"({"w.q":{"shape":[2],"data_offsets":[0,8]}})", 8), {"w.q", "dtype"}},
      {"no_shape", raw_file(R"({"w.q":{"dtype":"F32","data_offsets":[0,8]}})", 8), {"w.q", "shape"}},
      {"no_offsets", raw_file(R"({"w.q":{"dtype":"F32","shape":[2]}})", 8), {"w.q", "data_offsets"}},
      {"bad_dtype", raw_file(R"({"w.q":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8),
       {"w.q", "Q4"}},
      {"oob", raw_file(R"({"w.q":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
       {"w.q", "out of bounds"}},
      {"mismatch", raw_file(R"({"w.q":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       {"w.q", "needs 12"}},
      {"negdim", raw_file(R"({"w.q":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       {"w.q", "negative"}},
      {"overlap", raw_file(R"({"w.a":{)" + ok_entry + R"(},"w.b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       {"w.b", "overlaps", "w.a"}},
      {"neg_offset", raw_file(R"({"w.q":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
       {"w.q", "data_offsets"}},
      {"entry_not_obj", raw_file(R"({"w.q":5})", 0), {"w.q", "not an object"}},
      {"bad_meta", raw_file(R"({"__metadata__":{"a":1}})", 0), {"__metadata__"}},
  };
  for (auto& c : cases) {
    const std::string p = bad_file(c.tag, c.content);
    const std::string e = open_error(p);
    ASSERT_FALSE(e.empty()) << c.tag << ": accepted";
    EXPECT_THAT(e, HasSubstr(c.tag + ".safetensors")) << c.tag;  // names the file
    for (auto& s : c.expect) EXPECT_THAT(e, HasSubstr(s)) << c.tag;
  }
  EXPECT_THAT(open_error("/nonexistent/dir/x.safetensors"), HasSubstr("/nonexistent/dir/x.safetensors"));
}

TEST(IoSafetensors, WriterRejectsBadInput) {
  const std::string d = fresh_dir("wbad");
  const float v[2] = {1, 2};
  try {
    write_safetensors(d + "/x.safetensors", {{"t", DType::F32, {2}, v}, {"t", DType::F32, {2}, v}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'t'"));
  }
  EXPECT_FALSE(file_exists(d + "/x.safetensors"));
  try {
    write_safetensors(d + "/x.safetensors", {{"neg", DType::F32, {-1}, v}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'neg'"));
  }
}
