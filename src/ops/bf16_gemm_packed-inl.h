// Packed outer-product GEMMs for bf16 weights: out[M, N] (=|+=) a[M, K] · w[N, K]ᵀ (+ bias), with
// AVX-512 BF16 vdpbf16ps on bf16-rounded activations, or with F32 FMAs on F32 activations (the
// weights widened while packed) where vdpbf16ps is slow. Raw AVX-512 intrinsics; the includer
// defines Dpbf16(acc, a, b) (vdpbf16ps) and the target attributes. Included once, in matmul.cpp's
// AVX3_DL section (and by the emulated test of tests/ops/bf16_gemm_packed_emul.cpp), so no include
// guard.
//
// Why packed (BLIS-style): an inner-product kernel (removed 2026-12-08, 2-6% slower on Emerald
// Rapids) streamed 6 weight rows from L2 per 24 vdpbf16ps and reduced every output horizontally.
// Here a block of 64 weight rows x kBpKC of K is repacked as pairs: word p·64 + n of the block =
// (w[n][2p], w[n][2p+1]), so one 64-byte load gives 16 output columns x 2 k, exactly vdpbf16ps'
// operand, and the block (kBpKC/2 x 256 B = 24 KiB) stays in L1 for all M activation rows. A
// 6 x 64 register tile (24 accumulators, 4 weight vectors, one broadcast activation pair) keeps
// the sums in F32 lanes that map to output columns: no horizontal reduction, vector stores. Each
// output is summed by one thread in K order (across K blocks through out[]), so the result does
// not depend on the thread count.

constexpr int kBpMR = 6;          // activation rows per register tile
constexpr int64_t kBpNR = 64;     // output columns per register tile and per packed block
constexpr int64_t kBpKC = 192;    // K per packed block (even): 96 pairs x 256 B = 24 KiB (L1)

// The 16 x 16 32-bit transpose of r (rows) in place: r[j] lane i = old r[i] lane j.
inline void Transpose16x16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  }
  // u[4k + c] lane L = rows 4k..4k+3 of column 4L + c
  for (int k = 0; k < 4; ++k) {
    u[4 * k + 0] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
    u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
    u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
  }
  // 4 x 4 transpose of 128-bit lanes across u[c], u[4 + c], u[8 + c], u[12 + c]
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i v2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), v3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
  }
}

// bp[p·64 + n] = (w[n0+n][k0+2p], w[n0+n][k0+2p+1]) for p < ceil(kc/2), n < 64; zero for
// n >= nc or k >= k0 + kc (the block's last pair when kc is odd). w: [N, K] bf16, row stride K.
inline void PackBf16Block(uint32_t* bp, const uint16_t* w, int64_t K, int64_t n0, int64_t nc, int64_t k0,
                          int64_t kc) {
  const int64_t kp = (kc + 1) / 2;
  for (int64_t g = 0; g < kBpNR; g += 16)
    for (int64_t p0 = 0; p0 < kp; p0 += 16) {
      const int64_t e = std::min<int64_t>(32, kc - 2 * p0);  // bf16 elements of this 16-pair slice
      const __mmask32 m = e >= 32 ? ~__mmask32(0) : __mmask32((uint64_t(1) << e) - 1);
      __m512i r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = g + i < nc ? _mm512_maskz_loadu_epi16(m, w + (n0 + g + i) * K + k0 + 2 * p0) : _mm512_setzero_si512();
      Transpose16x16(r);
      const int64_t q = std::min<int64_t>(16, kp - p0);
      for (int64_t j = 0; j < q; ++j) _mm512_store_si512(reinterpret_cast<void*>(bp + (p0 + j) * kBpNR + g), r[j]);
    }
}

// A register tile's start: mk = the lanes of the nc (<= 64) valid columns; c = out (continuing
// a K block, or init with accumulate) or 0, plus bias on init.
template <int MR>
inline void TileBegin(__m512 (&c)[MR][4], __mmask16 (&mk)[4], const float* out, int64_t N, int nc, bool init,
                      bool accumulate, const float* bias) {
  for (int v = 0; v < 4; ++v) {
    const int n = std::max(0, std::min(16, nc - 16 * v));
    mk[v] = __mmask16((1u << n) - 1);
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v) {
      if (!init || accumulate) c[i][v] = _mm512_maskz_loadu_ps(mk[v], out + i * N + 16 * v);
      else c[i][v] = _mm512_setzero_ps();
      if (init && bias) c[i][v] = _mm512_add_ps(c[i][v], _mm512_maskz_loadu_ps(mk[v], bias + 16 * v));
    }
}
template <int MR>
inline void TileEnd(const __m512 (&c)[MR][4], const __mmask16 (&mk)[4], float* out, int64_t N) {
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < 4; ++v)
      if (mk[v]) _mm512_mask_storeu_ps(out + i * N + 16 * v, mk[v], c[i][v]);
}

// out[i, 0..nc) for i < MR (row stride N): c = (init ? (accumulate ? out : 0) + bias : out)
// + Σ_p a[i][2p..2p+1] · bp[p] over kp pairs. a: rows of bf16 activations (stride lda, even;
// a pair is read as one 32-bit word), bp: a packed block (64-byte aligned).
template <int MR>
inline void BpTile(float* out, int64_t N, const uint16_t* a, int64_t lda, const uint32_t* bp, int64_t kp, int nc,
                   bool init, bool accumulate, const float* bias) {
  __mmask16 mk[4];
  __m512 c[MR][4];
  TileBegin<MR>(c, mk, out, N, nc, init, accumulate, bias);
  for (int64_t p = 0; p < kp; ++p) {
    const uint32_t* b = bp + p * kBpNR;
    const __m512i b0 = _mm512_load_si512(b), b1 = _mm512_load_si512(b + 16), b2 = _mm512_load_si512(b + 32),
                  b3 = _mm512_load_si512(b + 48);
    for (int i = 0; i < MR; ++i) {
      uint32_t x;
      std::memcpy(&x, a + i * lda + 2 * p, 4);
      const __m512i av = _mm512_set1_epi32(int(x));
      c[i][0] = Dpbf16(c[i][0], av, b0);
      c[i][1] = Dpbf16(c[i][1], av, b1);
      c[i][2] = Dpbf16(c[i][2], av, b2);
      c[i][3] = Dpbf16(c[i][3], av, b3);
    }
  }
  TileEnd<MR>(c, mk, out, N);
}

// f.template operator()<mr>() for a run-time mr in [1, kBpMR] (the last rows of M).
template <typename F>
inline void WithRows(int mr, F&& f) {
  switch (mr) {
    case 6: return f.template operator()<6>();
    case 5: return f.template operator()<5>();
    case 4: return f.template operator()<4>();
    case 3: return f.template operator()<3>();
    case 2: return f.template operator()<2>();
    default: return f.template operator()<1>();
  }
}

// Columns [n0, n0 + nc) (nc <= 64) of out for all M rows: K in blocks of kBpKC, each packed into
// bp (kBpKC/2 x 64 words, 64-byte aligned) then multiplied by every activation row. ab: [M, lda]
// bf16 activations, zero past K (lda even, >= K + 1 when K is odd).
inline void GemmBf16PackedColumns(float* out, const uint16_t* ab, int64_t lda, const uint16_t* w, const float* bias,
                                  int64_t M, int64_t N, int64_t K, int64_t n0, int64_t nc, bool accumulate,
                                  uint32_t* bp) {
  for (int64_t k0 = 0; k0 < K; k0 += kBpKC) {
    const int64_t kc = std::min(kBpKC, K - k0);
    PackBf16Block(bp, w, K, n0, nc, k0, kc);
    for (int64_t m0 = 0; m0 < M; m0 += kBpMR)
      WithRows(int(std::min<int64_t>(kBpMR, M - m0)), [&]<int R>() {
        BpTile<R>(out + m0 * N + n0, N, ab + m0 * lda + k0, lda, bp, (kc + 1) / 2, int(nc), k0 == 0, accumulate,
                  bias ? bias + n0 : nullptr);
      });
  }
}

// ---- The F32 variant: same 6 x 64 register tile and column blocks, one k per step (vfmadd231ps
// with the activation broadcast from memory). For CPUs whose vdpbf16ps issues below the F32 FMA's
// FLOP rate (Intel Sapphire/Emerald Rapids: 1 per 2 cycles vs 2 FMAs per cycle), where it is the
// faster of the two at the same K order; also sgemm's exact products on unrounded activations.
constexpr int64_t kFpKC = 128;  // K per packed block: 128 x 64 x 4 B = 32 KiB (48 KiB L1)

// bp[k·64 + n] = float(w[n0+n][k0+k]) for k < kc, n < 64; zero for n >= nc.
inline void PackF32Block(float* bp, const uint16_t* w, int64_t K, int64_t n0, int64_t nc, int64_t k0, int64_t kc) {
  for (int64_t g = 0; g < kBpNR; g += 16)
    for (int64_t k = 0; k < kc; k += 16) {
      const int64_t e = std::min<int64_t>(16, kc - k);
      const __mmask16 m = __mmask16((1u << e) - 1);
      __m512i r[16];
      for (int i = 0; i < 16; ++i)  // bf16 -> F32: the 16 bits become the high half
        r[i] = g + i < nc ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + (n0 + g + i) * K + k0 + k)), 16)
                          : _mm512_setzero_si512();
      Transpose16x16(r);
      for (int64_t j = 0; j < e; ++j) _mm512_store_si512(reinterpret_cast<void*>(bp + (k + j) * kBpNR + g), r[j]);
    }
}

// out[i, 0..nc) for i < MR (row stride N), as BpTile, with kc F32 FMAs per output: a: rows of F32
// activations (stride lda), bp: an F32 packed block (64-byte aligned).
template <int MR>
inline void FpTile(float* out, int64_t N, const float* a, int64_t lda, const float* bp, int64_t kc, int nc, bool init,
                   bool accumulate, const float* bias) {
  __mmask16 mk[4];
  __m512 c[MR][4];
  TileBegin<MR>(c, mk, out, N, nc, init, accumulate, bias);
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = bp + k * kBpNR;
    const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32),
                 b3 = _mm512_load_ps(b + 48);
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i * lda + k]);
      c[i][0] = _mm512_fmadd_ps(av, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(av, b1, c[i][1]);
      c[i][2] = _mm512_fmadd_ps(av, b2, c[i][2]);
      c[i][3] = _mm512_fmadd_ps(av, b3, c[i][3]);
    }
  }
  TileEnd<MR>(c, mk, out, N);
}

// As GemmBf16PackedColumns, on F32 activations a [M, K] (row stride K); bp: kFpKC x 64 floats.
inline void GemmF32PackedColumns(float* out, const float* a, const uint16_t* w, const float* bias, int64_t M, int64_t N,
                                 int64_t K, int64_t n0, int64_t nc, bool accumulate, float* bp) {
  for (int64_t k0 = 0; k0 < K; k0 += kFpKC) {
    const int64_t kc = std::min(kFpKC, K - k0);
    PackF32Block(bp, w, K, n0, nc, k0, kc);
    for (int64_t m0 = 0; m0 < M; m0 += kBpMR)
      WithRows(int(std::min<int64_t>(kBpMR, M - m0)), [&]<int R>() {
        FpTile<R>(out + m0 * N + n0, N, a + m0 * K + k0, K, bp, kc, int(nc), k0 == 0, accumulate,
                  bias ? bias + n0 : nullptr);
      });
  }
}
