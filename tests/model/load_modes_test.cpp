// The ways weights get into memory (read into huge pages, mmap, mlock; src/io/safetensors.h)
// hold the same bytes and give the same logits, also when --quantize drops the stored copies.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "io/safetensors.h"
#include "model/weights.h"
#include "ops/quant.h"
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

// Quantized at load to q4_0, the layer matrices whose shape fits are repacked to the x8 layout
// where the decode GEMV prefers it (AVX2), the others keep the plain one; every product is the
// same bits as without the repack (one GEMV row and a prefill-sized GEMM).
TEST(LoadModes, Q4_0RepackedForTheGemvGivesTheSameProducts) {
  auto cfg = nlohmann::json::parse(kConfig);
  cfg["hidden_size"] = 64, cfg["intermediate_size"] = 96;  // gate/up [96, 64] fit, down [64, 96] not
  const std::string dir = model_dir() + "-q4";
  init_checkpoint(config_from_json(cfg), dir, 7, DType::BF16);
  auto a = load_checkpoint(dir, {.mmap = true, .mlock = false});
  auto b = load_checkpoint(dir, {.mmap = true, .mlock = false});
  quantize_weights(*a, DType::Q4_0);
  quantize_weights(*b, DType::Q4_0);
  const bool pref = matmul_q4_0x8_preferred();
  EXPECT_EQ(repack_q4_0x8_matrices(*b) > 0, pref);  // a keeps the plain layout
  const auto ma = named_matrices(a->weights), mb = named_matrices(b->weights);
  ASSERT_EQ(ma.size(), mb.size());
  int repacked = 0, plain = 0;
  for (size_t i = 0; i < ma.size(); ++i) {
    const MatView &p = *ma[i].second, &q = *mb[i].second;
    ASSERT_EQ(ma[i].first, mb[i].first);
    const bool fits = q.dtype == DType::Q4_0 && q4_0x8_fits(q.rows, q.cols);
    EXPECT_EQ(q.x8, pref && fits) << ma[i].first;
    repacked += q.x8, plain += q.dtype == DType::Q4_0 && !q.x8;
    for (int64_t M : {1, 20}) {
      std::vector<float> in(size_t(M * q.cols)), x(size_t(M * q.rows)), y(x.size());
      for (size_t k = 0; k < in.size(); ++k) in[k] = float(int(k * 37 % 23) - 11) * 0.05f;
      matmul_forward(x.data(), in.data(), p, nullptr, M);
      matmul_forward(y.data(), in.data(), q, nullptr, M);
      EXPECT_EQ(x, y) << ma[i].first << " M=" << M;
    }
  }
  EXPECT_GT(plain, 0);  // down_proj [64, 96]: 3 blocks per row
  if (pref) EXPECT_GT(repacked, 0);
  std::filesystem::remove_all(dir);
}

}  // namespace hymba
