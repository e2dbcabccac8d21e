// tokenizer_config.json + added_tokens.json beside the bundled model's tokenizer.model. The input
// is split at the first "\n@@\n": before it tokenizer_config.json, after it added_tokens.json
// (absent when there is no separator). A tokenizer that loads must encode and decode.
#include <cstdint>
#include <filesystem>
#include <string>

#include "fuzz_util.h"
#include "runtime/tokenizer.h"

using namespace hymba;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::filesystem::copy_file(fuzz::source_dir() + "/models/hymba-kjv/tokenizer.model",
                             fuzz::scratch() + "/tokenizer.model");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t cut = in.find("\n@@\n");
  fuzz::put_file("tokenizer_config.json", in.data(), std::min(cut, in.size()));
  std::error_code ec;
  if (cut == std::string::npos) std::filesystem::remove(fuzz::scratch() + "/added_tokens.json", ec);
  else fuzz::put_file("added_tokens.json", in.data() + cut + 4, in.size() - cut - 4);
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = Tokenizer::load(fuzz::scratch());
  } catch (const Error&) {
    return 0;
  }
  std::string text = "And God said <s> [PAD] \xE2\x96\x81x";
  for (int64_t id = tok->sp_vocab_size(); id < tok->vocab_size(); ++id) text += tok->piece(int32_t(id)) + " y";
  const auto ids = tok->encode(text);
  for (int32_t id : ids) fuzz::require(id >= 0 && id < tok->vocab_size(), "encode gives ids in the vocab");
  std::string streamed;
  auto st = tok->stream();
  for (int32_t id : ids) streamed += st.push(id);
  streamed += st.flush();
  fuzz::require(streamed == tok->decode(ids), "streamed detokenization == decode");
  return 0;
}
