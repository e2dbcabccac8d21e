// AdamW over one flat F32 parameter arena split into per-tensor groups (offset/size into the
// arena). Decoupled weight decay (PyTorch AdamW: p -= lr*wd*p, then the Adam update) only on groups
// with decay=true; the caller clears it for norms, biases, meta tokens, A_log, D.
// Gradient accumulation: the caller sums micro-batch grads into one arena and passes
// grad_scale = 1/num_micro_batches; the step works on g = grad*grad_scale.
// Clipping: global L2 norm over all groups' g; if clip_norm > 0 and norm > clip_norm, g is
// scaled by clip_norm/norm. Deterministic for any thread count (fixed-chunk partial sums).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hymba {

struct ParamGroup {
  std::string name;  // for error messages only
  int64_t offset = 0, size = 0;
  bool decay = true;
};

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
  float weight_decay = 0.1f;
  float clip_norm = 1.0f;  // <= 0: no clipping
};

// L2 norm of grad*scale over the given groups, accumulated in double in fixed chunks.
double grad_global_norm(const std::vector<ParamGroup>& groups, const float* grad, float scale = 1.0f);

class AdamW {
 public:
  // Groups must lie inside [0, numel) and not overlap (throws hymba::Error naming the group).
  AdamW(std::vector<ParamGroup> groups, int64_t numel, AdamWConfig cfg = {});

  // One update of params in place; returns the global grad norm before clipping.
  double step(float* params, const float* grad, float lr, float grad_scale = 1.0f);

  int64_t step_count() const { return t_; }
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }
  const std::vector<float>& m() const { return m_; }
  const std::vector<float>& v() const { return v_; }

  // Exact state (step, m, v; plus config and groups) as bytes. Loading checks numel and the group
  // layout match and restores step/m/v bit-exactly; the constructor's config is kept.
  std::string serialize() const;
  void deserialize(const std::string& bytes, const std::string& what = "optimizer state");
  void save(const std::string& path) const;  // atomic
  void load(const std::string& path);

 private:
  std::vector<ParamGroup> groups_;
  int64_t numel_;
  AdamWConfig cfg_;
  int64_t t_ = 0;
  std::vector<float> m_, v_;
};

}  // namespace hymba
