// PEFT adapter folders that do not fit the base (or are not adapters at all) are refused with an
// error naming the file and the field or tensor, before anything of their announced size is
// allocated; fuzz/adapter_fuzz.cpp explores the rest.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include "base/error.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "model/adapter.h"
#include "train/params.h"

namespace hymba {
namespace {

namespace fs = std::filesystem;

struct T {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  float fill = 0.01f;
};

class AdapterBadInput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    arena_ = new ParamArena(arena_from_init(load_config(std::string(HYMBA_SOURCE_DIR) + "/tests/configs/tiny-hymba.json"), 5));
  }
  static void TearDownTestSuite() { delete arena_; }
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hymba-adapter-bad-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // tiny-hymba: H = 64, d_inner = 128, intermediate = 160, 4 layers.
  static std::string key(int layer, const std::string& module, const std::string& part) {
    return "base_model.model.model.layers." + std::to_string(layer) + "." + module + "." + part;
  }
  void write(const std::string& config, const std::vector<T>& tensors) {
    write_file_atomic((dir_ / "adapter_config.json").string(), config);
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<TensorOut> out;
    for (const T& t : tensors) {
      size_t n = 1;
      for (auto d : t.shape) n *= size_t(d);
      std::vector<uint8_t> b(n * dtype_size(t.dtype));
      if (t.dtype == DType::F32)
        for (size_t i = 0; i < n; ++i) std::memcpy(b.data() + 4 * i, &t.fill, 4);
      bufs.push_back(std::move(b));
      out.push_back({t.name, t.dtype, t.shape, bufs.back().data()});
    }
    write_safetensors((dir_ / "adapter_model.safetensors").string(), out);
  }
  // Loads and returns the error message ("" if it loaded).
  std::string load() {
    try {
      load_peft_adapter(dir_.string(), arena_->config, arena_->w);
      return "";
    } catch (const Error& e) {
      return e.what();
    }
  }
  static std::string cfg(const std::string& extra) {
    return R"({"peft_type": "LORA", "r": 2, "lora_alpha": 4)" + extra + "}";
  }
  static std::vector<T> out_proj(int r = 2) {
    return {{key(0, "mamba.out_proj", "lora_A.weight"), {r, 128}}, {key(0, "mamba.out_proj", "lora_B.weight"), {64, r}}};
  }

  static ParamArena* arena_;
  fs::path dir_;
};
ParamArena* AdapterBadInput::arena_ = nullptr;

#define EXPECT_REFUSED(what)                                                       \
  do {                                                                             \
    const std::string msg = load();                                                \
    EXPECT_NE(msg.find(what), std::string::npos) << "message: '" << msg << "'";   \
  } while (0)

TEST_F(AdapterBadInput, AcceptsAValidAdapter) {
  write(cfg(""), out_proj());
  EXPECT_EQ(load(), "");
}

TEST_F(AdapterBadInput, RejectsBadRankAlphaAndDropout) {
  write(cfg("").replace(cfg("").find("\"r\": 2"), 6, "\"r\": 0"), out_proj());
  EXPECT_REFUSED("r must be >= 1");
  write(cfg("").replace(cfg("").find("\"r\": 2"), 6, "\"r\": 2.5"), out_proj());
  EXPECT_REFUSED("r must be an integer");
  write(cfg("").replace(cfg("").find("\"r\": 2"), 6, "\"r\": \"2\""), out_proj());
  EXPECT_REFUSED("r must be an integer");
  // A huge r is refused from the tensors' shapes, before r-sized arenas are allocated.
  write(cfg("").replace(cfg("").find("\"r\": 2"), 6, "\"r\": 1000000000000"), out_proj());
  EXPECT_REFUSED("r is 1000000000000");
  write(cfg("").replace(cfg("").find("\"r\": 2"), 6, "\"r\": 3"), out_proj());
  EXPECT_REFUSED("lora_A.weight has shape [2, 128], r is 3");
  for (const char* alpha : {"0", "-4"}) {
    write(R"({"peft_type": "LORA", "r": 2, "lora_alpha": )" + std::string(alpha) + "}", out_proj());
    EXPECT_REFUSED("lora_alpha must be a finite number > 0");
  }
  write(R"({"peft_type": "LORA", "r": 2, "lora_alpha": 1e400})", out_proj());
  EXPECT_REFUSED("adapter_config.json: [json.exception.out_of_range.406] number overflow");
  write(cfg(R"(, "lora_dropout": 1.5)"), out_proj());
  EXPECT_REFUSED("lora_dropout must be in [0, 1)");
  write(cfg(R"(, "use_dora": "yes")"), out_proj());
  EXPECT_REFUSED("adapter_config.json");
}

TEST_F(AdapterBadInput, RejectsTensorsThatDoNotFitTheBase) {
  auto t = out_proj();
  t[1].shape = {65, 2};
  write(cfg(""), t);
  EXPECT_REFUSED("has shape [65, 2], the base model needs [64, 2]");
  write(cfg(""), {out_proj()[0]});
  EXPECT_REFUSED("incomplete adapter for base_model.model.model.layers.0.mamba.out_proj.lora_B.weight");
  t = out_proj();
  t[0].dtype = DType::I32;
  write(cfg(""), t);
  EXPECT_REFUSED("unsupported dtype");
  t = out_proj();
  t[0].fill = std::numeric_limits<float>::quiet_NaN();
  write(cfg(""), t);
  EXPECT_REFUSED("has NaN or Inf values");
  t = out_proj();
  t.push_back({"base_model.model.model.memory_tokens", {8, 64}, DType::F32, std::numeric_limits<float>::infinity()});
  write(cfg(R"(, "modules_to_save": ["memory_tokens"])"), t);
  EXPECT_REFUSED("memory_tokens has NaN or Inf values");
  t = out_proj();
  t.push_back({key(0, "self_attn.q_proj", "lora_A.weight"), {2, 64}});
  write(cfg(""), t);
  EXPECT_REFUSED("self_attn.q_proj.lora_A.weight is not a LoRA tensor of a Hymba linear layer");
  t = out_proj();
  t[0].name = key(4, "mamba.out_proj", "lora_A.weight");
  write(cfg(""), t);
  EXPECT_REFUSED("the model has only 4 layers");
  // A layer index beyond int made std::stoi throw std::out_of_range, which is no hymba::Error.
  t = out_proj();
  t[0].name = "base_model.model.model.layers.99999999999999999999.mamba.out_proj.lora_A.weight";
  write(cfg(""), t);
  EXPECT_REFUSED("layer index out of range");
}

TEST_F(AdapterBadInput, RejectsDoraMagnitudeMismatch) {
  write(cfg(R"(, "use_dora": true)"), out_proj());
  EXPECT_REFUSED("missing tensor base_model.model.model.layers.0.mamba.out_proj.lora_magnitude_vector");
  auto t = out_proj();
  t.push_back({key(0, "mamba.out_proj", "lora_magnitude_vector"), {64}, DType::F32, 1.0f});
  write(cfg(""), t);
  EXPECT_REFUSED("is a DoRA magnitude but adapter_config.json has no use_dora: true");
  write(cfg(R"(, "use_dora": true)"), t);
  EXPECT_EQ(load(), "");
}

TEST_F(AdapterBadInput, RejectsFilesThatAreNotAnAdapter) {
  write("not json", out_proj());
  EXPECT_REFUSED("adapter_config.json");
  write("[1, 2]", out_proj());
  EXPECT_REFUSED("missing \"peft_type\"");
  write(R"({"peft_type": "IA3", "r": 2})", out_proj());
  EXPECT_REFUSED("peft_type IA3 is not supported");
  write(cfg(""), {});
  EXPECT_REFUSED("no adapter tensors");
  write_file_atomic((dir_ / "adapter_model.safetensors").string(), "garbage");
  EXPECT_REFUSED("adapter_model.safetensors");
}

}  // namespace
}  // namespace hymba
