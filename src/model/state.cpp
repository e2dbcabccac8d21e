#include "model/state.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace hymba {

void KVCache::init(int64_t n_kv, int64_t d_qk, int64_t d_v, DType dtype, int64_t ring_capacity) {
  HYMBA_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
              "cache type must be f32, bf16 or f16");
  n_kv_ = n_kv, d_qk_ = d_qk, d_v_ = d_v, dtype_ = dtype, cap_ = ring_capacity, stored_ = 0;
  k_.clear(), v_.clear(), pos_.clear();
  if (cap_ >= 0) {
    const size_t es = dtype_size(dtype);
    k_.assign(size_t(cap_ * n_kv * d_qk) * es, 0);
    v_.assign(size_t(cap_ * n_kv * d_v) * es, 0);
    pos_.assign(size_t(cap_), -1);  // -1: empty slot, never visible
  }
}

void KVCache::append(const float* k, const float* v, const int32_t* pos, int64_t n) {
  const int64_t kw = n_kv_ * d_qk_, vw = n_kv_ * d_v_;
  const size_t es = dtype_size(dtype_);
  if (cap_ < 0) {
    const size_t rows = size_t(stored_ + n);
    if (pos_.capacity() < rows) {  // grow geometrically: decode appends one row at a time
      const size_t c = std::max(rows, pos_.capacity() * 2);
      k_.reserve(c * kw * es), v_.reserve(c * vw * es), pos_.reserve(c);
    }
    k_.resize(rows * kw * es), v_.resize(rows * vw * es), pos_.resize(rows);
    from_f32(k_.data() + size_t(stored_ * kw) * es, dtype_, k, size_t(n * kw));
    from_f32(v_.data() + size_t(stored_ * vw) * es, dtype_, v, size_t(n * vw));
    std::memcpy(pos_.data() + stored_, pos, size_t(n) * 4);
    stored_ += n;
    return;
  }
  if (cap_ == 0) { stored_ += n; return; }
  const int64_t skip = std::max<int64_t>(0, n - cap_);  // only the last cap rows survive
  for (int64_t i = skip; i < n; ++i) {
    const int64_t slot = (stored_ + i) % cap_;
    from_f32(k_.data() + size_t(slot * kw) * es, dtype_, k + i * kw, size_t(kw));
    from_f32(v_.data() + size_t(slot * vw) * es, dtype_, v + i * vw, size_t(vw));
    pos_[size_t(slot)] = pos[i];
  }
  stored_ += n;
}

KVSegment KVCache::segment() const {
  KVSegment s;
  s.k = k_.data(), s.v = v_.data(), s.dtype = dtype_, s.pos = pos_.data();
  s.n = cap_ < 0 ? stored_ : std::min(stored_, cap_);
  return s;
}

int64_t KVCache::rows_held() const { return cap_ < 0 ? stored_ : std::min(stored_, cap_); }

size_t KVCache::bytes_used() const {
  const int64_t rows = cap_ < 0 ? stored_ : cap_;
  return size_t(rows) * (size_t(n_kv_ * (d_qk_ + d_v_)) * dtype_size(dtype_) + 4);
}

namespace {

template <class T>
void put(std::string& out, const T& v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
template <class T>
void put_vec(std::string& out, const std::vector<T>& v) {
  put(out, uint64_t(v.size()));
  if (!v.empty()) out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}
template <class T>
T get(const char*& p, const char* end, const std::string& what) {
  HYMBA_CHECK(end - p >= ptrdiff_t(sizeof(T)), what + ": truncated");
  T v;
  std::memcpy(&v, p, sizeof v);
  p += sizeof v;
  return v;
}
// Reads a vector that must have exactly `want` elements.
template <class T>
void get_vec(const char*& p, const char* end, std::vector<T>& v, size_t want, const std::string& what) {
  const uint64_t n = get<uint64_t>(p, end, what);
  HYMBA_CHECK(n == want, what + ": " + std::to_string(n) + " elements where this model has " + std::to_string(want));
  HYMBA_CHECK(uint64_t(end - p) >= n * sizeof(T), what + ": truncated");
  v.resize(size_t(n));
  if (n > 0) std::memcpy(v.data(), p, size_t(n) * sizeof(T));  // an empty vector's data() may be null
  p += n * sizeof(T);
}

constexpr char kStateMagic[8] = {'H', 'Y', 'M', 'B', 'A', 'S', 'E', 'Q'};
constexpr uint32_t kStateVersion = 1;

}  // namespace

void KVCache::write_to(std::string& out) const {
  for (int64_t x : {n_kv_, d_qk_, d_v_, cap_, stored_}) put(out, x);
  put(out, uint8_t(dtype_));
  put_vec(out, k_), put_vec(out, v_), put_vec(out, pos_);
}

void KVCache::read_from(const char*& p, const char* end, int64_t new_rows, const std::string& what) {
  int64_t dims[4];
  for (auto& d : dims) d = get<int64_t>(p, end, what);
  const int64_t stored = get<int64_t>(p, end, what);
  const auto dt = DType(get<uint8_t>(p, end, what));
  HYMBA_CHECK(dims[0] == n_kv_ && dims[1] == d_qk_ && dims[2] == d_v_ && dims[3] == cap_ && dt == dtype_,
              what + ": K/V layout (heads, head dims, ring size or cache type) differs from this model's");
  HYMBA_CHECK(stored >= 0, what + ": negative row count");
  const int64_t rows = cap_ < 0 ? stored : cap_;
  const size_t es = dtype_size(dtype_);
  // Bound the row count by the bytes present before multiplying (a damaged count must not overflow).
  const size_t row_bytes = size_t(n_kv_ * (d_qk_ + d_v_)) * es + sizeof(int32_t);
  HYMBA_CHECK(uint64_t(rows) <= uint64_t(end - p) / row_bytes,
              what + ": truncated (" + std::to_string(rows) + " K/V rows announced)");
  std::vector<uint8_t> k, v;
  std::vector<int32_t> pos;
  get_vec(p, end, k, size_t(rows * n_kv_ * d_qk_) * es, what + " K");
  get_vec(p, end, v, size_t(rows * n_kv_ * d_v_) * es, what + " V");
  get_vec(p, end, pos, size_t(rows), what + " positions");
  // Every position appends one row to every producer (none to the others): a count that says
  // otherwise comes from a forged or foreign state, whose attention would skip or repeat tokens.
  HYMBA_CHECK(stored == (n_kv_ > 0 ? stored_ + new_rows : 0),
              what + ": " + std::to_string(stored) + " K/V rows do not match the position");
  k_.swap(k), v_.swap(v), pos_.swap(pos);
  stored_ = stored;
}

std::string serialize_state(const SequenceState& s) {
  std::string out(kStateMagic, sizeof kStateMagic);
  put(out, kStateVersion);
  put(out, s.n_pos);
  put(out, uint8_t(s.opts.dtype));
  put(out, uint64_t(s.kv.size()));
  for (size_t l = 0; l < s.kv.size(); ++l) {
    s.kv[l].write_to(out);
    put_vec(out, s.conv[l]);
    put_vec(out, s.ssm[l]);
  }
  return out;
}

void deserialize_state(SequenceState& into, const std::string& bytes) {
  const std::string what = "sequence state";
  const char *p = bytes.data(), *end = p + bytes.size();
  HYMBA_CHECK(bytes.size() >= sizeof kStateMagic && std::memcmp(p, kStateMagic, sizeof kStateMagic) == 0,
              what + ": not a saved hymba sequence state");
  p += sizeof kStateMagic;
  HYMBA_CHECK(get<uint32_t>(p, end, what) == kStateVersion, what + ": unsupported version");
  SequenceState s = into;  // fill a copy: `into` stays as it was if anything does not fit
  s.n_pos = get<int64_t>(p, end, what);
  HYMBA_CHECK(s.n_pos >= into.n_pos, what + ": position before the start of a sequence");
  HYMBA_CHECK(DType(get<uint8_t>(p, end, what)) == s.opts.dtype, what + ": saved with another --cache-type");
  HYMBA_CHECK(get<uint64_t>(p, end, what) == s.kv.size(), what + ": saved from a model with another layer count");
  for (size_t l = 0; l < s.kv.size(); ++l) {
    const std::string lw = what + ", layer " + std::to_string(l);
    s.kv[l].read_from(p, end, s.n_pos - into.n_pos, lw);
    get_vec(p, end, s.conv[l], into.conv[l].size(), lw + " conv state");
    get_vec(p, end, s.ssm[l], into.ssm[l].size(), lw + " SSM state");
  }
  HYMBA_CHECK(p == end, what + ": trailing bytes");
  into = std::move(s);
}

size_t SequenceState::bytes() const {
  size_t b = 0;
  for (auto& c : kv) b += c.bytes_used();
  for (auto& c : conv) b += c.size() * 4;
  for (auto& s : ssm) b += s.size() * 4;
  return b;
}

SequenceState make_empty_state(const Config& c, const std::vector<LayerPlan>& plan,
                               const CacheOptions& opts) {
  SequenceState s;
  s.opts = opts;
  const size_t L = plan.size();
  s.kv.resize(L), s.conv.resize(L), s.ssm.resize(L);
  for (size_t l = 0; l < L; ++l) {
    const auto& p = plan[l];
    if (p.producer()) {
      const int64_t ring = (p.global || opts.keep_all) ? -1 : c.sliding_window + 1;
      s.kv[l].init(c.num_key_value_heads, c.d_qk, c.d_v, opts.dtype, ring);
    }
    if (p.has_ssm) {
      s.conv[l].assign(size_t((c.mamba_d_conv - 1) * c.d_inner), 0.0f);
      s.ssm[l].assign(size_t(c.d_inner * c.mamba_d_state), 0.0f);
    }
  }
  return s;
}

SequenceState make_sequence_state(const Config& c, const std::vector<LayerPlan>& plan,
                                  std::shared_ptr<const SequenceState> prefix,
                                  const CacheOptions& opts) {
  SequenceState s = make_empty_state(c, plan, opts);
  if (prefix) {
    s.n_pos = prefix->n_pos;
    s.conv = prefix->conv;
    s.ssm = prefix->ssm;
    s.prefix = std::move(prefix);
  }
  return s;
}

StateBytes state_bytes(const Config& c, const std::vector<LayerPlan>& plan, int64_t n_ctx,
                       DType cache_dtype) {
  StateBytes b;
  const int64_t row = c.num_key_value_heads * (c.d_qk + c.d_v) * int64_t(dtype_size(cache_dtype)) + 4;
  const int64_t M = c.num_memory_tokens;
  for (const auto& p : plan) {
    if (p.producer()) {
      if (p.global) b.kv_global += n_ctx * row;
      else b.kv_swa += std::min<int64_t>(n_ctx, c.sliding_window + 1) * row;
      b.prefix_shared += M * row;
    }
    if (p.has_ssm) {
      b.conv += (c.mamba_d_conv - 1) * c.d_inner * 4;
      b.ssm += c.d_inner * c.mamba_d_state * 4;
    }
  }
  return b;
}

}  // namespace hymba
