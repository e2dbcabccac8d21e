// Tokenizer: Hugging Face LlamaTokenizer (slow, legacy=true) behaviour on top of libsentencepiece.
// A model folder holds tokenizer.model, optionally tokenizer_config.json (add_bos_token,
// add_eos_token, legacy, add_prefix_space, pad_token, added_tokens_decoder) and added_tokens.json
// ({"[PAD]": 32000}: ids past the SentencePiece vocab, matched in text as single tokens).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace hymba {

class Tokenizer {
 public:
  // Throws hymba::Error naming the file when tokenizer.model is missing/corrupt or a JSON is bad.
  static std::unique_ptr<Tokenizer> load(const std::string& dir);
  ~Tokenizer();

  // Text -> ids. Added tokens are split out first; each text segment is encoded by SentencePiece
  // (dummy prefix "▁" on the first segment if add_prefix_space, on later segments only if legacy).
  // add_eos_token from the config is applied too.
  std::vector<int32_t> encode(const std::string& text, bool add_bos) const;
  std::vector<int32_t> encode(const std::string& text) const { return encode(text, add_bos_); }

  // Ids -> text: control tokens (<s>, </s>) print nothing, added tokens print their text, byte
  // tokens are assembled into UTF-8 (invalid bytes become U+FFFD), one leading space of the first
  // piece is dropped (the dummy prefix). Throws on ids outside [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t pad() const { return pad_; }  // -1 if the tokenizer has none
  int32_t unk() const { return unk_; }
  bool add_bos_default() const { return add_bos_; }
  int64_t vocab_size() const;            // SentencePiece pieces + added tokens
  int64_t sp_vocab_size() const { return sp_size_; }
  std::string piece(int32_t id) const;   // raw piece ("▁the", "<0x0A>", "[PAD]"); throws if out of range
  bool is_control(int32_t id) const;

  // Streaming detokeniser: feed generated ids one at a time, get back the UTF-8 text that is now
  // complete. Bytes of a character split over several <0x..> tokens are held back until the
  // character is complete. The concatenation of all push() results plus flush() == decode(ids).
  class Stream {
   public:
    explicit Stream(const Tokenizer& tok) : tok_(&tok) {}
    std::string push(int32_t id);
    std::string flush();  // emits held-back bytes (as U+FFFD if they never completed a character)
    void reset();

   private:
    const Tokenizer* tok_;
    std::string pending_;  // bytes of an unfinished UTF-8 character
    bool first_ = true;    // no visible piece emitted yet (leading-space rule)
  };
  Stream stream() const { return Stream(*this); }

 private:
  Tokenizer() = default;
  std::vector<int32_t> encode_segment(const std::string& text, bool dummy_prefix) const;
  // Raw bytes a token contributes (before UTF-8 validation), and whether it is a byte token.
  std::string token_bytes(int32_t id, bool first, bool* is_text_piece) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int64_t sp_size_ = 0;
  int32_t bos_ = -1, eos_ = -1, pad_ = -1, unk_ = 0;
  bool add_bos_ = true, add_eos_ = false, legacy_ = true, add_prefix_space_ = true;
  std::unordered_map<int32_t, std::string> added_;       // id -> text (ids >= sp vocab, or overrides)
  std::vector<std::pair<std::string, int32_t>> added_by_len_;  // longest first, for matching
  int unk_prefix_len_ = 0;  // pieces of "<unk>" (HF's trick to encode without a dummy prefix)
};

}  // namespace hymba
