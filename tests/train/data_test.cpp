// Token files, batch samplers and corpus tokenization.
#include "train/data.h"

#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "io/files.h"

namespace fs = std::filesystem;

namespace hymba {
namespace {

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("hymba_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

void write_text(const std::string& path, const std::string& s) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(TokenFile, RoundTripUint16AndUint32) {
  TempDir d;
  std::vector<int32_t> small{1, 5, 65535, 0, 2}, big{1, 70000, 69999, 2, 0};
  write_token_file(d / "a.tok", small, 65536);
  write_token_file(d / "b.tok", big, 70001);
  TokenFile a(d / "a.tok"), b(d / "b.tok");
  EXPECT_EQ(a.bytes_per_id(), 2);
  EXPECT_EQ(b.bytes_per_id(), 4);
  EXPECT_EQ(a.vocab_size(), 65536);
  EXPECT_EQ(a.read_all(), small);
  EXPECT_EQ(b.read_all(), big);
  EXPECT_EQ(fs::file_size(d / "a.tok"), kTokenFileHeaderBytes + 2 * small.size());
  EXPECT_EQ(fs::file_size(d / "b.tok"), kTokenFileHeaderBytes + 4 * big.size());
  // Exact header layout (the format is documented byte by byte in data.h).
  const std::string raw = read_file(d / "a.tok");
  EXPECT_EQ(raw.substr(0, 8), "HYMBATOK");
  EXPECT_EQ(uint8_t(raw[32]), 1);
  EXPECT_EQ(uint8_t(raw[34]), 5);
  // Big enough to cross the writer's 1 Mi-id block.
  std::vector<int32_t> many(3'000'001);
  for (size_t i = 0; i < many.size(); ++i) many[i] = int32_t((i * 2654435761u) % 50000);
  write_token_file(d / "c.tok", many, 50000);
  EXPECT_EQ(TokenFile(d / "c.tok").read_all(), many);
  // Empty file is valid.
  write_token_file(d / "e.tok", std::vector<int32_t>{}, 10);
  EXPECT_EQ(TokenFile(d / "e.tok").size(), 0);
}

TEST(TokenFile, Errors) {
  TempDir d;
  EXPECT_NE(error_of([&] { write_token_file(d / "x.tok", std::vector<int32_t>{1, 10}, 10); }).find("token id 10"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(d / "x.tok"));  // atomic: nothing left behind
  EXPECT_NE(error_of([&] { TokenFile f(d / "missing.tok"); }).find("missing.tok"), std::string::npos);
  write_text(d / "junk.tok", std::string(40, 'x'));
  EXPECT_NE(error_of([&] { TokenFile f(d / "junk.tok"); }).find("bad magic"), std::string::npos);
  write_text(d / "tiny.tok", "HYMBA");
  EXPECT_THROW(TokenFile(d / "tiny.tok"), Error);
  write_token_file(d / "t.tok", std::vector<int32_t>{1, 2, 3}, 10);
  fs::resize_file(d / "t.tok", kTokenFileHeaderBytes + 4);  // one id short
  EXPECT_NE(error_of([&] { TokenFile f(d / "t.tok"); }).find("truncated"), std::string::npos);
}

// Found by fuzz/token_file_fuzz.cpp: ids past the header's vocab reached the trainer's embedding
// lookup unchecked; a header vocab past 2^31 made ids negative.
TEST(TokenFileBadInput, RejectsIdsOutsideItsVocab) {
  TempDir d;
  write_token_file(d / "v.tok", std::vector<int32_t>{1, 2, 3, 4}, 10);
  std::string raw = read_file(d / "v.tok");
  raw[kTokenFileHeaderBytes + 2 * 2] = 10;  // third id (uint16) := 10, the vocab size
  write_text(d / "v.tok", raw);
  TokenFile f(d / "v.tok");
  EXPECT_EQ(f[1], 2);
  EXPECT_NE(error_of([&] { (void)f.read_all(); }).find("id 10 at position 2 is outside the vocab [0, 10)"),
            std::string::npos);
  uint64_t rng = 7;
  std::vector<int32_t> in(3), tg(3);
  EXPECT_THROW(TokenWindows(d / "v.tok").sample(1, 3, rng, in.data(), tg.data()), Error);
  raw[24] = raw[25] = raw[26] = char(0xff), raw[27] = char(0xff);  // vocab 2^32-1
  write_text(d / "v.tok", raw);
  EXPECT_NE(error_of([&] { TokenFile g(d / "v.tok"); }).find("outside [1, 2^31]"), std::string::npos);
}

TEST(Rng, BelowIsInRangeAndCoversIt) {
  uint64_t s = 42;
  std::vector<int> hits(7, 0);
  for (int i = 0; i < 7000; ++i) hits[rng_below(s, 7)]++;
  for (int h : hits) EXPECT_GT(h, 800);  // expected 1000 each; 800 is > 6 sigma away
  uint64_t a = 5, b = 5;
  EXPECT_EQ(rng_next(a), rng_next(b));
  EXPECT_EQ(a, b);
}

TEST(TokenWindows, SampleIsDeterministicAndResumable) {
  TempDir d;
  std::vector<int32_t> ids(1000);
  for (int i = 0; i < 1000; ++i) ids[i] = i;  // id == position: windows are easy to check
  write_token_file(d / "t.tok", ids, 1000);
  TokenWindows w(d / "t.tok");
  const int B = 4, L = 16;
  std::vector<int32_t> in(B * L), tg(B * L);

  // Uninterrupted: 5 batches.
  uint64_t s = 123;
  std::vector<std::vector<int32_t>> batches;
  for (int k = 0; k < 5; ++k) {
    w.sample(B, L, s, in.data(), tg.data());
    batches.push_back(in);
    for (int b = 0; b < B; ++b) {
      EXPECT_GE(in[b * L], 0);
      EXPECT_LE(in[b * L] + L, 999);  // the last target exists
      for (int t = 0; t < L; ++t) {
        EXPECT_EQ(in[b * L + t], in[b * L] + t);
        EXPECT_EQ(tg[b * L + t], in[b * L + t] + 1);
      }
    }
  }
  // Interrupted after 2 batches: keep only the u64 state, reopen the file, continue.
  uint64_t s2 = 123;
  {
    TokenWindows w1(d / "t.tok");
    for (int k = 0; k < 2; ++k) w1.sample(B, L, s2, in.data(), tg.data());
  }
  const uint64_t saved = s2;
  TokenWindows w2(d / "t.tok");
  uint64_t s3 = saved;
  for (int k = 2; k < 5; ++k) {
    w2.sample(B, L, s3, in.data(), tg.data());
    EXPECT_EQ(in, batches[k]) << "batch " << k;
  }
  EXPECT_EQ(s3, s);
  // Another seed gives other windows.
  uint64_t other = 124;
  w.sample(B, L, other, in.data(), tg.data());
  EXPECT_NE(in, batches[0]);
}

TEST(TokenWindows, EveryStartIsReachable) {
  TempDir d;
  std::vector<int32_t> ids(20);
  for (int i = 0; i < 20; ++i) ids[i] = i;
  write_token_file(d / "t.tok", ids, 20);
  TokenWindows w(d / "t.tok");
  const int L = 15;  // starts 0..4
  std::set<int> starts;
  uint64_t s = 1;
  int32_t in[L], tg[L];
  for (int i = 0; i < 200; ++i) {
    w.sample(1, L, s, in, tg);
    starts.insert(in[0]);
  }
  EXPECT_EQ(starts, (std::set<int>{0, 1, 2, 3, 4}));
  uint64_t s0 = 1;
  int32_t in2[20], tg2[20];
  EXPECT_NE(error_of([&] { w.sample(1, 20, s0, in2, tg2); }).find("too few"), std::string::npos);
  EXPECT_NO_THROW(w.sample(1, 19, s0, in2, tg2));
}

TEST(TokenWindows, SequentialCoversTheFileInOrder) {
  TempDir d;
  std::vector<int32_t> ids(103);
  for (int i = 0; i < 103; ++i) ids[i] = i;
  write_token_file(d / "v.tok", ids, 200);
  TokenWindows w(d / "v.tok");
  EXPECT_EQ(w.num_sequential(10), 10);  // (103-1)/10
  EXPECT_EQ(w.num_sequential(102), 1);
  EXPECT_EQ(w.num_sequential(103), 0);
  SequentialWindows it(w, 4, 10);
  EXPECT_EQ(it.total(), 10);
  std::vector<int32_t> in(40), tg(40);
  int rows = 0, seen = 0;
  std::vector<int> row_counts;
  while (it.next(in.data(), tg.data(), rows)) {
    row_counts.push_back(rows);
    for (int r = 0; r < rows; ++r, ++seen)
      for (int t = 0; t < 10; ++t) {
        EXPECT_EQ(in[r * 10 + t], seen * 10 + t);
        EXPECT_EQ(tg[r * 10 + t], seen * 10 + t + 1);
      }
  }
  EXPECT_EQ(seen, 10);
  EXPECT_EQ(row_counts, (std::vector<int>{4, 4, 2}));
  SequentialWindows capped(w, 4, 10, 3);
  EXPECT_TRUE(capped.next(in.data(), tg.data(), rows));
  EXPECT_EQ(rows, 3);
  EXPECT_FALSE(capped.next(in.data(), tg.data(), rows));
}

TEST(Utf8, Validation) {
  size_t off = 0;
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("ab\xff", &off));
  EXPECT_EQ(off, 2u);
  EXPECT_FALSE(is_valid_utf8("x\xc0\xaf", &off));  // overlong '/'
  EXPECT_EQ(off, 1u);
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));  // surrogate
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));      // truncated
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
}

// A small SentencePiece model trained with the spm_train tool (Debian package `sentencepiece`),
// with the same flags as scripts/train_tokenizer.sh.
class Tokenize : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::system("command -v spm_train >/dev/null 2>&1") != 0) return;
    dir_ = new TempDir();
    std::string corpus;
    for (int i = 0; i < 200; ++i)
      corpus += "In the beginning God created the heaven and the earth " + std::to_string(i) +
                ".\nAnd the earth was without form, and void; and darkness was upon the deep.\n";
    write_text(*dir_ / "spm/corpus.txt", corpus);
    const std::string cmd = "spm_train --input=" + (*dir_ / "spm/corpus.txt") + " --model_prefix=" +
                            (*dir_ / "tok/tokenizer") +
                            " --vocab_size=300 --model_type=bpe --byte_fallback=true --character_coverage=1.0"
                            " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 --num_threads=1"
                            " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                            " --minloglevel=2 >/dev/null 2>&1";
    fs::create_directories(*dir_ / "tok");
    if (std::system(cmd.c_str()) == 0) model_ = *dir_ / "tok/tokenizer.model";
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (model_.empty()) GTEST_SKIP() << "spm_train (Debian package sentencepiece) not available";
    ASSERT_TRUE(sp_.Load(model_).ok());
  }
  // Splits a token stream into documents at EOS and decodes each (dropping the BOS).
  std::vector<std::string> decode_docs(const std::vector<int32_t>& ids) {
    std::vector<std::string> docs;
    std::vector<int> cur;
    for (int32_t id : ids) {
      if (id == 2) {
        EXPECT_FALSE(cur.empty());
        if (!cur.empty()) {
          EXPECT_EQ(cur[0], 1) << "each document starts with BOS";
        }
        std::string s;
        EXPECT_TRUE(sp_.Decode(std::vector<int>(cur.begin() + 1, cur.end()), &s).ok());
        docs.push_back(s);
        cur.clear();
      } else {
        cur.push_back(id);
      }
    }
    EXPECT_TRUE(cur.empty()) << "stream must end with EOS";
    return docs;
  }
  static inline TempDir* dir_ = nullptr;
  static inline std::string model_;
  sentencepiece::SentencePieceProcessor sp_;
};

TEST_F(Tokenize, RoundTripAndSplitByDocuments) {
  TempDir d;
  std::map<std::string, std::string> texts;
  for (int i = 0; i < 10; ++i) {
    const std::string name = (i % 2 ? "corpus/sub/doc" : "corpus/doc") + std::to_string(i) + ".txt";
    texts[name] = "Document " + std::to_string(i) + ": And God said, let there be light.\nSecond line \xc3\xa9.\n";
    write_text(d / name, texts[name]);
  }
  write_text(d / "corpus/.hidden.txt", "\xff not read");  // hidden files are skipped
  write_text(d / "corpus/empty.txt", "\n\n");              // no text: no document
  TokenizeOptions o;
  o.tokenizer = fs::path(model_).parent_path().string();
  o.inputs = {d / "corpus"};
  o.out_dir = d / "out";
  o.val_fraction = 0.2;
  o.seed = 3;
  const auto st = tokenize_corpus(o);
  EXPECT_EQ(st.files, 11);
  EXPECT_EQ(st.docs_train, 8);
  EXPECT_EQ(st.docs_val, 2);
  const auto train = TokenFile(d / "out/train.tok").read_all(), val = TokenFile(d / "out/val.tok").read_all();
  EXPECT_EQ(int64_t(train.size()), st.tokens_train);
  EXPECT_EQ(int64_t(val.size()), st.tokens_val);
  auto tr = decode_docs(train), va = decode_docs(val);
  EXPECT_EQ(tr.size(), 8u);
  EXPECT_EQ(va.size(), 2u);
  // Every document appears exactly once, whole, in one of the splits (trailing newline dropped).
  std::multiset<std::string> got(tr.begin(), tr.end()), want;
  got.insert(va.begin(), va.end());
  for (auto& [name, t] : texts) want.insert(t.substr(0, t.size() - 1));
  EXPECT_EQ(got, want);

  const auto meta = nlohmann::json::parse(read_file(d / "out/meta.json"));
  EXPECT_EQ(meta["tokenizer"]["vocab_size"], 300);
  EXPECT_EQ(meta["train"]["documents"], 8);
  EXPECT_EQ(meta["val"]["tokens"], st.tokens_val);
  EXPECT_EQ(meta["dtype"], "uint16");

  // Same seed: identical bytes. Another seed: same union, typically another split.
  o.out_dir = d / "out2";
  tokenize_corpus(o);
  EXPECT_EQ(read_file(d / "out/train.tok"), read_file(d / "out2/train.tok"));
  EXPECT_EQ(read_file(d / "out/val.tok"), read_file(d / "out2/val.tok"));
  int differing = 0;
  for (uint64_t seed = 4; seed < 9; ++seed) {
    o.seed = seed;
    o.out_dir = d / "out3";
    tokenize_corpus(o);
    differing += read_file(d / "out/val.tok") != read_file(d / "out3/val.tok");
  }
  EXPECT_GT(differing, 0);
}

TEST_F(Tokenize, SplitLinesAndNoValidation) {
  TempDir d;
  write_text(d / "a.txt", "first line\n\n   \nsecond line\r\nthird");
  TokenizeOptions o;
  o.tokenizer = model_;
  o.inputs = {d / "a.txt", d / "a.txt"};  // the same file twice is read once
  o.out_dir = d / "out";
  o.split_lines = true;
  o.val_fraction = 0;
  const auto st = tokenize_corpus(o);
  EXPECT_EQ(st.files, 1);
  EXPECT_EQ(st.docs_train, 3);
  EXPECT_EQ(st.docs_val, 0);
  EXPECT_EQ(decode_docs(TokenFile(d / "out/train.tok").read_all()),
            (std::vector<std::string>{"first line", "second line", "third"}));
  EXPECT_EQ(TokenFile(d / "out/val.tok").size(), 0);
}

TEST_F(Tokenize, Errors) {
  TempDir d;
  write_text(d / "good.txt", "some text");
  write_text(d / "bad/latin1.txt", "caf\xe9 au lait");
  write_text(d / "blank/a.txt", " \n\n");
  write_text(d / "blank/b.txt", "");
  TokenizeOptions o;
  o.tokenizer = model_;
  o.out_dir = d / "out";

  o.inputs = {d / "good.txt", d / "bad"};
  auto e = error_of([&] { tokenize_corpus(o); });
  EXPECT_NE(e.find("latin1.txt"), std::string::npos) << e;
  EXPECT_NE(e.find("UTF-8"), std::string::npos) << e;
  EXPECT_NE(e.find("offset 3"), std::string::npos) << e;

  o.inputs = {d / "blank"};
  e = error_of([&] { tokenize_corpus(o); });
  EXPECT_NE(e.find("empty corpus"), std::string::npos) << e;

  fs::create_directories(d / "nothing");
  o.inputs = {d / "nothing"};
  EXPECT_NE(error_of([&] { tokenize_corpus(o); }).find("empty corpus"), std::string::npos);

  o.inputs = {d / "no_such_file.txt"};
  EXPECT_NE(error_of([&] { tokenize_corpus(o); }).find("no_such_file.txt"), std::string::npos);

  o.inputs = {d / "good.txt"};
  o.tokenizer = d / "no_tokenizer_here";
  e = error_of([&] { tokenize_corpus(o); });
  EXPECT_NE(e.find("tokenizer not found"), std::string::npos) << e;
  write_text(d / "broken/tokenizer.model", "not a model");
  o.tokenizer = d / "broken";
  EXPECT_NE(error_of([&] { tokenize_corpus(o); }).find("cannot load tokenizer"), std::string::npos);

  o.tokenizer = model_;
  o.val_fraction = 1.0;
  EXPECT_THROW(tokenize_corpus(o), Error);
  EXPECT_FALSE(fs::exists(d / "out/train.tok"));  // nothing written on failure
}

TEST_F(Tokenize, CliExitsNonZeroWithMessage) {
  const char* bin = std::getenv("HYMBA_BIN");
  if (!bin) GTEST_SKIP() << "HYMBA_BIN not set (run through ctest)";
  TempDir d;
  write_text(d / "bad.txt", "\xfe\xff");
  const std::string cmd = std::string(bin) + " tokenize --tokenizer " + model_ + " --input " + (d / "bad.txt") +
                          " --out " + (d / "out") + " 2>" + (d / "err.txt");
  const int rc = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  EXPECT_EQ(WEXITSTATUS(rc), 1);
  const std::string err = read_file(d / "err.txt");
  EXPECT_NE(err.find("hymba: error:"), std::string::npos) << err;
  EXPECT_NE(err.find("bad.txt"), std::string::npos) << err;
}

}  // namespace
}  // namespace hymba
