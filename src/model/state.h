// The inference state of a sequence: where the KV cache, the conv state and the SSM state live.
//
// Per sequence (paper §2.4, spec §6): global producer layers keep every K/V; sliding-window
// producers keep a ring of the last window+1 positions (a query sees itself + `window` previous
// tokens); KV consumers store nothing (they read their producer's cache); each SSM layer keeps a
// constant-size conv state [K-1, D_in] and SSM state [D_in, N].
// The meta-token prefix (K/V of the M meta tokens, conv and SSM states after them) is computed
// once per model and shared read-only by every sequence (`prefix`).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "model/config.h"
#include "ops/attention.h"

namespace hymba {

// K/V of one producer layer, stored in `dtype` (bf16 by default), post-RoPE, without GQA repeat.
class KVCache {
 public:
  // ring_capacity < 0: keeps everything (global layers, the meta prefix); else a ring.
  void init(int64_t n_kv, int64_t d_qk, int64_t d_v, DType dtype, int64_t ring_capacity);
  // Appends n rows: k[n, n_kv*d_qk], v[n, n_kv*d_v] (F32) at positions pos[n]. A ring keeps
  // only the last `capacity` rows.
  void append(const float* k, const float* v, const int32_t* pos, int64_t n);
  KVSegment segment() const;
  bool empty() const { return stored_ == 0; }
  size_t bytes_used() const;      // K/V/positions of the rows held (or the ring's full size)
  int64_t rows_held() const;
  bool ring() const { return cap_ >= 0; }
  // Exact bytes of the cache (layout, rows, positions) appended to `out`; read_from() restores
  // them into a cache init()ed with the same layout that has since seen `new_rows` positions, or
  // throws hymba::Error naming `what`.
  void write_to(std::string& out) const;
  void read_from(const char*& p, const char* end, int64_t new_rows, const std::string& what);

 private:
  int64_t n_kv_ = 0, d_qk_ = 0, d_v_ = 0, cap_ = -1;
  DType dtype_ = DType::BF16;
  int64_t stored_ = 0;  // rows appended so far
  std::vector<uint8_t> k_, v_;
  std::vector<int32_t> pos_;
};

struct CacheOptions {
  DType dtype = DType::BF16;  // K/V storage: bf16 (default, as the paper's cache figures), f16, f32
  bool keep_all = false;      // no rings (used for the meta prefix)
};

struct SequenceState {
  std::shared_ptr<const SequenceState> prefix;  // the shared meta-token prefix, or null
  int64_t n_pos = 0;  // absolute position of the next row (meta tokens occupy 0..M-1)
  CacheOptions opts;
  std::vector<KVCache> kv;                 // [layer], used by producers only
  std::vector<std::vector<float>> conv;    // [layer] -> [K-1, D_in], SSM layers only
  std::vector<std::vector<float>> ssm;     // [layer] -> [D_in, N], SSM layers only

  // Bytes this sequence holds itself (not counting the shared prefix).
  size_t bytes() const;
};

// A sequence's own state (position, caches, conv and SSM states; not the shared prefix) as bytes,
// and back into `into`, a fresh state of the same model and cache type (e.g. from
// Engine::new_sequence()). Loading checks every layer's layout and size and throws
// hymba::Error, leaving `into` untouched, if the bytes do not fit.
std::string serialize_state(const SequenceState& s);
void deserialize_state(SequenceState& into, const std::string& bytes);

// An empty state (position 0, zero conv/SSM states, empty caches).
SequenceState make_empty_state(const Config& c, const std::vector<LayerPlan>& plan,
                               const CacheOptions& opts);
// A fresh sequence that starts after the shared meta-token prefix.
SequenceState make_sequence_state(const Config& c, const std::vector<LayerPlan>& plan,
                                  std::shared_ptr<const SequenceState> prefix,
                                  const CacheOptions& opts);

// Analytic per-sequence state size at a context of n_ctx real tokens, by component, for
// `hymba info` (spec §6.3; the meta prefix is shared, so it is reported apart).
struct StateBytes {
  int64_t kv_global = 0, kv_swa = 0, conv = 0, ssm = 0, prefix_shared = 0;
  int64_t total() const { return kv_global + kv_swa + conv + ssm; }
};
StateBytes state_bytes(const Config& c, const std::vector<LayerPlan>& plan, int64_t n_ctx,
                       DType cache_dtype);

}  // namespace hymba
