// A processed prompt saved to disk (llama.cpp's --prompt-cache): the token ids fed so far and
// the sequence's whole state after them (K/V rings, conv and SSM states), so that a later run
// whose prompt starts with those tokens skips them. A recurrent state cannot be rolled back, so
// only an exact prefix of the new prompt can be reused.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace hymba {

// Refuses (throws naming the path) a --prompt-cache path that writing would damage: an existing
// file that is not a prompt cache of ours (no magic header), something that is not a regular
// file, or a path inside the model folder. Call before any work.
void check_prompt_cache_path(const std::string& path, const std::string& model_dir);

// Written atomically (temp file + rename).
void save_prompt_cache(const Engine& eng, const std::string& path, const std::vector<int32_t>& tokens,
                       const SequenceState& s);

// Loads into `s` (a fresh eng.new_sequence()) and `tokens`. Returns false and says why in `why`
// when the file is absent, damaged, or from another model or cache type; `s` is then untouched.
bool load_prompt_cache(const Engine& eng, const std::string& path, std::vector<int32_t>* tokens,
                       SequenceState* s, std::string* why);

}  // namespace hymba
