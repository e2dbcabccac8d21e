#include "runtime/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/error.h"

namespace fs = std::filesystem;

namespace hymba {
namespace {

const std::string kSpace = "\xE2\x96\x81";        // "▁", SentencePiece's whitespace symbol
const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD
const std::string kUnkSurface = " \xE2\x81\x87 "; // " ⁇ ", SentencePiece's default unk surface

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  HYMBA_CHECK(f.good(), "tokenizer: cannot read " + p.string());
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    fail("tokenizer: " + p.string() + " is not valid JSON: " + e.what());
  }
}

bool get_bool(const nlohmann::json& j, const char* key, bool dflt, const fs::path& p) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  HYMBA_CHECK(j[key].is_boolean(), "tokenizer: " + p.string() + ": '" + key + "' must be true/false");
  return j[key].get<bool>();
}

// Token strings in HF configs are either "text" or {"content": "text", ...}.
std::string token_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

// Length of the UTF-8 sequence starting with lead byte b (0 = invalid lead), and the valid range
// of its second byte (stricter than 80..BF to reject overlongs and surrogates, per RFC 3629).
int utf8_len(unsigned char b, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80, *hi = 0xBF;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) {
    if (b == 0xE0) *lo = 0xA0;
    if (b == 0xED) *hi = 0x9F;
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    if (b == 0xF0) *lo = 0x90;
    if (b == 0xF4) *hi = 0x8F;
    return 4;
  }
  return 0;
}

// Moves the complete part of `buf` to the result; invalid bytes become U+FFFD (one per maximal
// invalid subpart). An unfinished but so-far valid tail stays in `buf` unless `final`.
std::string take_utf8(std::string& buf, bool final) {
  std::string out;
  size_t i = 0;
  while (i < buf.size()) {
    unsigned char lo, hi;
    const int n = utf8_len(static_cast<unsigned char>(buf[i]), &lo, &hi);
    if (n == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    int k = 1;  // bytes of this sequence that are valid so far
    while (k < n && i + k < buf.size()) {
      const unsigned char c = static_cast<unsigned char>(buf[i + k]);
      const bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
      if (!ok) break;
      ++k;
    }
    if (k == n) {
      out.append(buf, i, n);
      i += n;
    } else if (i + k == buf.size() && !final) {
      break;  // may still complete with the next token's bytes
    } else {
      out += kReplacement;
      i += k;
    }
  }
  buf.erase(0, i);
  return out;
}

}  // namespace

Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& dir) {
  const fs::path root(dir);
  const fs::path model = root / "tokenizer.model";
  HYMBA_CHECK(fs::is_regular_file(model), "tokenizer: " + model.string() + " not found");
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  t->sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto st = t->sp_->Load(model.string());
  HYMBA_CHECK(st.ok(), "tokenizer: cannot load " + model.string() + ": " + st.ToString());
  t->sp_size_ = t->sp_->GetPieceSize();
  t->bos_ = t->sp_->bos_id();
  t->eos_ = t->sp_->eos_id();
  t->unk_ = t->sp_->unk_id();
  t->pad_ = t->sp_->pad_id();

  std::string pad_text;
  const fs::path cfg_path = root / "tokenizer_config.json";
  std::vector<std::pair<std::string, int64_t>> added;
  if (fs::exists(cfg_path)) {
    const auto cfg = read_json(cfg_path);
    HYMBA_CHECK(cfg.is_object(), "tokenizer: " + cfg_path.string() + " must hold a JSON object");
    t->add_bos_ = get_bool(cfg, "add_bos_token", true, cfg_path);
    t->add_eos_ = get_bool(cfg, "add_eos_token", false, cfg_path);
    t->legacy_ = get_bool(cfg, "legacy", true, cfg_path);
    t->add_prefix_space_ = get_bool(cfg, "add_prefix_space", true, cfg_path);
    if (cfg.contains("pad_token")) pad_text = token_text(cfg["pad_token"]);
    if (cfg.contains("added_tokens_decoder") && cfg["added_tokens_decoder"].is_object()) {
      for (const auto& [key, v] : cfg["added_tokens_decoder"].items()) {
        int64_t id = -1;
        try {
          id = std::stoll(key);
        } catch (...) {
          fail("tokenizer: " + cfg_path.string() + ": added_tokens_decoder key '" + key + "' is not an id");
        }
        const std::string text = token_text(v);
        HYMBA_CHECK(!text.empty(), "tokenizer: " + cfg_path.string() + ": added token " + key + " has no content");
        if (id >= t->sp_size_) added.emplace_back(text, id);  // lower ids are SentencePiece's own
      }
    }
  }
  const fs::path added_path = root / "added_tokens.json";
  if (fs::exists(added_path)) {
    const auto j = read_json(added_path);
    HYMBA_CHECK(j.is_object(), "tokenizer: " + added_path.string() + " must map token text to id");
    for (const auto& [text, v] : j.items()) {
      HYMBA_CHECK(v.is_number_integer() && !text.empty(),
                  "tokenizer: " + added_path.string() + ": entry '" + text + "' must map to an integer id");
      const int64_t id = v.get<int64_t>();
      if (id < t->sp_size_) {
        // HF only lists base ids here when the text is that very piece; anything else is a conflict.
        HYMBA_CHECK(id >= 0 && t->sp_->IdToPiece(static_cast<int>(id)) == text,
                    "tokenizer: " + added_path.string() + ": '" + text + "' -> " + std::to_string(id) +
                        " collides with SentencePiece piece '" +
                        (id >= 0 ? t->sp_->IdToPiece(static_cast<int>(id)) : std::string("?")) + "'");
        continue;
      }
      added.emplace_back(text, id);
    }
  }
  for (const auto& [text, id] : added) {
    auto it = t->added_.find(static_cast<int32_t>(id));
    HYMBA_CHECK(it == t->added_.end() || it->second == text,
                "tokenizer: added token id " + std::to_string(id) + " is both '" +
                    (it == t->added_.end() ? std::string() : it->second) + "' and '" + text + "' in " + dir);
    HYMBA_CHECK(id < INT32_MAX, "tokenizer: added token id " + std::to_string(id) + " too large in " + dir);
    t->added_[static_cast<int32_t>(id)] = text;
  }
  // Ids must continue the SentencePiece vocab without holes, so vocab_size() covers exactly them.
  for (int64_t id = t->sp_size_; id < t->sp_size_ + static_cast<int64_t>(t->added_.size()); ++id)
    HYMBA_CHECK(t->added_.count(static_cast<int32_t>(id)),
                "tokenizer: added tokens in " + dir + " must use ids " + std::to_string(t->sp_size_) + ".." +
                    std::to_string(t->sp_size_ + t->added_.size() - 1) + " without gaps (missing " +
                    std::to_string(id) + ")");
  for (const auto& [id, text] : t->added_) t->added_by_len_.emplace_back(text, id);
  std::sort(t->added_by_len_.begin(), t->added_by_len_.end(),
            [](const auto& a, const auto& b) { return a.first.size() != b.first.size() ? a.first.size() > b.first.size() : a.second < b.second; });

  if (!pad_text.empty()) {
    for (const auto& [text, id] : t->added_by_len_)
      if (text == pad_text) t->pad_ = id;
    const int sp_id = t->sp_->PieceToId(pad_text);
    if (t->pad_ < 0 && t->sp_->IdToPiece(sp_id) == pad_text) t->pad_ = sp_id;
    HYMBA_CHECK(t->pad_ >= 0, "tokenizer: " + cfg_path.string() + ": pad_token '" + pad_text + "' is not in the vocab");
  }
  {
    std::vector<int> ids;
    t->sp_->Encode(t->sp_->IdToPiece(t->unk_), &ids);
    t->unk_prefix_len_ = static_cast<int>(ids.size());
  }
  return t;
}

int64_t Tokenizer::vocab_size() const { return sp_size_ + static_cast<int64_t>(added_.size()); }

std::string Tokenizer::piece(int32_t id) const {
  HYMBA_CHECK(id >= 0 && id < vocab_size(),
              "tokenizer: token id " + std::to_string(id) + " outside the vocab [0, " + std::to_string(vocab_size()) + ")");
  if (id < sp_size_) return sp_->IdToPiece(id);
  return added_.at(id);
}

bool Tokenizer::is_control(int32_t id) const { return id >= 0 && id < sp_size_ && sp_->IsControl(id); }

std::vector<int32_t> Tokenizer::encode_segment(const std::string& text, bool dummy_prefix) const {
  std::vector<int> ids;
  if (dummy_prefix) {
    const auto st = sp_->Encode(text, &ids);
    HYMBA_CHECK(st.ok(), "tokenizer: encode failed: " + st.ToString());
  } else {
    // Same trick as HF's non-legacy LlamaTokenizer: encode "<unk>" + text and drop the pieces of
    // "<unk>", so the dummy prefix lands on them and not on the text.
    const auto st = sp_->Encode(sp_->IdToPiece(unk_) + text, &ids);
    HYMBA_CHECK(st.ok(), "tokenizer: encode failed: " + st.ToString());
    ids.erase(ids.begin(), ids.begin() + std::min<size_t>(ids.size(), unk_prefix_len_));
  }
  return {ids.begin(), ids.end()};
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos) {
    HYMBA_CHECK(bos_ >= 0, "tokenizer: BOS requested but the model has no <s>");
    out.push_back(bos_);
  }
  size_t seg_start = 0, i = 0;
  bool after_added = false;
  auto flush_segment = [&](size_t end) {
    if (end > seg_start) {
      // legacy=true (Hymba): every segment gets SentencePiece's dummy prefix, as HF's slow
      // tokenizer encodes each chunk between added tokens separately.
      const bool prefix = after_added ? legacy_ && add_prefix_space_ : add_prefix_space_;
      const auto ids = encode_segment(text.substr(seg_start, end - seg_start), prefix);
      out.insert(out.end(), ids.begin(), ids.end());
    }
  };
  while (i < text.size()) {
    bool matched = false;
    for (const auto& [s, id] : added_by_len_) {
      if (text.compare(i, s.size(), s) == 0) {
        flush_segment(i);
        out.push_back(id);
        i += s.size();
        seg_start = i;
        after_added = true;
        matched = true;
        break;
      }
    }
    if (!matched) ++i;
  }
  flush_segment(text.size());
  if (add_eos_) {
    HYMBA_CHECK(eos_ >= 0, "tokenizer: add_eos_token is set but the model has no </s>");
    out.push_back(eos_);
  }
  return out;
}

std::string Tokenizer::token_bytes(int32_t id, bool first, bool* is_text_piece) const {
  HYMBA_CHECK(id >= 0 && id < vocab_size(),
              "tokenizer: cannot decode token id " + std::to_string(id) + ": outside the vocab [0, " +
                  std::to_string(vocab_size()) + ")");
  *is_text_piece = false;
  if (id >= sp_size_) return added_.at(id);
  if (sp_->IsControl(id)) return {};
  if (sp_->IsUnknown(id)) return kUnkSurface;
  const std::string p = sp_->IdToPiece(id);
  if (sp_->IsByte(id)) {
    // "<0xNN>"
    HYMBA_CHECK(p.size() == 6 && p.compare(0, 3, "<0x") == 0, "tokenizer: malformed byte piece '" + p + "'");
    const char b = static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16));
    if (first && add_prefix_space_ && b == ' ') return {};  // HF strips the first space, byte or not
    return std::string(1, b);
  }
  *is_text_piece = true;
  std::string s;
  size_t pos = 0;
  if (first && add_prefix_space_ && p.compare(0, kSpace.size(), kSpace) == 0) pos = kSpace.size();
  while (pos < p.size()) {
    if (p.compare(pos, kSpace.size(), kSpace) == 0) {
      s += ' ';
      pos += kSpace.size();
    } else {
      s += p[pos++];
    }
  }
  return s;
}

std::string Tokenizer::Stream::push(int32_t id) {
  bool text_piece = false;
  const std::string bytes = tok_->token_bytes(id, first_, &text_piece);
  if (!tok_->is_control(id)) first_ = false;  // <s> before the text does not count as the first piece
  pending_ += bytes;
  return take_utf8(pending_, false);
}

std::string Tokenizer::Stream::flush() { return take_utf8(pending_, true); }

void Tokenizer::Stream::reset() {
  pending_.clear();
  first_ = true;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  Stream s(*this);  // one code path, so streaming and whole-sequence decoding agree exactly
  std::string out;
  for (int32_t id : ids) out += s.push(id);
  out += s.flush();
  return out;
}

}  // namespace hymba
