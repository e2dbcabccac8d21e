// A processed prompt saved to disk (llama.cpp's --prompt-cache): the token ids fed so far and
// the sequence's whole state after them (K/V rings, conv and SSM states), so that a later run
// whose prompt starts with those tokens skips them. A recurrent state cannot be rolled back, so
// only an exact prefix of the new prompt can be reused.
// File: "HYMBAPC1", u64 model tag, u64 n, n x i32 tokens, serialize_state bytes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/files.h"
#include "runtime/engine.h"

namespace hymba {

// Refuses (throws naming the path) a --prompt-cache path that writing would damage: an existing
// file that is not a prompt cache of ours (no magic header), something that is not a regular
// file, or a path inside the model folder. Call before any work.
void check_prompt_cache_path(const std::string& path, const std::string& model_dir);

// The file's bytes, and back: decode checks the magic, the tag (Engine::model_tag()), the sizes
// and that the state's position fits the token count, and throws hymba::Error otherwise, leaving
// `s` (a fresh state of the model) and `tokens` untouched. Without an Engine, so it can be fuzzed.
std::string encode_prompt_cache(uint64_t model_tag, const std::vector<int32_t>& tokens, const SequenceState& s);
void decode_prompt_cache(uint64_t model_tag, const std::string& bytes, std::vector<int32_t>* tokens,
                         SequenceState* s);

// Written atomically (temp file + rename).
inline void save_prompt_cache(const Engine& eng, const std::string& path, const std::vector<int32_t>& tokens,
                              const SequenceState& s) {
  write_file_atomic(path, encode_prompt_cache(eng.model_tag(), tokens, s));
}

// Loads into `s` (a fresh eng.new_sequence()) and `tokens`. Returns false and says why in `why`
// when the file is absent, damaged, or from another model or cache type; `s` is then untouched.
inline bool load_prompt_cache(const Engine& eng, const std::string& path, std::vector<int32_t>* tokens,
                              SequenceState* s, std::string* why) {
  if (!file_exists(path)) {
    *why = "no such file (it will be written)";
    return false;
  }
  try {
    decode_prompt_cache(eng.model_tag(), read_file(path), tokens, s);
    return true;
  } catch (const Error& e) {
    *why = e.what();
    return false;
  }
}

}  // namespace hymba
