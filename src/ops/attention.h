// Attention heads with GQA over a visibility rule (sliding window + always-visible meta tokens).
// Masks are rules, never materialised matrices.
#pragma once
#include <cstdint>
#include <span>

#include "base/dtype.h"

namespace hymba {

// Key at absolute position j is visible to the query at position i iff
//   j >= 0 (a negative position marks an empty cache slot) and j <= i and
//   (window < 0 || i - j <= window || j < n_always).
// So a sliding-window query sees itself, `window` previous tokens and the first n_always
// positions (the meta tokens); window < 0 is a global (plain causal) layer.
struct AttnRule {
  int64_t window = -1;
  int64_t n_always = 0;
};

struct AttnShape {
  int64_t n_head = 0;  // query heads; query head h reads kv head h / (n_head / n_kv)
  int64_t n_kv = 0;
  int64_t d_qk = 0;
  int64_t d_v = 0;
  float scale = 0;  // softmax scale, 1/sqrt(d_qk) for Hymba
};

// A run of n keys/values: k[n, n_kv, d_qk], v[n, n_kv, d_v] in F32, BF16 or F16, with the absolute
// position of each row in pos[n]. Order across and within segments does not matter (results agree
// to float rounding, ~1e-6 relative). Rows of empty slots (pos < 0) get weight 0 but their values
// must still be finite (0 · NaN = NaN): keep stale or zeroed data there, not uninitialised memory.
struct KVSegment {
  const void* k = nullptr;
  const void* v = nullptr;
  DType dtype = DType::F32;
  const int32_t* pos = nullptr;
  int64_t n = 0;
};

// out[Lq, n_head, d_v] = softmax(q kᵀ · scale, masked by rule) v over all segments.
// q[Lq, n_head, d_qk], qpos[Lq]. lse[Lq, n_head] (natural-log sum-exp of the scaled, masked
// scores) is written when non-null, for the backward. A query that sees no key gets zeros and
// lse = -inf. Threaded internally (OpenMP); the result does not depend on the thread count.
void attention_forward(float* out, float* lse, const float* q, const int32_t* qpos, int64_t Lq,
                       std::span<const KVSegment> segs, const AttnShape& shape,
                       const AttnRule& rule);

// One sequence's queries and the key segments they see (an item of a batch).
struct AttnQuery {
  float* out = nullptr;  // [Lq, n_head, d_v]
  float* lse = nullptr;  // [Lq, n_head] or null
  const float* q = nullptr;
  const int32_t* qpos = nullptr;
  int64_t Lq = 0;
  std::span<const KVSegment> segs;
};

// attention_forward of every item, all in one parallel region (a batched decode step: one query
// per sequence, and one fork/join per layer instead of one per sequence). Each item's result is
// bit-identical to attention_forward of that item alone.
void attention_forward_batch(std::span<const AttnQuery> items, const AttnShape& shape,
                             const AttnRule& rule);

// Backward for a single F32 segment (training): k[Lk, n_kv, d_qk], v[Lk, n_kv, d_v], kpos[Lk].
// out and lse as written by the forward. Accumulates (+=) into dq, dk, dv. Keys go in chunks
// whose attention probabilities are kept (2·n_head·Lq floats per key, in a buffer of the calling
// thread kept for its next call); key_chunk > 0 sets the chunk (rounded up to 64 keys; tests), 0
// picks the largest that keeps ~64 MiB. The products are BLAS sgemm calls on blocks of queries
// and keys; called from inside an OpenMP parallel region it runs on the calling thread.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const float* lse,
                        const int32_t* qpos, const int32_t* kpos, int64_t Lq, int64_t Lk,
                        const AttnShape& shape, const AttnRule& rule, int64_t key_chunk = 0);

}  // namespace hymba
