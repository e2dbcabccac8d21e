// Training data: token files, the corpus tokenizer behind `hymba tokenize`, and batch samplers.
//
// Token file (.tok), little-endian:
//   offset 0  char[8]  "HYMBATOK"
//          8  u32      version (1)
//         12  u32      bytes per id: 2 (uint16, vocab <= 65536) or 4 (uint32)
//         16  u64      count of ids
//         24  u32      vocab size (every id < vocab)
//         28  u32      reserved (0)
//         32  ids      count * bytes-per-id
// Written atomically; read through mmap. Documents are stored as <s> text </s> back to back, so
// EOS separates documents and every document starts the way a prompt does (with BOS when the
// tokenizer_config.json says add_bos_token, true by default as in Hymba).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hymba {

constexpr size_t kTokenFileHeaderBytes = 32;

// Throws hymba::Error if an id is outside [0, vocab_size).
void write_token_file(const std::string& path, const int32_t* ids, int64_t count, int64_t vocab_size);
inline void write_token_file(const std::string& path, const std::vector<int32_t>& ids, int64_t vocab_size) {
  write_token_file(path, ids.data(), int64_t(ids.size()), vocab_size);
}

// Read-only mmap of a token file; validates the header and the file size.
class TokenFile {
 public:
  explicit TokenFile(const std::string& path);
  ~TokenFile();
  TokenFile(TokenFile&& o) noexcept;
  TokenFile& operator=(TokenFile&&) = delete;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t size() const { return count_; }
  int64_t vocab_size() const { return vocab_; }
  int bytes_per_id() const { return width_; }
  const std::string& path() const { return path_; }
  int32_t operator[](int64_t i) const;
  void copy(int64_t start, int64_t n, int32_t* out) const;  // ids [start, start+n)
  std::vector<int32_t> read_all() const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* ids_ = nullptr;
  int64_t count_ = 0, vocab_ = 0;
  int width_ = 0;
};

// Deterministic RNG with a single u64 of state (splitmix64): store the state in a checkpoint and
// the same batches follow on resume.
uint64_t rng_next(uint64_t& state);
uint64_t rng_below(uint64_t& state, uint64_t n);  // uniform in [0, n), n > 0

// Windows of seq_len+1 consecutive ids: inputs = ids[s, s+L), targets = ids[s+1, s+L+1).
class TokenWindows {
 public:
  explicit TokenWindows(const std::string& path);

  int64_t num_tokens() const { return file_.size(); }
  int64_t vocab_size() const { return file_.vocab_size(); }

  // B windows with starts uniform in [0, N-seq_len-1]; advances rng_state. inputs/targets are
  // [B, seq_len] row-major. Throws if the file holds fewer than seq_len+1 ids.
  void sample(int B, int seq_len, uint64_t& rng_state, int32_t* inputs, int32_t* targets) const;

  // Sequential, non-overlapping windows for evaluation: window i starts at i*seq_len; there are
  // (N-1)/seq_len of them (the tail shorter than a window is dropped).
  int64_t num_sequential(int seq_len) const;
  void sequential(int64_t index, int seq_len, int32_t* inputs, int32_t* targets) const;

 private:
  TokenFile file_;
};

// Walks the sequential windows in batches of up to B: while (it.next(in, tg, rows)) {...}.
class SequentialWindows {
 public:
  SequentialWindows(const TokenWindows& w, int B, int seq_len, int64_t max_windows = -1);
  int64_t total() const { return total_; }
  bool next(int32_t* inputs, int32_t* targets, int& rows);  // rows <= B filled
  void reset() { pos_ = 0; }

 private:
  const TokenWindows& w_;
  int B_, L_;
  int64_t total_, pos_ = 0;
};

// `hymba tokenize`.
struct TokenizeOptions {
  std::string tokenizer;            // folder with tokenizer.model, or the .model file
  std::vector<std::string> inputs;  // files or folders (walked recursively, sorted by path)
  std::string out_dir;
  double val_fraction = 0.01;
  uint64_t seed = 0;
  bool split_lines = false;  // each non-empty line is a document (default: each file is one)
  int threads = 0;           // 0: OpenMP default
};

struct TokenizeStats {
  int64_t files = 0, bytes = 0;
  int64_t docs_train = 0, docs_val = 0;
  int64_t tokens_train = 0, tokens_val = 0;
  int64_t vocab_size = 0;
};

// Writes out_dir/train.tok, out_dir/val.tok, out_dir/meta.json. Validation set: exactly
// round(val_fraction * docs) whole documents (at least 1 if val_fraction > 0 and there are >= 2
// documents), chosen by a seeded shuffle. Throws hymba::Error on: missing tokenizer, no input,
// a file that is not UTF-8 (named, with the byte offset), a corpus without any text.
TokenizeStats tokenize_corpus(const TokenizeOptions& opt);

// Returns true and leaves bad_offset untouched if s is valid UTF-8 (no overlongs, surrogates or
// code points > U+10FFFF); else false with the offset of the first bad byte.
bool is_valid_utf8(const std::string& s, size_t* bad_offset = nullptr);

}  // namespace hymba
