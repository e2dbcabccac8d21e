// The ways weights get into memory (read into huge pages, mmap, mlock; src/io/safetensors.h)
// hold the same bytes and give the same logits, also when --quantize drops the stored copies.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "io/safetensors.h"
#include "model/init.h"
#include "runtime/engine.h"

namespace hymba {
namespace {

// Widths that are multiples of 32, so --quantize q8 converts every linear layer and the tied head.
const char* kConfig = R"({
  "model_type": "hymba", "vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 3,
  "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
  "rope": true, "rope_theta": 10000.0, "rope_type": "ntk",
  "max_position_embeddings": 128, "orig_max_position_embeddings": 64,
  "num_memory_tokens": 4, "sliding_window": 4, "global_attn_idx": [0, 2],
  "kv_reuse_group": [], "mamba_d_state": 4, "mamba_d_conv": 4, "mamba_expand": 2,
  "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0
})";

std::string model_dir() {
  static std::string dir;
  if (dir.empty()) {
    dir = (std::filesystem::temp_directory_path() / ("hymba-load-modes-" + std::to_string(getpid()))).string();
    init_checkpoint(config_from_json(nlohmann::json::parse(kConfig)), dir, 7, DType::BF16);
  }
  return dir;
}

std::vector<float> logits(const LoadOptions& io, bool q8) {
  EngineOptions eo;
  eo.io = io;
  eo.quantize = q8 ? DType::Q8 : DType::F32;
  auto e = Engine::load(model_dir(), eo);
  auto s = e->new_sequence();
  // Token 5 twice: its embedding row is looked up after the quantizer released what it could.
  return e->eval_one(s, {5, 9, 17, 5, 60});
}

}  // namespace

TEST(LoadModes, ReadAndMmapHoldTheSameBytes) {
  auto r = SafetensorsFile::open(model_dir(), {.mmap = false, .mlock = false});
  auto m = SafetensorsFile::open(model_dir(), {.mmap = true, .mlock = true});
  EXPECT_FALSE(r->mapped());
  EXPECT_TRUE(m->mapped());
  ASSERT_EQ(r->tensors().size(), m->tensors().size());
  for (auto& [name, t] : r->tensors()) {
    const TensorInfo* u = m->find(name);
    ASSERT_NE(u, nullptr) << name;
    EXPECT_NE(t.data, u->data);
    ASSERT_EQ(t.nbytes, u->nbytes) << name;
    EXPECT_EQ(std::memcmp(t.data, u->data, t.nbytes), 0) << name;
  }
}

TEST(LoadModes, HugeBufferIsAlignedZeroedAndMovable) {
  HugeBuffer b(3 << 20);
  ASSERT_NE(b.data(), nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % (2 << 20), 0u);
  EXPECT_EQ(b.size(), size_t(3 << 20));
  for (size_t i = 0; i < b.size(); i += 4093) ASSERT_EQ(b.data()[i], 0);
  b.data()[b.size() - 1] = 7;
  HugeBuffer c = std::move(b);
  EXPECT_EQ(b.data(), nullptr);
  EXPECT_EQ(c.data()[c.size() - 1], 7);
  EXPECT_EQ(HugeBuffer(0).data(), nullptr);
}

TEST(LoadModes, SameLogitsWithAndWithoutMmapAndQuantize) {
  for (bool q8 : {false, true}) {
    const auto a = logits({.mmap = false, .mlock = false}, q8);
    const auto b = logits({.mmap = true, .mlock = false}, q8);
    const auto c = logits({.mmap = false, .mlock = true}, q8);
    ASSERT_EQ(a.size(), 61u);
    EXPECT_EQ(a, b) << "q8 " << q8;
    EXPECT_EQ(a, c) << "q8 " << q8;
  }
  // And the quantization did happen (so the release of the stored copies was exercised).
  EXPECT_NE(logits({}, false), logits({}, true));
}

}  // namespace hymba
