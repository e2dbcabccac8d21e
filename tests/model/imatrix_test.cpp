// ImportanceMatrix (src/model/imatrix.h): the sums against a double loop, the file round trip,
// merging, and refusal of files that are not an importance matrix.
#include "model/imatrix.h"

#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "base/error.h"
#include "io/safetensors.h"

namespace hymba {
namespace {

std::string temp_path(const std::string& tag) {
  return ::testing::TempDir() + "/hymba_im_" + tag + "_" + std::to_string(::getpid()) + ".safetensors";
}

TEST(ImportanceMatrix, SumsRoundTripAndMerge) {
  ImportanceMatrix im;
  std::vector<float> x = {1, -2, 3, 0.5f, 4, -1};  // [3 rows, 2 cols]
  im.add("a.weight", x.data(), 3, 2);
  im.add("a.weight", x.data(), 1, 2);
  ASSERT_EQ(im.entries.at("a.weight").count, 4);
  EXPECT_DOUBLE_EQ(im.entries.at("a.weight").sum2[0], 1 + 9 + 16 + 1);
  EXPECT_DOUBLE_EQ(im.entries.at("a.weight").sum2[1], 4 + 0.25 + 1 + 4);
  const std::vector<float> imp = im.importance("a.weight", 2);
  EXPECT_FLOAT_EQ(imp[0], 27.0f / 4);
  EXPECT_FLOAT_EQ(imp[1], 9.25f / 4);
  EXPECT_THROW(im.add("a.weight", x.data(), 2, 3), Error);  // another width
  EXPECT_THROW(im.importance("a.weight", 3), Error);
  EXPECT_THROW(im.importance("b.weight", 2), Error);

  im.info = {{"chunks", "7"}};
  const std::string p = temp_path("rt");
  im.save(p);
  ImportanceMatrix back = ImportanceMatrix::load(p);
  EXPECT_EQ(back.info.at("chunks"), "7");
  EXPECT_EQ(back.entries.at("a.weight").count, 4);
  EXPECT_EQ(back.importance("a.weight", 2), imp);
  back.merge(im);
  EXPECT_EQ(back.entries.at("a.weight").count, 8);
  EXPECT_DOUBLE_EQ(back.entries.at("a.weight").sum2[0], 2 * 27.0);
  ImportanceMatrix other;
  other.add("a.weight", x.data(), 2, 3);
  EXPECT_THROW(back.merge(other), Error);
  std::remove(p.c_str());
}

TEST(ImportanceMatrix, RejectsBadFiles) {
  const std::string p = temp_path("bad");
  auto rejects = [&](const std::vector<TensorOut>& t, const std::string& why) {
    write_safetensors(p, t);
    try {
      ImportanceMatrix::load(p);
      ADD_FAILURE() << "accepted: " << why;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  const float sums[2] = {1, 2}, neg[2] = {1, -2}, one = 3, zero = 0, half = 1.5f;
  rejects({{"w.in_sum2", DType::F32, {2}, sums}}, "no counts");
  rejects({{"w.counts", DType::F32, {1}, &one}}, "no sums");
  rejects({{"w.in_sum2", DType::F32, {2}, neg}, {"w.counts", DType::F32, {1}, &one}}, "a negative sum");
  rejects({{"w.in_sum2", DType::F32, {2}, sums}, {"w.counts", DType::F32, {1}, &zero}}, "zero rows");
  rejects({{"w.in_sum2", DType::F32, {2}, sums}, {"w.counts", DType::F32, {1}, &half}}, "half a row");
  rejects({{"w.in_sum2", DType::F32, {1, 2}, sums}, {"w.counts", DType::F32, {1}, &one}}, "a matrix of sums");
  rejects({{"w.weight", DType::F32, {2}, sums}}, "a checkpoint tensor");
  rejects({}, "no entries");
  std::remove(p.c_str());
}

}  // namespace
}  // namespace hymba
