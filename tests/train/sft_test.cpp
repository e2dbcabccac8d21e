// SFT data and packing: the chat tokens decode to the template's text, the loss is only on the
// assistant's replies, and a packed row of several conversations gives exactly the loss and
// gradients of training each conversation alone (no attention or SSM state crosses them).
// Pre-tokenized rows (input_ids + completion_mask or labels): the targets follow the mask, a
// padded row gives the loss and gradients of its example alone, and the loss is the mean over
// the completion positions (masked targets add nothing to the gradient).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "runtime/chat_tokens.h"
#include "train/params.h"
#include "train/sft.h"
#include "train/step.h"

namespace hymba {
namespace {

const std::string kModel = std::string(HYMBA_SOURCE_DIR) + "/models/hymba-kjv";
const std::string kTiny = std::string(HYMBA_SOURCE_DIR) + "/tests/configs/tiny-hymba.json";

TEST(Sft, ChatTokensDecodeToTheTemplateAndMaskOnlyReplies) {
  auto tok = Tokenizer::load(kModel);
  std::vector<ChatMessage> m = {{"system", "Be brief."}, {"user", "Who begat Jacob?"},
                                {"assistant", " Isaac begat Jacob. "}, {"user", "And Isaac?"},
                                {"assistant", "Abraham begat Isaac."}};
  const ChatTokens ct = tokenize_chat(*tok, m, true);
  ASSERT_EQ(ct.ids.back(), tok->eos());
  EXPECT_EQ(tok->decode(std::vector<int32_t>(ct.ids.begin(), ct.ids.end() - 1)), render_chat(m, false));
  std::vector<int32_t> asst;
  for (size_t i = 0; i + 1 < ct.ids.size(); ++i)
    if (ct.assistant[i]) asst.push_back(ct.ids[i]);
  EXPECT_EQ(tok->decode(asst), "Isaac begat Jacob.\nAbraham begat Isaac.\n");
  EXPECT_TRUE(ct.assistant.back());
}

TEST(Sft, LossOnlyOnAssistantTokens) {
  auto tok = Tokenizer::load(kModel);
  const auto path = std::filesystem::temp_directory_path() / "hymba-sft-test.jsonl";
  std::ofstream(path) << R"({"messages": [{"role": "user", "content": "Quote Genesis 1:3"}, {"role": "assistant", "content": "And God said, Let there be light: and there was light."}]})" << "\n";
  const auto ex = load_sft_jsonl(path.string(), *tok, 512);
  ASSERT_EQ(ex.size(), 1u);
  std::vector<int32_t> t;
  for (int32_t x : ex[0].targets)
    if (x >= 0) t.push_back(x);
  ASSERT_EQ(t.back(), tok->eos());
  t.pop_back();
  EXPECT_EQ(tok->decode(t), "And God said, Let there be light: and there was light.\n");
  // inputs are the tokens shifted by one against the targets
  for (size_t i = 0; i + 1 < ex[0].inputs.size(); ++i)
    if (ex[0].targets[i] >= 0) EXPECT_EQ(ex[0].targets[i], ex[0].inputs[i + 1]);
  std::filesystem::remove(path);
}

TEST(Sft, BadRowsNamed) {
  auto tok = Tokenizer::load(kModel);
  const auto path = std::filesystem::temp_directory_path() / "hymba-sft-bad.jsonl";
  const std::string good = R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"text": "no messages"})", "no \"messages\""},
      {R"({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})", "unknown role"},
      {R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]})", "empty assistant"},
      {R"({"messages": [{"role": "user", "content": "x"}]})", "no assistant"},
      {R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ")" + std::string(3000, 'a') + R"("}]})", "longer than"},
      {"{not json", "not valid JSON"}};
  for (const auto& [row, why] : bad) {
    std::ofstream(path) << good << "\n" << good << "\n" << row << "\n";
    try {
      load_sft_jsonl(path.string(), *tok, 256);
      ADD_FAILURE() << "accepted: " << row.substr(0, 60);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(":3: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove(path);
}

TEST(Sft, PackedRowEqualsEachConversationAlone) {
  ParamArena p = arena_from_init(load_config(kTiny), 3);
  HymbaModel m(p.config, p.w);
  // Three conversations of different lengths (longer than the window + meta), targets masked.
  std::vector<std::vector<int32_t>> in(3), tg(3);
  const int64_t len[3] = {21, 9, 30};
  for (int k = 0; k < 3; ++k)
    for (int64_t i = 0; i < len[k]; ++i) {
      in[size_t(k)].push_back(int32_t((37 * i + 11 * k + 5) % p.config.vocab_size));
      tg[size_t(k)].push_back(i % 3 == 0 ? -1 : int32_t((53 * i + 7 * k + 1) % p.config.vocab_size));
    }
  std::vector<SeqRef> all;
  for (int k = 0; k < 3; ++k) all.push_back({in[size_t(k)].data(), tg[size_t(k)].data(), len[k]});
  int64_t total = 0;
  const double packed = loss_and_grads(m, p.g, all, 1.0f, &total);
  const std::vector<float> g_packed = p.grad;
  p.zero_grad();
  double alone = 0;
  std::vector<int64_t> cnt(3);
  for (int k = 0; k < 3; ++k) {  // weight each alone by its share of the counted targets
    int64_t c = 0;
    for (int32_t t : tg[size_t(k)]) c += t >= 0;
    alone += loss_and_grads(m, p.g, std::span<const SeqRef>(&all[size_t(k)], 1), float(double(c) / double(total))) *
             double(c) / double(total);
  }
  EXPECT_NEAR(packed, alone, 1e-5 * std::abs(alone));
  double err = 0, scale = 0;
  for (size_t i = 0; i < g_packed.size(); ++i) {
    err = std::max(err, double(std::abs(g_packed[i] - p.grad[i])));
    scale = std::max(scale, double(std::abs(p.grad[i])));
  }
  EXPECT_LT(err, 1e-5 * scale) << "max |packed - alone| " << err << " of " << scale;
  // and the loss-only path agrees
  int64_t k2 = 0;
  EXPECT_NEAR(loss_only(m, all, &k2), packed, 1e-5 * std::abs(packed));
  EXPECT_EQ(k2, total);
}

TEST(Sft, TokenRowsFollowTheMaskOrTheLabels) {
  const auto path = std::filesystem::temp_directory_path() / "hymba-token-rows.jsonl";
  std::ofstream(path) << R"({"input_ids": [1, 10, 20, 10, 20, 2], "completion_mask": [1, 0, 0, 0, 1, 0]})" << "\n\n"
                      << R"({"input_ids": [1, 7, 8, 9], "labels": [-100, -100, 8, 30]})" << "\n";
  const auto ex = load_token_jsonl(path.string(), 100, 16);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].inputs, (std::vector<int32_t>{1, 10, 20, 10, 20}));
  // the mask on id 0 has no target (nothing predicts the first token)
  EXPECT_EQ(ex[0].targets, (std::vector<int32_t>{-1, -1, -1, 20, -1}));
  EXPECT_EQ(ex[0].row, 1);
  EXPECT_EQ(ex[1].targets, (std::vector<int32_t>{-1, 8, 30}));  // labels as given, shifted
  EXPECT_EQ(ex[1].row, 3);
  EXPECT_EQ(ex[1].counted(), 2);
  std::filesystem::remove(path);
}

TEST(Sft, TokenRowsBadRowsNamed) {
  const auto path = std::filesystem::temp_directory_path() / "hymba-token-rows-bad.jsonl";
  const std::string good = R"({"input_ids": [1, 5, 6], "completion_mask": [0, 0, 1]})";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"{not json", "not valid JSON"},
      {R"([1, 2, 3])", "no \"input_ids\""},
      {R"({"input_ids": [1, 5, 6]})", "exactly one of"},
      {R"({"input_ids": [1, 5, 6], "completion_mask": [0, 0, 1], "labels": [-100, 5, 6]})", "exactly one of"},
      {R"({"input_ids": "1 5 6", "completion_mask": [0, 0, 1]})", "list of integers"},
      {R"({"input_ids": [1, 5.5, 6], "completion_mask": [0, 0, 1]})", "list of integers"},
      {R"({"input_ids": [1, 5, 100], "completion_mask": [0, 0, 1]})", "input_ids[2] = 100 is outside"},
      {R"({"input_ids": [1, -5, 6], "completion_mask": [0, 0, 1]})", "input_ids[1] = -5 is outside"},
      {R"({"input_ids": [1, 5, 6], "completion_mask": [0, 1]})", "has 2 entries for 3 input_ids"},
      {R"({"input_ids": [1, 5, 6], "completion_mask": [0, 2, 1]})", "completion_mask[1] is 2"},
      {R"({"input_ids": [1, 5, 6], "labels": [-100, -1, 6]})", "labels[1] = -1 is neither"},
      {R"({"input_ids": [1, 5, 6], "completion_mask": [1, 0, 0]})", "nothing to learn"},
      {R"({"input_ids": [1], "completion_mask": [1]})", "too short"},
      {R"({"input_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "completion_mask": [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]})", "longer than --seq-len"}};
  for (const auto& [row, why] : bad) {
    std::ofstream(path) << good << "\n" << good << "\n" << row << "\n";
    try {
      load_token_jsonl(path.string(), 100, 8);
      ADD_FAILURE() << "accepted: " << row.substr(0, 60);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path.string() + ":3: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
  std::ofstream(path) << "\n";
  EXPECT_THROW(load_token_jsonl(path.string(), 100, 8), Error);  // no rows
  EXPECT_THROW(load_token_jsonl(path.string() + ".missing", 100, 8), Error);
  std::filesystem::remove(path);
}

// The trainer's rows path: each example one sequence of its own length (no padding), the loss
// the mean over the completion targets. Checked against the loss of each completion target alone
// (its example with that one target): the loss is their mean, and the gradient is the mean of
// their gradients, so the masked targets add nothing.
TEST(Sft, CompletionLossIsTheMeanOverCompletionTargets) {
  ParamArena p = arena_from_init(load_config(kTiny), 5);
  HymbaModel m(p.config, p.w);
  const int64_t V = p.config.vocab_size;
  std::vector<SftExample> ex(2);
  const int64_t len[2] = {13, 8};
  for (int k = 0; k < 2; ++k)
    for (int64_t i = 0; i < len[k]; ++i) {
      ex[size_t(k)].inputs.push_back(int32_t((29 * i + 13 * k + 3) % V));
      ex[size_t(k)].targets.push_back(i % 4 == 2 || i == len[k] - 1 ? int32_t((41 * i + 5 * k + 7) % V) : -1);
    }
  std::vector<SeqRef> rows;
  for (int k = 0; k < 2; ++k) rows.push_back({ex[size_t(k)].inputs.data(), ex[size_t(k)].targets.data(), len[k]});
  int64_t counted = 0;
  p.zero_grad();
  const double loss = loss_and_grads(m, p.g, rows, 1.0f, &counted);
  const std::vector<float> g_rows = p.grad;
  ASSERT_EQ(counted, ex[0].counted() + ex[1].counted());
  p.zero_grad();
  double mean = 0;
  for (int k = 0; k < 2; ++k)
    for (int64_t i = 0; i < len[k]; ++i) {
      if (ex[size_t(k)].targets[size_t(i)] < 0) continue;
      std::vector<int32_t> one(size_t(len[k]), -1);
      one[size_t(i)] = ex[size_t(k)].targets[size_t(i)];
      const SeqRef s{ex[size_t(k)].inputs.data(), one.data(), len[k]};
      mean += loss_and_grads(m, p.g, std::span<const SeqRef>(&s, 1), 1.0f / float(counted)) / double(counted);
    }
  EXPECT_NEAR(loss, mean, 1e-5 * mean);
  double err = 0, scale = 0;
  for (size_t i = 0; i < g_rows.size(); ++i) {
    err = std::max(err, double(std::abs(g_rows[i] - p.grad[i])));
    scale = std::max(scale, double(std::abs(p.grad[i])));
  }
  EXPECT_GT(scale, 0.0);
  EXPECT_LT(err, 1e-5 * scale) << "max |rows - per-target| " << err << " of " << scale;
  // and the mask matters: every target counted gives another loss
  std::vector<std::vector<int32_t>> all(2);
  std::vector<SeqRef> every;
  for (int k = 0; k < 2; ++k) {
    for (int64_t i = 0; i < len[k]; ++i) all[size_t(k)].push_back(int32_t((41 * i + 5 * k + 7) % V));
    every.push_back({ex[size_t(k)].inputs.data(), all[size_t(k)].data(), len[k]});
  }
  EXPECT_GT(std::abs(loss_only(m, every) - loss), 1e-3);
}

}  // namespace
}  // namespace hymba
