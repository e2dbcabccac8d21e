#include "train/data.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>

#include <omp.h>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/hash.h"
#include "io/files.h"
#include "runtime/tokenizer.h"

namespace fs = std::filesystem;

namespace hymba {

static_assert(std::endian::native == std::endian::little, "token files are little-endian");

namespace {

constexpr char kMagic[8] = {'H', 'Y', 'M', 'B', 'A', 'T', 'O', 'K'};
constexpr uint32_t kVersion = 1;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t width;
  uint64_t count;
  uint32_t vocab;
  uint32_t reserved;
};
static_assert(sizeof(Header) == kTokenFileHeaderBytes);

int width_for_vocab(int64_t vocab) { return vocab <= 65536 ? 2 : 4; }

}  // namespace

void write_token_file(const std::string& path, const int32_t* ids, int64_t count, int64_t vocab_size) {
  HYMBA_CHECK(vocab_size > 0 && vocab_size <= int64_t(INT32_MAX), path + ": bad vocab size " + std::to_string(vocab_size));
  HYMBA_CHECK(count >= 0, path + ": negative count");
  const int w = width_for_vocab(vocab_size);
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kVersion;
  h.width = uint32_t(w);
  h.count = uint64_t(count);
  h.vocab = uint32_t(vocab_size);
  AtomicFile f(path);
  f.write(&h, sizeof h);
  // Narrow in blocks so a big corpus needs no second full-size buffer.
  constexpr int64_t kBlock = 1 << 20;
  std::vector<unsigned char> buf;
  for (int64_t b = 0; b < count; b += kBlock) {
    const int64_t n = std::min(kBlock, count - b);
    buf.resize(size_t(n) * size_t(w));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t id = ids[b + i];
      HYMBA_CHECK(id >= 0 && id < vocab_size, path + ": token id " + std::to_string(id) + " at position " +
                                                  std::to_string(b + i) + " outside the vocabulary of " +
                                                  std::to_string(vocab_size));
      if (w == 2) {
        const uint16_t x = uint16_t(id);
        std::memcpy(&buf[size_t(i) * 2], &x, 2);
      } else {
        const uint32_t x = uint32_t(id);
        std::memcpy(&buf[size_t(i) * 4], &x, 4);
      }
    }
    f.write(buf.data(), buf.size());
  }
  f.commit();
}

TokenFile::TokenFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  HYMBA_CHECK(fd >= 0, "cannot open token file " + path + ": " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat token file " + path);
  }
  const size_t bytes = size_t(st.st_size);
  if (bytes < sizeof(Header)) {
    ::close(fd);
    fail(path + ": not a token file (only " + std::to_string(bytes) + " bytes)");
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping stays valid
  HYMBA_CHECK(p != MAP_FAILED, "cannot mmap token file " + path + ": " + std::strerror(errno));
  map_ = p;
  map_bytes_ = bytes;
  Header h;
  std::memcpy(&h, p, sizeof h);
  auto bad = [&](const std::string& why) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    fail(path + ": " + why);
  };
  if (std::memcmp(h.magic, kMagic, 8) != 0) bad("not a token file (bad magic)");
  if (h.version != kVersion) bad("unsupported token file version " + std::to_string(h.version));
  if (h.width != 2 && h.width != 4) bad("bad id width " + std::to_string(h.width));
  if (h.vocab == 0 || h.vocab > (uint32_t(1) << 31)) bad("vocab size " + std::to_string(h.vocab) + " outside [1, 2^31]");
  if (h.count > (bytes - sizeof(Header)) / h.width || sizeof(Header) + h.count * h.width != bytes)
    bad("size " + std::to_string(bytes) + " bytes does not match the header's " + std::to_string(h.count) +
        " ids (truncated?)");
  count_ = int64_t(h.count);
  vocab_ = int64_t(h.vocab);
  width_ = int(h.width);
  ids_ = static_cast<const unsigned char*>(p) + sizeof(Header);
  ::madvise(map_, map_bytes_, MADV_RANDOM);  // training reads random windows
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(map_, map_bytes_);
}

TokenFile::TokenFile(TokenFile&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), map_bytes_(o.map_bytes_), ids_(o.ids_), count_(o.count_),
      vocab_(o.vocab_), width_(o.width_) {
  o.map_ = nullptr;
  o.ids_ = nullptr;
  o.count_ = 0;
}

int32_t TokenFile::operator[](int64_t i) const {
  uint32_t x;
  if (width_ == 2) {
    uint16_t y;
    std::memcpy(&y, ids_ + size_t(i) * 2, 2);
    x = y;
  } else {
    std::memcpy(&x, ids_ + size_t(i) * 4, 4);
  }
  // Checked here, not at open: a scan would read the whole (possibly huge) file up front.
  if (int64_t(x) >= vocab_)
    fail(path_ + ": id " + std::to_string(x) + " at position " + std::to_string(i) + " is outside the vocab [0, " +
         std::to_string(vocab_) + ") of its header (damaged file?)");
  return int32_t(x);
}

void TokenFile::copy(int64_t start, int64_t n, int32_t* out) const {
  HYMBA_CHECK(start >= 0 && n >= 0 && start + n <= count_,
              path_ + ": read of [" + std::to_string(start) + ", +" + std::to_string(n) + ") past " +
                  std::to_string(count_) + " ids");
  for (int64_t i = 0; i < n; ++i) out[i] = (*this)[start + i];
}

std::vector<int32_t> TokenFile::read_all() const {
  std::vector<int32_t> v(static_cast<size_t>(count_));
  copy(0, count_, v.data());
  return v;
}

uint64_t rng_next(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t rng_below(uint64_t& state, uint64_t n) {
  HYMBA_CHECK(n > 0, "rng_below: empty range");
  // Lemire's multiply-shift with rejection: exactly uniform.
  unsigned __int128 m = (unsigned __int128)rng_next(state) * n;
  uint64_t lo = uint64_t(m);
  if (lo < n) {
    const uint64_t t = (0 - n) % n;
    while (lo < t) {
      m = (unsigned __int128)rng_next(state) * n;
      lo = uint64_t(m);
    }
  }
  return uint64_t(m >> 64);
}

TokenWindows::TokenWindows(const std::string& path) : file_(path) {}

void TokenWindows::sample(int B, int seq_len, uint64_t& rng_state, int32_t* inputs, int32_t* targets) const {
  HYMBA_CHECK(B > 0 && seq_len > 0, "sample: batch and seq_len must be > 0");
  const int64_t N = file_.size();
  HYMBA_CHECK(N >= int64_t(seq_len) + 1, file_.path() + ": " + std::to_string(N) +
                                             " tokens, too few for one window of seq_len " +
                                             std::to_string(seq_len) + " (+1 target)");
  std::vector<int32_t> buf(size_t(seq_len) + 1);
  for (int b = 0; b < B; ++b) {
    const int64_t s = int64_t(rng_below(rng_state, uint64_t(N - seq_len)));
    file_.copy(s, seq_len + 1, buf.data());
    std::memcpy(inputs + size_t(b) * seq_len, buf.data(), size_t(seq_len) * 4);
    std::memcpy(targets + size_t(b) * seq_len, buf.data() + 1, size_t(seq_len) * 4);
  }
}

int64_t TokenWindows::num_sequential(int seq_len) const {
  HYMBA_CHECK(seq_len > 0, "seq_len must be > 0");
  return file_.size() > 0 ? (file_.size() - 1) / seq_len : 0;
}

void TokenWindows::sequential(int64_t index, int seq_len, int32_t* inputs, int32_t* targets) const {
  HYMBA_CHECK(index >= 0 && index < num_sequential(seq_len),
              file_.path() + ": window " + std::to_string(index) + " out of range");
  std::vector<int32_t> buf(size_t(seq_len) + 1);
  file_.copy(index * seq_len, seq_len + 1, buf.data());
  std::memcpy(inputs, buf.data(), size_t(seq_len) * 4);
  std::memcpy(targets, buf.data() + 1, size_t(seq_len) * 4);
}

SequentialWindows::SequentialWindows(const TokenWindows& w, int B, int seq_len, int64_t max_windows)
    : w_(w), B_(B), L_(seq_len) {
  HYMBA_CHECK(B > 0 && seq_len > 0, "SequentialWindows: batch and seq_len must be > 0");
  total_ = w.num_sequential(seq_len);
  if (max_windows >= 0) total_ = std::min(total_, max_windows);
}

bool SequentialWindows::next(int32_t* inputs, int32_t* targets, int& rows) {
  rows = 0;
  while (rows < B_ && pos_ < total_) {
    w_.sequential(pos_++, L_, inputs + size_t(rows) * L_, targets + size_t(rows) * L_);
    ++rows;
  }
  return rows > 0;
}

// ---------------------------------------------------------------------------------------------
// Corpus tokenization.

bool is_valid_utf8(const std::string& s, size_t* bad_offset) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    bool ok = i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) ok = false;
      else cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (ok) {
      static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= kMin[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (!ok) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

namespace {

struct Doc {
  int file;
  size_t begin, len;
};

std::string hex64(uint64_t x) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)x);
  return b;
}

bool blank(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!(p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r' || p[i] == '\f' || p[i] == '\v'))
      return false;
  return true;
}

std::vector<std::string> collect_files(const std::vector<std::string>& inputs) {
  HYMBA_CHECK(!inputs.empty(), "tokenize: no --input given");
  std::vector<std::string> files;
  std::set<std::string> seen;
  auto add = [&](const fs::path& p) {
    std::error_code ec;
    const std::string key = fs::weakly_canonical(p, ec).string();
    if (seen.insert(ec ? p.string() : key).second) files.push_back(p.string());
  };
  for (const auto& in : inputs) {
    std::error_code ec;
    const auto st = fs::status(in, ec);
    HYMBA_CHECK(!ec && fs::exists(st), "tokenize: input not found: " + in);
    if (fs::is_directory(st)) {
      // Sorted walk so the document order (and thus the split) does not depend on the filesystem;
      // hidden files and folders (".name") are skipped (editor swap files, temp folders).
      std::vector<fs::path> found;
      auto it = fs::recursive_directory_iterator(in, fs::directory_options::follow_directory_symlink, ec);
      HYMBA_CHECK(!ec, "tokenize: cannot read folder " + in + ": " + ec.message());
      for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        HYMBA_CHECK(!ec, "tokenize: cannot read folder " + in + ": " + ec.message());
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) found.push_back(it->path());
      }
      std::sort(found.begin(), found.end());
      for (const auto& p : found) add(p);
    } else {
      add(in);
    }
  }
  return files;
}

}  // namespace

TokenizeStats tokenize_corpus(const TokenizeOptions& opt) {
  HYMBA_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1,
              "tokenize: --val-fraction must be in [0, 1), got " + std::to_string(opt.val_fraction));
  HYMBA_CHECK(!opt.out_dir.empty(), "tokenize: no --out folder given");

  // Tokenizer: the runtime one (same encoding as inference), from a folder holding
  // tokenizer.model (+ tokenizer_config.json) or from the tokenizer.model file itself.
  HYMBA_CHECK(!opt.tokenizer.empty(), "tokenize: no --tokenizer given");
  fs::path tok_dir = opt.tokenizer;
  if (!fs::is_directory(tok_dir)) {
    HYMBA_CHECK(fs::is_regular_file(tok_dir), "tokenize: tokenizer not found: " + opt.tokenizer +
                                                  " (pass a folder with tokenizer.model or that file)");
    HYMBA_CHECK(tok_dir.filename() == "tokenizer.model",
                "tokenize: " + opt.tokenizer + ": the tokenizer file must be named tokenizer.model");
    tok_dir = tok_dir.parent_path().empty() ? fs::path(".") : tok_dir.parent_path();
  }
  const std::string model_path = (tok_dir / "tokenizer.model").string();
  HYMBA_CHECK(fs::is_regular_file(model_path), "tokenize: tokenizer not found: " + model_path);
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = Tokenizer::load(tok_dir.string());
  } catch (const Error& e) {
    fail(std::string("tokenize: cannot load tokenizer ") + tok_dir.string() + ": " + e.what());
  }
  const std::string model_bytes = read_file(model_path);  // for the hash in meta.json
  const bool add_bos = tok->add_bos_default();
  const int64_t vocab = tok->vocab_size();
  const int32_t bos = tok->bos(), eos = tok->eos();
  HYMBA_CHECK(eos >= 0, "tokenize: tokenizer " + model_path + " has no EOS id (needed to separate documents)");

  // Read and validate every file before doing any work.
  const auto files = collect_files(opt.inputs);
  std::vector<std::string> text(files.size());
  TokenizeStats st;
  st.files = int64_t(files.size());
  st.vocab_size = vocab;
  for (size_t f = 0; f < files.size(); ++f) {
    text[f] = read_file(files[f]);
    st.bytes += int64_t(text[f].size());
    size_t off = 0;
    HYMBA_CHECK(is_valid_utf8(text[f], &off),
                "tokenize: " + files[f] + " is not valid UTF-8 (bad byte at offset " + std::to_string(off) + ")");
  }

  // Documents: a whole file, or each non-blank line. Trailing line breaks are dropped so EOS
  // follows the text directly.
  std::vector<Doc> docs;
  for (size_t f = 0; f < files.size(); ++f) {
    const std::string& t = text[f];
    if (opt.split_lines) {
      size_t b = 0;
      while (b < t.size()) {
        size_t e = t.find('\n', b);
        if (e == std::string::npos) e = t.size();
        size_t len = e - b;
        if (len > 0 && t[b + len - 1] == '\r') --len;
        if (!blank(t.data() + b, len)) docs.push_back({int(f), b, len});
        b = e + 1;
      }
    } else {
      size_t len = t.size();
      while (len > 0 && (t[len - 1] == '\n' || t[len - 1] == '\r')) --len;
      if (!blank(t.data(), len)) docs.push_back({int(f), 0, len});
    }
  }
  HYMBA_CHECK(!docs.empty(), "tokenize: empty corpus: no text in " + std::to_string(files.size()) +
                                 " input file(s)" + (files.empty() ? "" : " (first: " + files[0] + ")"));

  // Encode in parallel; each document keeps its own slot, so the output order is fixed.
  std::vector<std::vector<int32_t>> ids(docs.size());
  std::string enc_error;
#pragma omp parallel for schedule(dynamic, 16) num_threads(opt.threads > 0 ? opt.threads : omp_get_max_threads())
  for (int64_t d = 0; d < int64_t(docs.size()); ++d) {
    const Doc& doc = docs[size_t(d)];
    try {
      auto v = tok->encode(text[size_t(doc.file)].substr(doc.begin, doc.len), add_bos);
      // EOS ends every document (once, even if the config's add_eos_token already added it).
      if (v.empty() || v.back() != eos) v.push_back(eos);
      ids[size_t(d)] = std::move(v);
    } catch (const std::exception& e) {
#pragma omp critical
      if (enc_error.empty()) enc_error = files[size_t(doc.file)] + ": " + e.what();
    }
  }
  HYMBA_CHECK(enc_error.empty(), "tokenize: encoding failed: " + enc_error);

  // Held-out documents: a seeded Fisher-Yates shuffle picks exactly n_val of them.
  const int64_t n = int64_t(docs.size());
  int64_t n_val = 0;
  if (opt.val_fraction > 0 && n >= 2) n_val = std::clamp<int64_t>(std::llround(opt.val_fraction * double(n)), 1, n - 1);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) perm[size_t(i)] = i;
  uint64_t rng = opt.seed;
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[rng_below(rng, uint64_t(i + 1))]);
  std::vector<char> is_val(size_t(n), 0);
  for (int64_t i = 0; i < n_val; ++i) is_val[size_t(perm[size_t(i)])] = 1;

  std::vector<int32_t> train, val;
  for (int64_t d = 0; d < n; ++d) {
    auto& out = is_val[size_t(d)] ? val : train;
    out.insert(out.end(), ids[size_t(d)].begin(), ids[size_t(d)].end());
    (is_val[size_t(d)] ? st.docs_val : st.docs_train)++;
    std::vector<int32_t>().swap(ids[size_t(d)]);
  }
  st.tokens_train = int64_t(train.size());
  st.tokens_val = int64_t(val.size());

  std::error_code ec;
  fs::create_directories(opt.out_dir, ec);
  HYMBA_CHECK(!ec, "tokenize: cannot create " + opt.out_dir + ": " + ec.message());
  const fs::path out(opt.out_dir);
  write_token_file((out / "train.tok").string(), train, vocab);
  write_token_file((out / "val.tok").string(), val, vocab);

  nlohmann::ordered_json meta;
  meta["format"] = "hymba-tokens";
  meta["version"] = kVersion;
  meta["dtype"] = width_for_vocab(vocab) == 2 ? "uint16" : "uint32";
  std::error_code ec2;
  const auto abs_model = fs::absolute(model_path, ec2);
  meta["tokenizer"] = {{"path", ec2 ? model_path : abs_model.string()},
                       {"fnv1a64", hex64(fnv1a64(model_bytes))},
                       {"vocab_size", vocab},
                       {"bos_id", bos},
                       {"eos_id", eos},
                       {"add_bos", add_bos}};
  meta["inputs"] = opt.inputs;
  meta["split_lines"] = opt.split_lines;
  meta["val_fraction"] = opt.val_fraction;
  meta["seed"] = opt.seed;
  meta["files"] = st.files;
  meta["bytes"] = st.bytes;
  meta["train"] = {{"file", "train.tok"}, {"documents", st.docs_train}, {"tokens", st.tokens_train}};
  meta["val"] = {{"file", "val.tok"}, {"documents", st.docs_val}, {"tokens", st.tokens_val}};
  meta["tokens_per_byte"] = st.bytes > 0 ? double(st.tokens_train + st.tokens_val) / double(st.bytes) : 0.0;
  write_file_atomic((out / "meta.json").string(), meta.dump(2) + "\n");
  return st;
}

}  // namespace hymba
