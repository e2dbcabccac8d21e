// What the heads do (the paper's Figs. 7-10, Table 9 in small): from one stateless forward over
// [meta tokens; text] that keeps every intermediate (the training path's ModelActs), per layer:
//  - attention probabilities of each head (recomputed in double from the post-RoPE q and k, under
//    the layer's mask: causal, sliding window, meta tokens always visible);
//  - the SSM heads' implicit attention (Ali et al. / Zimerman et al. for Mamba-1): for channel d,
//    α_d[t,s] = Σ_n C_t[n] · exp(A[d,n] · Σ_{r=s+1..t} Δ_r[d]) · Δ_s[d] · B_s[n]; the map is the mean
//    over channels of |α_d|, rows normalised to sum 1 (the conv, D skip and gate are left out);
//  - the share of each query row's mass on Meta (key < M), BOS (the first text token), Self
//    (key = query) and Cross (the rest), averaged over the text's query rows and the heads;
//  - the rows' entropy, also for a second run without the meta prefix (num_memory_tokens = 0);
//  - the branches' output norms before fusion and after their norms, and the fusion norms'
//    weights (β1, β2);
//  - the loss on the text with a layer's attention (or SSM) branch removed: its fusion norm's
//    weight set to 0, i.e. fused = (0 + norm2(ssm)) / 2.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace hymba::analysis {

enum Category { kMeta = 0, kBos = 1, kSelf = 2, kCross = 3 };

struct Map {
  std::string kind;  // "attn" or "ssm"
  int layer = 0, head = 0;
  int64_t T = 0, M = 0;
  std::vector<double> p;        // [T, T] row-stochastic over visible keys, 0 elsewhere
  std::vector<uint8_t> visible; // [T, T] the layer's mask (SSM: s <= t)
};

struct LayerStats {
  bool attn = false, ssm = false, global = false;
  std::array<double, 4> attn_share{}, ssm_share{}, attn_share_nometa{}, ssm_share_nometa{};
  double attn_entropy = 0, ssm_entropy = 0, attn_entropy_nometa = 0, ssm_entropy_nometa = 0;
  double attn_out = 0, ssm_out = 0, attn_normed = 0, ssm_normed = 0;  // mean L2 norm per text row
  double fusion_w_attn = 0, fusion_w_ssm = 0;                          // mean |weight| of the fusion norms
  double loss_without_attn = 0, loss_without_ssm = 0;                  // hybrid layers only
};

struct Report {
  int64_t M = 0, n_tokens = 0;
  double loss = 0;  // mean next-token cross-entropy over the text
  std::vector<LayerStats> layers;
  std::vector<Map> maps;  // the requested (layer, head) maps, attention and SSM
};

// ids: the text's tokens (>= 2). map_layers / map_heads: which maps to keep (others are only
// summarised). Weights may be of any dtype the forward reads.
Report analyze(const Config& c, const Weights& w, const std::vector<int32_t>& ids,
               const std::vector<int>& map_layers, const std::vector<int>& map_heads);

}  // namespace hymba::analysis
