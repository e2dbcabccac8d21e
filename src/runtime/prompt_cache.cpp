#include "runtime/prompt_cache.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "io/files.h"

namespace hymba {

namespace {
constexpr char kMagic[8] = {'H', 'Y', 'M', 'B', 'A', 'P', 'C', '1'};
}

void check_prompt_cache_path(const std::string& path, const std::string& model_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(fs::absolute(path), ec);
  const fs::path m = fs::weakly_canonical(fs::absolute(model_dir), ec);
  const auto rel = p.lexically_relative(m);
  HYMBA_CHECK(ec || rel.empty() || *rel.begin() == "..",
              "--prompt-cache " + path + " is inside the model folder " + model_dir +
                  ": refusing to write there (choose a path outside it)");
  if (!fs::exists(fs::symlink_status(path))) return;
  HYMBA_CHECK(fs::is_regular_file(path), "--prompt-cache " + path + " exists and is not a regular file");
  char head[sizeof kMagic] = {};
  std::ifstream f(path, std::ios::binary);
  f.read(head, sizeof head);
  HYMBA_CHECK(f.gcount() == sizeof head && std::memcmp(head, kMagic, sizeof kMagic) == 0,
              "--prompt-cache " + path + " exists and is not a hymba prompt cache: refusing to "
              "overwrite it (delete it or choose another path)");
}

std::string encode_prompt_cache(uint64_t model_tag, const std::vector<int32_t>& tokens, const SequenceState& s) {
  std::string out(kMagic, sizeof kMagic);
  const uint64_t n = tokens.size();
  out.append(reinterpret_cast<const char*>(&model_tag), 8);
  out.append(reinterpret_cast<const char*>(&n), 8);
  if (n > 0) out.append(reinterpret_cast<const char*>(tokens.data()), n * sizeof(int32_t));
  out += serialize_state(s);
  return out;
}

void decode_prompt_cache(uint64_t model_tag, const std::string& b, std::vector<int32_t>* tokens,
                         SequenceState* s) {
  HYMBA_CHECK(b.size() >= 24 && std::memcmp(b.data(), kMagic, 8) == 0, "not a hymba prompt cache");
  uint64_t tag, n;
  std::memcpy(&tag, b.data() + 8, 8);
  std::memcpy(&n, b.data() + 16, 8);
  HYMBA_CHECK(tag == model_tag, "saved with another model, --quantize or --cache-type");
  HYMBA_CHECK(n <= (b.size() - 24) / sizeof(int32_t), "truncated");
  std::vector<int32_t> t(static_cast<size_t>(n));
  if (n > 0) std::memcpy(t.data(), b.data() + 24, size_t(n) * sizeof(int32_t));
  SequenceState loaded = *s;
  deserialize_state(loaded, b.substr(24 + size_t(n) * sizeof(int32_t)));
  HYMBA_CHECK(loaded.n_pos == s->n_pos + int64_t(n), "state position does not match its token count");
  *tokens = std::move(t);
  *s = std::move(loaded);
}

}  // namespace hymba
