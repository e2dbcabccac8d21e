#include "model/imatrix.h"

#include <cmath>
#include <cstring>

#include "base/error.h"
#include "io/safetensors.h"

namespace hymba {

namespace {
constexpr const char* kSum2 = ".in_sum2";
constexpr const char* kCounts = ".counts";
constexpr const char* kMetaPrefix = "hymba.imatrix.";

bool strip(const std::string& s, const std::string& suffix, std::string* base) {
  if (s.size() <= suffix.size() || s.compare(s.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  *base = s.substr(0, s.size() - suffix.size());
  return true;
}
}  // namespace

std::string ImportanceMatrix::info_of(const std::string& key) const {
  auto it = info.find(key);
  return it == info.end() ? std::string() : it->second;
}

void ImportanceMatrix::add(const std::string& name, const float* x, int64_t T, int64_t K) {
  Entry& e = entries[name];
  if (e.sum2.empty()) e.sum2.assign(size_t(K), 0.0);
  HYMBA_CHECK(int64_t(e.sum2.size()) == K, "imatrix: " + name + " had " + std::to_string(e.sum2.size()) +
                                               " columns, now " + std::to_string(K));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) e.sum2[size_t(k)] += double(x[t * K + k]) * double(x[t * K + k]);
  e.count += T;
}

void ImportanceMatrix::merge(const ImportanceMatrix& o) {
  for (const auto& [name, e] : o.entries) {
    Entry& d = entries[name];
    if (d.sum2.empty()) d.sum2.assign(e.sum2.size(), 0.0);
    HYMBA_CHECK(d.sum2.size() == e.sum2.size(), "imatrix: " + name + " has " + std::to_string(d.sum2.size()) +
                                                    " columns in one file and " + std::to_string(e.sum2.size()) +
                                                    " in another (different models?)");
    for (size_t k = 0; k < d.sum2.size(); ++k) d.sum2[k] += e.sum2[k];
    d.count += e.count;
  }
}

std::vector<float> ImportanceMatrix::importance(const std::string& name, int64_t cols) const {
  auto it = entries.find(name);
  HYMBA_CHECK(it != entries.end(), "the imatrix has no entry for " + name +
                                       " (was it collected on this model?)");
  const Entry& e = it->second;
  HYMBA_CHECK(int64_t(e.sum2.size()) == cols, "the imatrix entry for " + name + " has " +
                                                  std::to_string(e.sum2.size()) + " columns, the matrix " +
                                                  std::to_string(cols) + " (was it collected on this model?)");
  std::vector<float> v(e.sum2.size());
  for (size_t k = 0; k < v.size(); ++k) v[k] = float(e.sum2[k] / double(e.count));
  return v;
}

void ImportanceMatrix::save(const std::string& path) const {
  std::vector<std::vector<float>> data;  // F32 copies, alive until written
  data.reserve(2 * entries.size());
  std::vector<TensorOut> outs;
  for (const auto& [name, e] : entries) {
    data.emplace_back(e.sum2.begin(), e.sum2.end());
    outs.push_back({name + kSum2, DType::F32, {int64_t(e.sum2.size())}, data.back().data()});
    data.push_back({float(e.count)});
    outs.push_back({name + kCounts, DType::F32, {1}, data.back().data()});
  }
  std::map<std::string, std::string> meta = {{"format", "pt"}};
  for (const auto& [k, v] : info) meta[kMetaPrefix + k] = v;
  write_safetensors(path, outs, meta);
}

ImportanceMatrix ImportanceMatrix::load(const std::string& path) {
  auto f = SafetensorsFile::open(path, {.mmap = true, .mlock = false});
  const std::string where = "imatrix " + path + ": ";
  ImportanceMatrix im;
  for (const auto& [k, v] : f->metadata())
    if (k.rfind(kMetaPrefix, 0) == 0) im.info[k.substr(std::strlen(kMetaPrefix))] = v;
  for (const auto& [tname, t] : f->tensors()) {
    std::string name;
    if (strip(tname, kCounts, &name)) {
      HYMBA_CHECK(f->find(name + kSum2), where + "'" + tname + "' has no '" + name + kSum2 + "'");
      continue;
    }
    HYMBA_CHECK(strip(tname, kSum2, &name), where + "unexpected tensor '" + tname + "' (expected <weight>" +
                                                kSum2 + " and <weight>" + kCounts + ")");
    const TensorInfo* c = f->find(name + kCounts);
    HYMBA_CHECK(c, where + "'" + tname + "' has no '" + name + kCounts + "'");
    HYMBA_CHECK(t.dtype == DType::F32 && t.shape.size() == 1 && t.shape[0] > 0,
                where + "'" + tname + "' must be F32 of shape [cols], is " + dtype_name(t.dtype) + " " +
                    shape_str(t.shape));
    HYMBA_CHECK(c->dtype == DType::F32 && c->numel() == 1,
                where + "'" + name + kCounts + "' must be F32 of shape [1]");
    float count;
    std::memcpy(&count, c->data, sizeof count);
    HYMBA_CHECK(std::isfinite(count) && count >= 1.0f && count == std::floor(count) && count < 0x1p53f,
                where + "'" + name + kCounts + "' must be a whole number of rows >= 1");
    Entry& e = im.entries[name];
    e.count = int64_t(count);
    e.sum2.resize(size_t(t.shape[0]));
    for (size_t k = 0; k < e.sum2.size(); ++k) {
      float v;
      std::memcpy(&v, static_cast<const uint8_t*>(t.data) + k * sizeof v, sizeof v);
      HYMBA_CHECK(std::isfinite(v) && v >= 0.0f, where + "'" + tname + "' holds a negative or non-finite value");
      e.sum2[k] = v;
    }
  }
  HYMBA_CHECK(!im.entries.empty(), where + "no entries");
  return im;
}

}  // namespace hymba
