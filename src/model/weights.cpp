#include "model/weights.h"

#include <array>
#include <cstring>
#include <unordered_map>

#include "base/error.h"
#include "io/files.h"
#include "io/safetensors.h"
#include "ops/matmul.h"
#include "ops/quant.h"

namespace hymba {

std::vector<ParamSpec> param_specs(const Config& c) {
  const int64_t H = c.hidden_size, D = c.d_inner, N = c.mamba_d_state, R = c.dt_rank,
                K = c.mamba_d_conv, I = c.intermediate_size;
  std::vector<ParamSpec> s;
  auto mat = [&](std::string n, int64_t r, int64_t cols) { s.push_back({std::move(n), {r, cols}, true, false}); };
  auto vec = [&](std::string n, std::vector<int64_t> shape, bool no_decay) {
    s.push_back({std::move(n), std::move(shape), false, no_decay});
  };
  mat("model.embed_tokens.weight", c.vocab_size, H);
  if (c.num_memory_tokens > 0) vec("model.memory_tokens", {c.num_memory_tokens, H}, true);
  const auto plan = make_layer_plan(c);
  for (const LayerPlan& p : plan) {
    const std::string pre = "model.layers." + std::to_string(p.index) + ".";
    vec(pre + "input_layernorm.weight", {H}, true);
    mat(pre + "mamba.in_proj.weight", p.in_proj_rows, H);
    if (c.mamba_proj_bias) vec(pre + "mamba.in_proj.bias", {p.in_proj_rows}, true);
    if (p.has_ssm) {
      vec(pre + "mamba.conv1d.weight", {D, 1, K}, false);
      if (c.mamba_conv_bias) vec(pre + "mamba.conv1d.bias", {D}, true);
      mat(pre + "mamba.x_proj.0.weight", R + 2 * N, D);
      mat(pre + "mamba.dt_proj.0.weight", D, R);
      vec(pre + "mamba.dt_proj.0.bias", {D}, true);
      vec(pre + "mamba.A_log.0", {D, N}, true);
      vec(pre + "mamba.D.0", {D}, true);
      vec(pre + "mamba.dt_layernorm.weight", {R}, true);
      vec(pre + "mamba.B_layernorm.weight", {N}, true);
      vec(pre + "mamba.C_layernorm.weight", {N}, true);
    }
    if (p.has_attn) vec(pre + "mamba.pre_avg_layernorm1.weight", {D}, true);
    if (p.has_ssm) vec(pre + "mamba.pre_avg_layernorm2.weight", {D}, true);
    mat(pre + "mamba.out_proj.weight", H, p.out_proj_cols);
    if (c.mamba_proj_bias) vec(pre + "mamba.out_proj.bias", {H}, true);
    vec(pre + "pre_moe_layernorm.weight", {H}, true);
    mat(pre + "moe.experts.0.gate_proj.weight", I, H);
    mat(pre + "moe.experts.0.up_proj.weight", I, H);
    mat(pre + "moe.experts.0.down_proj.weight", H, I);
  }
  vec("model.final_layernorm.weight", {H}, true);
  if (!c.tie_word_embeddings) mat("lm_head.weight", c.vocab_size, H);
  return s;
}

Weights bind_weights(const Config& c, const std::vector<ParamRef>& data) {
  const auto specs = param_specs(c);
  if (data.size() != specs.size())
    fail("bind_weights: got " + std::to_string(data.size()) + " tensors, the config implies " +
         std::to_string(specs.size()));
  std::unordered_map<std::string, size_t> idx;
  for (size_t i = 0; i < specs.size(); ++i) idx[specs[i].name] = i;
  auto find = [&](const std::string& n) -> const size_t* {
    auto it = idx.find(n);
    return it == idx.end() ? nullptr : &it->second;
  };
  auto vec = [&](const std::string& n) -> const float* {
    const size_t* i = find(n);
    if (!i) return nullptr;
    if (data[*i].dtype != DType::F32) fail("bind_weights: tensor '" + n + "' must be F32");
    return static_cast<const float*>(data[*i].data);
  };
  auto mat = [&](const std::string& n) -> MatView {
    const size_t* i = find(n);
    if (!i) return {};
    const DType t = data[*i].dtype;
    if (t != DType::F32 && t != DType::BF16 && t != DType::F16 && !is_block_quant(t))
      fail("bind_weights: tensor '" + n + "' has dtype " + dtype_name(t) +
           " (need F32, BF16, F16, Q8, Q4_0 or Q4_K)");
    return quantized_view(data[*i].data, t, specs[*i].shape[0], specs[*i].shape[1]);
  };
  Weights w;
  w.embed = mat("model.embed_tokens.weight");
  w.meta = vec("model.memory_tokens");
  w.final_norm = vec("model.final_layernorm.weight");
  w.lm_head = c.tie_word_embeddings ? w.embed : mat("lm_head.weight");
  w.layers.resize(size_t(c.num_hidden_layers));
  for (size_t l = 0; l < w.layers.size(); ++l) {
    LayerWeights& L = w.layers[l];
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    L.input_norm = vec(pre + "input_layernorm.weight");
    const auto mats = layer_matrix_ptrs(L);
    for (size_t i = 0; i < mats.size(); ++i) *mats[i] = mat(pre + kLayerMatrixModules[i] + ".weight");
    L.in_proj_bias = vec(pre + "mamba.in_proj.bias");
    L.conv_w = vec(pre + "mamba.conv1d.weight");
    L.conv_b = vec(pre + "mamba.conv1d.bias");
    L.dt_bias = vec(pre + "mamba.dt_proj.0.bias");
    L.A_log = vec(pre + "mamba.A_log.0");
    L.D = vec(pre + "mamba.D.0");
    L.dt_norm = vec(pre + "mamba.dt_layernorm.weight");
    L.B_norm = vec(pre + "mamba.B_layernorm.weight");
    L.C_norm = vec(pre + "mamba.C_layernorm.weight");
    L.pre_avg_norm1 = vec(pre + "mamba.pre_avg_layernorm1.weight");
    L.pre_avg_norm2 = vec(pre + "mamba.pre_avg_layernorm2.weight");
    L.out_proj_bias = vec(pre + "mamba.out_proj.bias");
    L.pre_mlp_norm = vec(pre + "pre_moe_layernorm.weight");
  }
  return w;
}

Checkpoint::~Checkpoint() = default;

namespace {
// A layer's matrices with their tensor names after "model.layers.N.".
template <class LW>
auto layer_matrices(LW& L) {
  std::array<std::pair<std::string, decltype(&L.in_proj)>, kLayerMatrixModules.size()> v;
  const auto ptrs = layer_matrix_ptrs(L);
  for (size_t i = 0; i < v.size(); ++i) v[i] = {std::string(kLayerMatrixModules[i]) + ".weight", ptrs[i]};
  return v;
}
std::string layer_prefix(size_t l) { return "model.layers." + std::to_string(l) + "."; }
}  // namespace

std::vector<std::pair<std::string, const MatView*>> named_matrices(const Weights& w) {
  std::vector<std::pair<std::string, const MatView*>> v = {{"model.embed_tokens.weight", &w.embed},
                                                           {"lm_head.weight", &w.lm_head}};
  for (size_t l = 0; l < w.layers.size(); ++l)
    for (auto [n, m] : layer_matrices(w.layers[l]))
      if (m->data) v.emplace_back(layer_prefix(l) + n, m);
  return v;
}

MatView quantized_view(const void* data, DType t, int64_t rows, int64_t cols) {
  MatView m{data, t, rows, cols};
  if (t == DType::Q8)  // planar: the codes, then the scales (src/ops/quant.h)
    m.scales = reinterpret_cast<const float*>(static_cast<const int8_t*>(data) + rows * cols);
  return m;
}

namespace {
// A U8 tensor holding matrix `name` [rows, cols] in the block format its metadata names: checks
// the format and byte count, and copies it to aligned memory if the file leaves it unaligned.
ParamRef quantized_ref(Checkpoint& ck, const std::string& dir, const std::string& name,
                       const TensorInfo& t, int64_t rows, int64_t cols) {
  const std::string where = "checkpoint " + dir + ": tensor '" + name + "'";
  const auto& md = ck.file->metadata();
  auto it = md.find(kQuantMetaPrefix + name);
  if (it == md.end())
    fail(where + " is U8 but the file's metadata has no '" + kQuantMetaPrefix + name +
         "' naming its format (written by `hymba quantize`?)");
  DType q;
  if (!quant_from_name(it->second, &q))
    fail(where + ": unknown quantization format '" + it->second + "' (q8_0, q4_0, q4_k)");
  if (!quant_fits(q, cols))
    fail(where + ": width " + std::to_string(cols) + " does not fit format " + it->second);
  const size_t bytes = quant_matrix_bytes(q, rows, cols);
  const std::vector<int64_t> want = {rows, int64_t(bytes / size_t(rows))};
  if (t.shape != want)
    fail(where + " (" + it->second + ") has shape " + shape_str(t.shape) + ", expected " + shape_str(want));
  if (reinterpret_cast<uintptr_t>(t.data) % 4 == 0) return {t.data, q};
  HugeBuffer& b = ck.q_store.emplace_back(bytes);
  std::memcpy(b.data(), t.data, bytes);
  b.make_read_only();
  return {b.data(), q};
}
}  // namespace

int repack_q4_0x8_matrices(Checkpoint& ck) {
  if (!matmul_q4_0x8_preferred()) return 0;
  std::vector<MatView*> ms;
  std::vector<HugeBuffer*> owner;  // the q_store buffer holding the matrix, or null (in the file)
  size_t total = 0;
  for (auto& L : ck.weights.layers)
    for (auto [name, m] : layer_matrices(L)) {
      if (!m->data || m->dtype != DType::Q4_0 || m->x8 || !q4_0x8_fits(m->rows, m->cols)) continue;
      HugeBuffer* o = nullptr;
      for (auto& b : ck.q_store)
        if (b.data() == m->data) o = &b;
      if (!o && (!ck.file || ck.file->mapped())) continue;  // a mapped file keeps its layout
      ms.push_back(m);
      owner.push_back(o);
      total += quant_matrix_bytes(DType::Q4_0, m->rows, m->cols);
    }
  if (ms.empty()) return 0;
  HugeBuffer buf(total);
  std::vector<size_t> at(ms.size());
  for (size_t i = 1; i < ms.size(); ++i) at[i] = at[i - 1] + quant_matrix_bytes(DType::Q4_0, ms[i - 1]->rows, ms[i - 1]->cols);
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < ms.size(); ++i) {
    MatView& m = *ms[i];
    repack_q4_0x8(buf.data() + at[i], static_cast<const BlockQ4_0*>(m.data), m.rows, m.cols);
    if (owner[i]) *owner[i] = HugeBuffer();  // the plain copy quantize_weights made
    else ck.file->release_pages(m.data, quant_matrix_bytes(DType::Q4_0, m.rows, m.cols));
    m.data = buf.data() + at[i];
    m.x8 = true;
  }
  buf.make_read_only();
  ck.q_store.push_back(std::move(buf));
  return int(ms.size());
}


std::unique_ptr<Checkpoint> load_checkpoint(const std::string& dir, const LoadOptions& io) {
  auto ck = std::make_unique<Checkpoint>();
  ck->config = load_config(dir + "/config.json");
  ck->file = SafetensorsFile::open(dir, io);
  const Config& c = ck->config;
  const auto specs = param_specs(c);
  std::vector<ParamRef> refs;
  refs.reserve(specs.size());
  ck->f32_store.reserve(specs.size());  // inner buffers never move, but keep it tidy
  std::unordered_map<std::string, bool> expected;
  for (auto& s : specs) expected[s.name] = true;
  for (auto& [name, t] : ck->file->tensors()) {
    if (expected.count(name)) continue;
    if (name == "lm_head.weight" && c.tie_word_embeddings) continue;  // tied: HF may still save it
                                                                       // (or a quantized head)
    fail("checkpoint " + dir + ": unexpected tensor '" + name + "' " + shape_str(t.shape) +
         " (not implied by config.json)");
  }
  for (const ParamSpec& s : specs) {
    const TensorInfo* t = ck->file->find(s.name);
    if (!t)
      fail("checkpoint " + dir + ": missing tensor '" + s.name + "' (expected shape " +
           shape_str(s.shape) + ")");
    if (s.matrix && t->dtype == DType::U8) {  // a quantized matrix (hymba quantize)
      refs.push_back(quantized_ref(*ck, dir, s.name, *t, s.shape[0], s.shape[1]));
      continue;
    }
    if (t->shape != s.shape)
      fail("checkpoint " + dir + ": tensor '" + s.name + "' has shape " + shape_str(t->shape) +
           ", expected " + shape_str(s.shape));
    const DType dt = t->dtype;
    if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16 && dt != DType::F64)
      fail("checkpoint " + dir + ": tensor '" + s.name + "' has dtype " + dtype_name(dt) +
           ", expected a float dtype");
    const size_t n = size_t(t->numel());
    const bool aligned = reinterpret_cast<uintptr_t>(t->data) % dtype_size(dt) == 0;
    if (s.matrix && aligned && dt != DType::F64) {
      refs.push_back({t->data, dt});  // zero-copy view into the mmap
    } else if (s.matrix && dt == DType::BF16) {
      auto& v = ck->bf16_store.emplace_back(n);  // unaligned bf16: copy, keep bf16
      std::memcpy(v.data(), t->data, n * 2);
      refs.push_back({v.data(), DType::BF16});
    } else {
      // Small vectors (and odd layouts) become owned F32; memcpy-based widening tolerates
      // unaligned sources for F32, the 16-bit paths read bytes via uint16_t.
      auto& v = ck->f32_store.emplace_back(n);
      if (aligned) {
        to_f32(v.data(), t->data, dt, n);
      } else {
        std::vector<uint8_t> tmp(t->nbytes);
        std::memcpy(tmp.data(), t->data, t->nbytes);
        to_f32(v.data(), tmp.data(), dt, n);
      }
      refs.push_back({v.data(), DType::F32});
    }
  }
  ck->weights = bind_weights(c, refs);
  repack_q4_0x8_matrices(*ck);
  const TensorInfo* head = c.tie_word_embeddings ? ck->file->find("lm_head.weight") : nullptr;
  if (head && head->dtype == DType::U8) {  // a tied head quantized apart from the embedding
    const ParamRef r = quantized_ref(*ck, dir, "lm_head.weight", *head, c.vocab_size, c.hidden_size);
    ck->weights.lm_head = quantized_view(r.data, r.dtype, c.vocab_size, c.hidden_size);
  }
  return ck;
}

}  // namespace hymba

namespace hymba {

int quantize_weights(Checkpoint& ck, DType type, const ImportanceMatrix* imatrix) {
  HYMBA_CHECK(is_block_quant(type),
              std::string("quantize_weights: not a block format: ") + dtype_name(type));
  int n = 0;
  auto quantize = [&](MatView& m, DType t, const std::string& name) {
    if (is_block_quant(m.dtype) || m.rows <= 0 || m.cols <= 0 ||
        !quant_fits(t, m.cols))
      return;
    const std::vector<float> imp = imatrix && t != DType::Q8 ? imatrix->importance(name, m.cols) : std::vector<float>{};
    const float* importance = imp.empty() ? nullptr : imp.data();
    HugeBuffer qb(quant_matrix_bytes(t, m.rows, m.cols));
    const MatView src = m;
    const size_t stride = quant_row_stride(t, src.cols);
    float* scales = reinterpret_cast<float*>(qb.data() + size_t(src.rows) * stride);  // Q8 only
    int64_t bad_row = -1;  // exceptions must not leave the parallel region
#pragma omp parallel
    {
      std::vector<float> row(size_t(src.cols));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < src.rows; ++r) {
        try {
          matrow_to_f32(row.data(), src, r);
          uint8_t* dst = qb.data() + size_t(r) * stride;
          if (t == DType::Q8)
            quantize_q8(reinterpret_cast<int8_t*>(dst), scales + r * (src.cols / kQ8Block), row.data(), src.cols);
          else if (t == DType::Q4_0)
            quantize_q4_0(reinterpret_cast<BlockQ4_0*>(dst), row.data(), src.cols, importance);
          else
            quantize_q4_k(dst, row.data(), src.cols, importance);
        } catch (const Error&) {
#pragma omp critical
          bad_row = r;
        }
      }
    }
    HYMBA_CHECK(bad_row < 0, std::string("quantize to ") + quant_name(t) + ": row " + std::to_string(bad_row) +
                                 " of a " + std::to_string(src.rows) + "x" + std::to_string(src.cols) +
                                 " matrix has a non-finite weight");
    // The stored copy is not read again, except the embedding table of a tied head (an mmap
    // faults its rows back in; a copy read into memory would read zeros).
    if (ck.file && (ck.file->mapped() || src.data != ck.weights.embed.data))
      ck.file->release_pages(src.data, quant_matrix_bytes(src.dtype, src.rows, src.cols));
    qb.make_read_only();
    ck.q_store.push_back(std::move(qb));
    m = quantized_view(ck.q_store.back().data(), t, src.rows, src.cols);
    ++n;
  };
  Weights& w = ck.weights;
  for (size_t l = 0; l < w.layers.size(); ++l)
    for (auto [name, m] : layer_matrices(w.layers[l])) {
      const bool scan_input = m == &w.layers[l].x_proj || m == &w.layers[l].dt_proj;
      if (!scan_input || type == DType::Q8) quantize(*m, type, layer_prefix(l) + name);
    }
  quantize(w.lm_head, DType::Q8, "lm_head.weight");
  return n;
}

}  // namespace hymba
