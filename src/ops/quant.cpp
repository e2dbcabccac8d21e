#include "ops/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"

namespace hymba {

void quantize_q8(int8_t* q, float* scales, const float* x, int64_t n) {
  HYMBA_CHECK(n % kQ8Block == 0, "quantize_q8: length " + std::to_string(n) +
                                     " is not a multiple of " + std::to_string(kQ8Block));
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
    HYMBA_CHECK(std::isfinite(amax), "quantize_q8: non-finite weight");
    const float scale = amax / 127.0f;
    scales[b] = scale;
    for (int64_t i = 0; i < kQ8Block; ++i) {
      // A true division, not a multiply by 1/scale: bf16 weights often land exactly on a
      // rounding tie, and the two disagree there (the rule is round(w / scale), half away from 0).
      const long r = scale > 0.0f ? std::lround(xb[i] / scale) : 0;
      q[b * kQ8Block + i] = int8_t(r > 127 ? 127 : r < -127 ? -127 : r);
    }
  }
}

void dequantize_q8(float* x, const int8_t* q, const float* scales, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = scales[i / kQ8Block] * float(q[i]);
}

namespace {

// The row's mean square σ² of the importance weighting (quant.h).
float mean_square(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * double(x[i]);
  return n > 0 ? float(s / double(n)) : 0.0f;
}

// w[i] = importance[i] · sqrt(σ² + x[i]²), the importance weighting of quant.h; returns Σ w.
float importance_weights(float* w, const float* importance, const float* x, int64_t n, float sigma2) {
  float sw = 0.0f;
  for (int64_t i = 0; i < n; ++i) w[i] = importance[i] * std::sqrt(sigma2 + x[i] * x[i]), sw += w[i];
  return sw;
}

// Q4_0 code of v for scale d (as stored: F16-rounded).
uint8_t q4_0_code(float v, float d) {
  const long r = d != 0.0f ? std::lround(v / d) + 8 : 8;
  return uint8_t(r < 0 ? 0 : r > 15 ? 15 : r);
}

// Σ w·(x - d·(q - 8))² of the block as quantize_q4_0 would encode it with F16 scale bits dh.
double q4_0_weighted_error(const float* xb, const float* w, uint16_t dh) {
  const float d = f16_to_f32(dh);
  double e = 0;
  for (int64_t i = 0; i < kQ4Block; ++i) {
    const double r = double(xb[i]) - double(d) * double(int(q4_0_code(xb[i], d)) - 8);
    e += double(w[i]) * r * r;
  }
  return e;
}

// The F16 scale of a Q4_0 block under importance weights w: candidate inverse scales -(8 + 0.1·k) / m
// (k = -9..9, m the element of largest magnitude) give codes, each with its weighted least-squares
// scale, and the candidate of least error Σw·x² - (Σw·x·l)² / Σw·l² wins (llama.cpp's
// make_qx_quants). Scored as stored (F16 scale, codes recomputed from it) against the plain
// d = m / -8 (dh), the better of the two is kept, so the result never does worse than the plain rule.
uint16_t q4_0_weighted_scale(const float* xb, const float* w, float m, uint16_t dh) {
  float best_gain = 0.0f, best_d = 0.0f;  // gain = (Σw·x·l)² / Σw·l²: the error it removes
  for (int k = -9; k <= 9; ++k) {
    const float iscale = -(8.0f + 0.1f * float(k)) / m;
    float swxl = 0.0f, swll = 0.0f;
    for (int64_t i = 0; i < kQ4Block; ++i) {
      // + 8.5 and truncation round half up: the code is in 0..15 after the clamp.
      const float l = float(std::clamp(int(iscale * xb[i] + 8.5f), 0, 15) - 8);
      swxl += w[i] * xb[i] * l, swll += w[i] * l * l;
    }
    if (swll > 0.0f && swxl * swxl > best_gain * swll) best_gain = swxl * swxl / swll, best_d = swxl / swll;
  }
  if (best_d == 0.0f) return dh;
  const uint16_t h = f32_to_f16(best_d);
  return q4_0_weighted_error(xb, w, h) < q4_0_weighted_error(xb, w, dh) ? h : dh;
}

}  // namespace

void quantize_q4_0(BlockQ4_0* out, const float* x, int64_t n, const float* importance) {
  HYMBA_CHECK(n % kQ4Block == 0, "quantize_q4_0: length " + std::to_string(n) +
                                     " is not a multiple of " + std::to_string(kQ4Block));
  for (int64_t i = 0; i < n; ++i) HYMBA_CHECK(std::isfinite(x[i]), "quantize_q4_0: non-finite weight");
  const float sigma2 = importance ? mean_square(x, n) : 0.0f;
  for (int64_t b = 0; b < n / kQ4Block; ++b) {
    const float* xb = x + b * kQ4Block;
    float amax = 0.0f, m = 0.0f;  // m: the element of largest magnitude, with its sign
    for (int64_t i = 0; i < kQ4Block; ++i)
      if (std::fabs(xb[i]) > amax) amax = std::fabs(xb[i]), m = xb[i];
    // m maps to code 0 (-8 · d = m), the asymmetric end of the 4-bit range gets the extreme.
    uint16_t dh = f32_to_f16(m / -8.0f);
    if (importance && m != 0.0f) {
      float w[kQ4Block];
      if (importance_weights(w, importance + b * kQ4Block, xb, kQ4Block, sigma2) > 0.0f)
        dh = q4_0_weighted_scale(xb, w, m, dh);
    }
    const float d = f16_to_f32(dh);
    BlockQ4_0& o = out[b];
    o.d = dh;
    for (int64_t i = 0; i < kQ4Block / 2; ++i)
      o.qs[i] = uint8_t(q4_0_code(xb[i], d) | q4_0_code(xb[i + kQ4Block / 2], d) << 4);
  }
}

bool q4_0x8_fits(int64_t rows, int64_t cols) {
  return rows > 0 && rows % kQ4x8Rows == 0 && cols > 0 && cols % (2 * kQ4Block) == 0;
}

void repack_q4_0x8(uint8_t* dst, const BlockQ4_0* src, int64_t rows, int64_t cols) {
  HYMBA_CHECK(q4_0x8_fits(rows, cols), "repack_q4_0x8: needs rows a multiple of 8 and cols of 64");
  const int64_t KB = cols / kQ4Block;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < KB; ++b) {
      const BlockQ4_0& blk = src[r * KB + b];
      std::memcpy(const_cast<uint8_t*>(q4_0x8_scale(dst, KB, r, b)), &blk.d, 2);
      std::memcpy(const_cast<uint8_t*>(q4_0x8_codes(dst, KB, r, b)), blk.qs, 16);
    }
}

void dequantize_q4_0(float* x, const BlockQ4_0* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const BlockQ4_0& k = b[i / kQ4Block];
    const int64_t j = i % kQ4Block;
    const int q = j < kQ4Block / 2 ? (k.qs[j] & 15) : (k.qs[j - kQ4Block / 2] >> 4);
    x[i] = f16_to_f32(k.d) * float(q - 8);
  }
}

namespace {
// Bytes of a super-block holding nsub (1..8) sub-blocks: whole, or the header and the code bytes
// of its sub-block pairs (a row's short last one).
size_t q4_k_block_bytes(int64_t nsub) {
  return nsub == 8 ? sizeof(BlockQ4_K) : kQ4KHeader + size_t((nsub + 1) / 2 * 32);
}
}  // namespace

size_t q4_k_row_bytes(int64_t n) {
  const int64_t t = n % kQ4KBlock;
  return size_t(n / kQ4KBlock) * sizeof(BlockQ4_K) + (t ? q4_k_block_bytes(t / kQ4KSub) : 0);
}

namespace {

// Codes L[32] in 0..15 and the affine map x ≈ scale·L - mn (scale >= 0, mn >= 0) minimizing the
// weighted squared error, searched as llama.cpp's make_qkx2_quants does: the plain min/max map,
// then nstep candidate inverse scales (15 + rmin + rdelta·i) / (max - min), each followed by the
// weighted least-squares scale and offset for the codes it gives; the best one wins.
float fit_sub_block(const float* x, const float* w, uint8_t* L, float* mn) {
  constexpr int n = int(kQ4KSub), nmax = 15, nstep = 20;
  constexpr float rmin = -1.0f, rdelta = 0.1f;
  float lo = x[0], hi = x[0], sw = 0.0f, swx = 0.0f, swx2 = 0.0f;
  for (int i = 0; i < n; ++i)
    lo = std::min(lo, x[i]), hi = std::max(hi, x[i]), sw += w[i], swx += w[i] * x[i], swx2 += w[i] * x[i] * x[i];
  lo = std::min(lo, 0.0f);  // the offset only ever lowers the range: m >= 0
  if (hi == lo) {
    std::fill(L, L + n, uint8_t(0));
    *mn = -lo;
    return 0.0f;
  }
  auto codes = [&](float iscale, uint8_t* out) {  // x - lo >= 0: + 0.5 and truncate rounds (fast)
    for (int i = 0; i < n; ++i) out[i] = uint8_t(std::min(int(iscale * (x[i] - lo) + 0.5f), nmax));
  };
  auto err = [&](const uint8_t* q, float sc, float off) {
    float e = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float d = sc * float(q[i]) + off - x[i];
      e += w[i] * d * d;
    }
    return e;
  };
  float scale = (hi - lo) / float(nmax), off = lo;
  codes(float(nmax) / (hi - lo), L);
  float best = err(L, scale, off);
  uint8_t cand[n];
  for (int is = 0; is <= nstep; ++is) {
    codes((rmin + rdelta * float(is) + float(nmax)) / (hi - lo), cand);
    float sl = 0.0f, sl2 = 0.0f, sxl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const float l = float(cand[i]);
      sl += w[i] * l, sl2 += w[i] * l * l, sxl += w[i] * l * x[i];
    }
    const float det = sw * sl2 - sl * sl;
    if (det <= 0.0f) continue;
    float sc = (sw * sxl - swx * sl) / det, o = (sl2 * swx - sl * sxl) / det;
    if (o > 0.0f) o = 0.0f, sc = sxl / sl2;  // keep the offset non-positive
    // Σ w·(sc·l + o - x)² from the sums (the candidates are the quantizer's hot loop).
    const float e = sc * sc * sl2 + 2.0f * sc * o * sl + o * o * sw - 2.0f * sc * sxl - 2.0f * o * swx + swx2;
    if (e < best) best = e, scale = sc, off = o, std::memcpy(L, cand, n);
  }
  *mn = -off;
  return scale;
}

// Stores sub-block j's 6-bit scale ls and min lm in the packed scales (llama.cpp's layout, the
// inverse of q4_k_scale_min), leaving the other sub-blocks' bits as they are.
void set_scale_min(uint8_t* q, int j, int ls, int lm) {
  if (j < 4) {
    q[j] = uint8_t((q[j] & 0xC0) | ls), q[j + 4] = uint8_t((q[j + 4] & 0xC0) | lm);
  } else {
    q[j + 4] = uint8_t((ls & 15) | (lm & 15) << 4);
    q[j - 4] = uint8_t((q[j - 4] & 0x3F) | (ls >> 4) << 6);
    q[j] = uint8_t((q[j] & 0x3F) | (lm >> 4) << 6);
  }
}

// With importance weights w: the stored 6-bit scale and min of sub-block j moved by ±1 each where
// that lowers the weighted error of the codes they give (the rounding to 6 bits ignores the
// weights; the unmoved pair is a candidate, so this never does worse).
void refine_scale_min(uint8_t* q, int j, const float* x, const float* w, float d, float dmin) {
  auto err = [&](int ls, int lm) {
    const float ds = d * float(ls), dm = dmin * float(lm);
    double e = 0;
    for (int i = 0; i < kQ4KSub; ++i) {
      const int l = ds > 0.0f ? std::clamp(int((x[i] + dm) / ds + 0.5f), 0, 15) : 0;
      const double r = double(ds) * l - dm - x[i];
      e += double(w[i]) * r * r;
    }
    return e;
  };
  int ls0, lm0;
  q4_k_scale_min(q, j, &ls0, &lm0);
  int bs = ls0, bm = lm0;
  double best = err(ls0, lm0);
  for (int a = -1; a <= 1; ++a)
    for (int b = -1; b <= 1; ++b) {
      const int ls = ls0 + a, lm = lm0 + b;
      if ((a == 0 && b == 0) || ls < 0 || ls > 63 || lm < 0 || lm > 63) continue;
      const double e = err(ls, lm);
      if (e < best) best = e, bs = ls, bm = lm;
    }
  set_scale_min(q, j, bs, bm);
}

}  // namespace

void quantize_q4_k(uint8_t* out, const float* x, int64_t n, const float* importance) {
  HYMBA_CHECK(n % kQ4KSub == 0, "quantize_q4_k: length " + std::to_string(n) +
                                    " is not a multiple of " + std::to_string(kQ4KSub));
  for (int64_t i = 0; i < n; ++i) HYMBA_CHECK(std::isfinite(x[i]), "quantize_q4_k: non-finite weight");
  const float sigma2 = importance ? mean_square(x, n) : 0.0f;
  for (int64_t s0 = 0; s0 < n; s0 += kQ4KBlock) {
    const int nsub = int(std::min(kQ4KBlock, n - s0) / kQ4KSub);
    const float* xs = x + s0;
    uint8_t L[kQ4KBlock] = {};
    float scale[8] = {}, mins[8] = {}, w[kQ4KSub], wi[kQ4KBlock];  // wi: the importance weights
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < nsub; ++j) {
      const float* xj = xs + j * kQ4KSub;
      float s2 = 0.0f;
      for (int i = 0; i < kQ4KSub; ++i) s2 += xj[i] * xj[i];
      const float av = std::sqrt(s2 / float(kQ4KSub));
      float* wj = wi + j * kQ4KSub;
      const float sw = importance ? importance_weights(wj, importance + s0 + j * kQ4KSub, xj, kQ4KSub, sigma2) : 0.0f;
      if (!(sw > 0.0f)) {  // no importance, or none for this sub-block: the plain weighting
        for (int i = 0; i < kQ4KSub; ++i) w[i] = av + std::fabs(xj[i]);
        wj = w;
      }
      scale[j] = fit_sub_block(xj, wj, L + j * kQ4KSub, &mins[j]);
      max_scale = std::max(max_scale, scale[j]), max_min = std::max(max_min, mins[j]);
    }
    BlockQ4_K h{};
    const float is = max_scale > 0.0f ? 63.0f / max_scale : 0.0f, im = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < nsub; ++j)
      set_scale_min(h.scales, j, std::clamp(int(std::nearbyint(is * scale[j])), 0, 63),
                    std::clamp(int(std::nearbyint(im * mins[j])), 0, 63));
    h.d = f32_to_f16(max_scale / 63.0f);
    h.dmin = f32_to_f16(max_min / 63.0f);
    const float d = f16_to_f32(h.d), dmin = f16_to_f32(h.dmin);
    if (importance)
      for (int j = 0; j < nsub; ++j) refine_scale_min(h.scales, j, xs + j * kQ4KSub, wi + j * kQ4KSub, d, dmin);
    for (int j = 0; j < nsub; ++j) {  // the codes again, for the scale and min as stored
      int sc, m;
      q4_k_scale_min(h.scales, j, &sc, &m);
      const float ds = d * float(sc), dm = dmin * float(m);
      for (int i = 0; i < kQ4KSub; ++i) {
        // Truncating v + 0.5 rounds v >= -0.5; anything lower clamps to 0 either way.
        const int l = ds > 0.0f ? int((xs[j * kQ4KSub + i] + dm) / ds + 0.5f) : 0;
        L[j * kQ4KSub + i] = uint8_t(std::clamp(l, 0, 15));
      }
    }
    for (int c = 0; c < (nsub + 1) / 2; ++c)
      for (int i = 0; i < 32; ++i) h.qs[32 * c + i] = uint8_t(L[64 * c + i] | L[64 * c + 32 + i] << 4);
    std::memcpy(out + size_t(s0 / kQ4KBlock) * sizeof(BlockQ4_K), &h, q4_k_block_bytes(nsub));
  }
}

void dequantize_q4_k(float* x, const uint8_t* row, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const auto& b = *reinterpret_cast<const BlockQ4_K*>(row + size_t(i / kQ4KBlock) * sizeof(BlockQ4_K));
    const int j = int(i % kQ4KBlock / kQ4KSub);
    int sc, m;
    q4_k_scale_min(b.scales, j, &sc, &m);
    x[i] = f16_to_f32(b.d) * float(sc) * float(q4_k_code(b, j, int(i % kQ4KSub))) - f16_to_f32(b.dmin) * float(m);
  }
}

void quantize_act_q8(int8_t* q, float* d, const float* x, int64_t n) {
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.0f;
    bool finite = true;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::fmax(amax, std::fabs(xb[i])), finite &= std::isfinite(xb[i]);
    if (!finite) amax = 0.0f;  // a NaN/Inf input makes the block's products NaN, never UB
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = finite ? amax / 127.0f : NAN;
    for (int64_t i = 0; i < kQ8Block; ++i) q[b * kQ8Block + i] = int8_t(std::nearbyint(xb[i] * id));
  }
}

bool quant_fits(DType t, int64_t cols) {
  switch (t) {
    case DType::Q8: return cols % kQ8Block == 0;
    case DType::Q4_0: return cols % kQ4Block == 0;
    case DType::Q4_K: return cols % kQ4KSub == 0;
    default: return true;
  }
}

size_t quant_row_stride(DType t, int64_t cols) {
  if (t == DType::Q4_0) return size_t(cols / kQ4Block) * sizeof(BlockQ4_0);
  if (t == DType::Q4_K) return q4_k_row_bytes(cols);
  return size_t(cols) * dtype_size(t);
}

size_t quant_matrix_bytes(DType t, int64_t rows, int64_t cols) {
  size_t b = size_t(rows) * quant_row_stride(t, cols);
  if (t == DType::Q8) b += size_t(rows * (cols / kQ8Block)) * sizeof(float);
  return b;
}

const char* quant_name(DType t) {
  switch (t) {
    case DType::Q8: return "q8_0";
    case DType::Q4_0: return "q4_0";
    case DType::Q4_K: return "q4_k";
    default: return "none";
  }
}

bool quant_from_name(const std::string& s, DType* out) {
  if (s == "q8_0" || s == "q8") *out = DType::Q8;
  else if (s == "q4_0") *out = DType::Q4_0;
  else if (s == "q4_k") *out = DType::Q4_K;
  else return false;
  return true;
}

}  // namespace hymba
