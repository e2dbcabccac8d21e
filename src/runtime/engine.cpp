#include "runtime/engine.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"
#include "base/hash.h"

namespace hymba {

namespace {
std::unique_ptr<Checkpoint> prepared(std::unique_ptr<Checkpoint> ck, const EngineOptions& o) {
  HYMBA_CHECK(ck != nullptr, "Engine: no checkpoint");
  if (o.quantize != DType::F32) {
    quantize_weights(*ck, o.quantize, o.imatrix.get());
    repack_q4_0x8_matrices(*ck);
  }
  return ck;
}
}  // namespace

std::unique_ptr<Engine> Engine::load(const std::string& dir, const EngineOptions& opts) {
  auto e = std::make_unique<Engine>(load_checkpoint(dir, opts.io), opts);
  e->dir_ = dir;
  return e;
}

Engine::Engine(std::unique_ptr<Checkpoint> ckpt, const EngineOptions& opts)
    : ckpt_(prepared(std::move(ckpt), opts)), model_(ckpt_->config, ckpt_->weights), opts_(opts) {
  HYMBA_CHECK(opts_.max_chunk > 0, "max_chunk must be positive");
  model_.freeze_weights();
  auto add = [&](const std::string& name, const std::string& dir, float scale) {
    std::unique_ptr<AdapterSet> a;
    if (!dir.empty()) {
      a = std::make_unique<AdapterSet>(load_peft_adapter(dir, ckpt_->config, ckpt_->weights));
      a->set_user_scale(scale);
      adapter_info_.push_back({name, dir, scale, a->cfg.dora, a->meta != nullptr});
    }
    const int v = add_variant(std::move(a), scale);
    if (!dir.empty()) adapter_variant_.push_back(v);
  };
  add("", opts_.lora, opts_.lora_scale);
  for (const auto& a : opts_.adapters) add(a.name, a.dir, a.scale);
  select(0);
}

int Engine::add_variant(std::unique_ptr<AdapterSet> a, float scale) {
  Variant v;
  v.adapter = std::move(a);
  v.scale = scale;
  variants_.push_back(std::move(v));
  const int id = int(variants_.size()) - 1;
  n_variants_.store(id + 1);
  // The prefix too: the meta tokens go through the adapted layers.
  if (opts_.use_prefix) {
    const int was = current_;
    select(id);
    variants_.back().prefix = model_.compute_prefix(opts_.cache_dtype);
    if (was >= 0) select(was);
  }
  return id;
}

namespace {
// Drops scale-0 entries, sorts by id; a repeated id keeps its last scale (as llama-server does).
std::vector<std::pair<int, float>> normalised(const Engine::LoraMix& m) {
  std::map<int, float> by_id;
  for (const auto& [id, s] : m) by_id[id] = s;
  std::vector<std::pair<int, float>> out;
  for (const auto& [id, s] : by_id)
    if (s != 0.0f) out.push_back({id, s});
  return out;
}

// --quantize in the model tag: fixed numbers, since saved prompt caches and --state-store keys
// hold the tag (a new format gets a new number; 0 = not quantized).
int64_t quantize_tag(DType q) {
  switch (q) {
    case DType::Q8: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_K: return 3;
    default: return 0;
  }
}
}  // namespace

void Engine::check_mix(const LoraMix& m) const {
  for (const auto& [id, s] : m) {
    HYMBA_CHECK(id >= 0 && id < int(adapter_info_.size()),
                "invalid adapter id " + std::to_string(id) + " (this server has " +
                    std::to_string(adapter_info_.size()) + " adapters: GET /lora-adapters)");
    HYMBA_CHECK(std::isfinite(s), "adapter " + std::to_string(id) + ": the scale must be a finite number");
  }
  const auto n = normalised(m);
  if (n.size() < 2) return;
  for (const auto& [id, s] : n) {
    const AdapterInfo& a = adapter_info_[size_t(id)];
    HYMBA_CHECK(!a.dora, "adapter " + std::to_string(id) + " (" + adapter_info_[size_t(id)].dir +
                                 ") is DoRA: DoRA is not additive, so it can only be used alone");
    HYMBA_CHECK(!a.meta, "adapter " + std::to_string(id) + " (" + adapter_info_[size_t(id)].dir +
                             ") trains the meta tokens: it can only be used alone");
  }
}

int Engine::mix_variant(const LoraMix& m) {
  check_mix(m);
  const auto n = normalised(m);
  // The variants made at load: the base alone (variant 0 without the unnamed adapter), or one
  // adapter at its load-time scale.
  if (n.empty() && !variants_[0].adapter) return 0;
  if (n.size() == 1 && n[0].second == adapter_info_[size_t(n[0].first)].scale)
    return adapter_variant_[size_t(n[0].first)];
  if (auto it = mixes_.find(n); it != mixes_.end()) return it->second;
  std::unique_ptr<AdapterSet> out;
  const auto& c = model_.config();
  if (n.size() == 1) {  // one adapter (LoRA or DoRA) at another scale: a copy, rescaled
    out = std::make_unique<AdapterSet>(*variants_[size_t(adapter_variant_[size_t(n[0].first)])].adapter);
    out->grad.clear();
    out->bind();
    out->set_user_scale(n[0].second);
  } else if (!n.empty()) {
    // Σ s_i·B_i·A_i = [s_1·B_1 | s_2·B_2 | ...] · [A_1; A_2; ...]: one LoRA of the summed rank with
    // scale 1, over the union of the modules (an adapter's rows stay zero where it has none).
    AdapterConfig cfg;
    cfg.rank = 0;
    std::vector<const AdapterSet*> src;
    for (const auto& [id, s] : n) {
      src.push_back(variants_[size_t(adapter_variant_[size_t(id)])].adapter.get());
      cfg.rank += src.back()->cfg.rank;
      for (Slot t : src.back()->cfg.targets)
        if (std::find(cfg.targets.begin(), cfg.targets.end(), t) == cfg.targets.end()) cfg.targets.push_back(t);
    }
    cfg.alpha = double(cfg.rank);      // scale() = 1
    out = std::make_unique<AdapterSet>(adapter_layout(c, ckpt_->weights, cfg));
    const int64_t R = cfg.rank;
    int64_t r0 = 0;
    for (size_t k = 0; k < n.size(); ++k) {
      const AdapterSet& a = *src[k];
      for (size_t l = 0; l < a.view.layers.size(); ++l)
        for (int t = 0; t < kNumSlots; ++t) {
          const LoraView& v = a.view.layers[l][size_t(t)];
          if (!v.active()) continue;
          const MatView& W = slot_matrix(ckpt_->weights.layers[l], Slot(t));
          LoraView& o = out->view.layers[l][size_t(t)];
          HYMBA_CHECK(o.active() && v.rank <= a.cfg.rank, "adapter mix: layout mismatch");
          // The views point into out->data, which this function owns and fills.
          float* A = const_cast<float*>(o.A);
          float* B = const_cast<float*>(o.B);
          const float s = a.cfg.scale() * n[k].second;
          std::copy_n(v.A, v.rank * W.cols, A + r0 * W.cols);
          for (int64_t j = 0; j < W.rows; ++j)
            for (int64_t q = 0; q < v.rank; ++q) B[j * R + r0 + q] = s * v.B[j * v.rank + q];
        }
      r0 += a.cfg.rank;
    }
    out->set_user_scale(1.0f);
  }
  const int v = add_variant(std::move(out), n.size() == 1 ? n[0].second : 1.0f);
  mixes_[n] = v;
  return v;
}

void Engine::select(int variant) {
  HYMBA_CHECK(variant >= 0 && variant < num_variants(), "no adapter variant " + std::to_string(variant));
  if (variant == current_) return;
  Variant& v = variants_[size_t(variant)];
  model_.set_adapters(v.adapter ? &v.adapter->view : nullptr, nullptr, &v.dora_norms);
  model_.set_meta_tokens(v.adapter ? v.adapter->meta : nullptr);
  current_ = variant;
}

SequenceState Engine::new_sequence(int variant) {
  select(variant);
  const auto& c = model_.config();
  CacheOptions co{opts_.cache_dtype, false};
  if (const auto& p = variants_[size_t(variant)].prefix) return make_sequence_state(c, model_.plan(), p, co);
  // No shared prefix: run the meta tokens through this sequence's own state. Its caches must
  // keep the meta K/V beyond the window, so it gets a private prefix.
  auto own = model_.compute_prefix(opts_.cache_dtype);
  return make_sequence_state(c, model_.plan(), std::move(own), co);
}

void Engine::eval(std::span<SequenceState* const> seqs, std::span<const std::vector<int32_t>> tokens,
                  std::vector<float>* last_logits, std::vector<std::vector<float>>* all_logits,
                  int variant) {
  HYMBA_CHECK(seqs.size() == tokens.size(), "eval: one token list per sequence");
  select(variant);
  const auto& c = model_.config();
  const int64_t H = c.hidden_size, V = c.vocab_size;
  const size_t B = seqs.size();
  for (auto& t : tokens)
    for (int32_t id : t)
      HYMBA_CHECK(id >= 0 && id < V, "token id " + std::to_string(id) + " out of range [0, " +
                                         std::to_string(V) + ")");
  if (last_logits) last_logits->assign(B * size_t(V), 0.0f);
  if (all_logits) {
    all_logits->assign(B, {});
    for (size_t i = 0; i < B; ++i) (*all_logits)[i].resize(tokens[i].size() * size_t(V));
  }
  std::vector<size_t> done(B, 0);
  std::vector<float> x, xl, lg;
  for (;;) {
    // Next chunk: take rows from each sequence in turn until max_chunk rows.
    std::vector<ForwardItem> items;
    std::vector<size_t> who, from;
    int64_t budget = opts_.max_chunk;
    for (size_t i = 0; i < B && budget > 0; ++i) {
      const int64_t left = int64_t(tokens[i].size() - done[i]);
      if (left == 0) continue;
      const int64_t n = std::min(left, budget);
      items.push_back({seqs[i], n});
      who.push_back(i), from.push_back(done[i]);
      budget -= n;
    }
    if (items.empty()) break;
    int64_t T = 0;
    for (auto& it : items) T += it.n;
    x.resize(size_t(T * H));
    int64_t r = 0;
    for (size_t k = 0; k < items.size(); ++k) {
      model_.embed(x.data() + r * H, tokens[who[k]].data() + from[k], items[k].n);
      r += items[k].n;
    }
    model_.forward(x.data(), items);
    // Logits only where someone wants them: all rows, or the last fed row of each finished
    // sequence (gathered into one matrix so the head's weights are read once per step).
    std::vector<size_t> fin;
    std::vector<int64_t> fin_row;
    r = 0;
    for (size_t k = 0; k < items.size(); ++k) {
      const size_t i = who[k];
      const int64_t n = items[k].n;
      if (all_logits)
        model_.logits((*all_logits)[i].data() + from[k] * size_t(V), x.data() + r * H, n);
      done[i] += size_t(n);
      if (last_logits && done[i] == tokens[i].size()) fin.push_back(i), fin_row.push_back(r + n - 1);
      r += n;
    }
    if (!fin.empty()) {
      xl.resize(fin.size() * size_t(H));
      for (size_t f = 0; f < fin.size(); ++f)
        std::copy_n(x.data() + fin_row[f] * H, H, xl.data() + f * size_t(H));
      lg.resize(fin.size() * size_t(V));
      model_.logits(lg.data(), xl.data(), int64_t(fin.size()));
      for (size_t f = 0; f < fin.size(); ++f)
        std::copy_n(lg.data() + f * size_t(V), V, last_logits->data() + fin[f] * size_t(V));
    }
  }
}

std::vector<float> Engine::eval_one(SequenceState& s, const std::vector<int32_t>& tokens, int variant) {
  SequenceState* seqs[1] = {&s};
  std::vector<float> out;
  eval(std::span<SequenceState* const>(seqs, 1), std::span<const std::vector<int32_t>>(&tokens, 1),
       &out, nullptr, variant);
  return out;
}

uint64_t Engine::model_tag(int variant) const {
  HYMBA_CHECK(variant >= 0 && variant < num_variants(), "no adapter variant " + std::to_string(variant));
  const Variant& v = variants_[size_t(variant)];
  uint64_t h = kFnv1a64Offset;
  auto mix = [&](const void* p, size_t n) { h = fnv1a64(p, n, h); };
  const auto& c = model_.config();
  for (int64_t x : {c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_memory_tokens, c.sliding_window,
                    int64_t(opts_.cache_dtype), quantize_tag(opts_.quantize), int64_t(opts_.use_prefix)})
    mix(&x, sizeof x);
  const auto& w = model_.weights();
  mix(w.final_norm, size_t(c.hidden_size) * sizeof(float));
  std::vector<float> row(size_t(c.hidden_size));
  for (int64_t r : {int64_t(0), c.vocab_size / 2, c.vocab_size - 1}) {
    matrow_to_f32(row.data(), w.lm_head, r);
    mix(row.data(), row.size() * sizeof(float));
  }
  if (v.adapter) {
    mix(v.adapter->data.data(), v.adapter->data.size() * sizeof(float));
    mix(&v.scale, sizeof(float));
    const float s = v.adapter->cfg.scale();
    const int32_t kind = int32_t(v.adapter->cfg.dora) * 2 + int32_t(v.adapter->cfg.rslora);
    mix(&s, sizeof s), mix(&kind, sizeof kind);
  }
  if (v.prefix) {
    const std::string p = serialize_state(*v.prefix);
    mix(p.data(), p.size());
  }
  return h;
}

}  // namespace hymba
