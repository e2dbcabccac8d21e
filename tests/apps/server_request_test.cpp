// Request bodies of `hymba server` (apps/server_request.cpp) against what clients may send.
#include "server_request.h"

#include <gtest/gtest.h>

namespace hymba::cli {
namespace {

const Tokenizer& tok() {
  static const auto t = Tokenizer::load(std::string(HYMBA_SOURCE_DIR) + "/models/hymba-kjv");
  return *t;
}

std::string bad_request(const std::string& body, int endpoint) {
  try {
    const auto b = parse_body(body);
    if (endpoint < 2) (void)parse_completion(b, endpoint == 1, tok());
    else (void)parse_detokenize(b, tok());
  } catch (const BadRequest& e) {
    return e.what();
  }
  return "<accepted>";
}

// Found by fuzz/server_request_fuzz.cpp: a float no float holds (1e300 as a temperature) was
// static_cast (undefined behaviour); the ids of /detokenize and prompts are range-checked too.
TEST(ServerRequestBadInput, RejectsNumbersOutOfRange) {
  EXPECT_EQ(bad_request(R"({"prompt": "x", "temperature": 1e300})", 0), "'temperature' must be a number in range");
  EXPECT_EQ(bad_request(R"({"prompt": "x", "top_p": -1e39})", 0), "'top_p' must be a number in range");
  EXPECT_NE(bad_request(R"({"tokens": [5, 2e25, 6]})", 3).find("token id 2e+25 is not an integer"), std::string::npos);
  EXPECT_NE(bad_request(R"({"prompt": [1, 4294967301]})", 0).find("token id 4294967301 is not an integer"),
            std::string::npos);
  EXPECT_EQ(bad_request(R"({"prompt": "x", "top_k": 3.5})", 0), "'top_k' must be an integer");
  EXPECT_EQ(bad_request(R"([1, 2])", 0), "the request body is not a JSON object");
}

TEST(ServerRequest, AcceptsWhatClientsSend) {
  const auto p = parse_completion(parse_body(R"({"prompt": [1, 450, 7], "max_tokens": 4, "temperature": 0})"), false, tok());
  ASSERT_EQ(p.choices.size(), 1u);
  EXPECT_EQ(p.choices[0].prompt, (std::vector<int32_t>{1, 450, 7}));
  EXPECT_EQ(p.choices[0].params.max_new_tokens, 4);
  EXPECT_EQ(p.choices[0].params.sampling.temperature, 0.0f);
  EXPECT_EQ(parse_detokenize(parse_body(R"({"tokens": [450]})"), tok()), tok().decode({450}));
}

}  // namespace
}  // namespace hymba::cli
