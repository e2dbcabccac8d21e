// The Mamba-1 selective scan: where the SSM heads' recurrent state is advanced.
#pragma once
#include <cstdint>
#include <span>

namespace hymba {

// Per channel c (D of them) and state index n (N of them), over t = 0..L-1:
//   h[c,n] = exp(delta[t,c] · A[c,n]) · h[c,n] + delta[t,c] · B[t,n] · x[t,c]
//   y      = Σ_n C[t,n] · h[c,n] + Dskip[c] · x[t,c]
//   out[t,c] = y · silu(z[t,c])           (z == null: out = y, no gate)
// x, delta, z, out: [L, D]; A: [D, N] (the negative -exp(A_log)); B, C: [L, N]; Dskip: [D].
// h: [D, N] state, read as the initial state and left as the final one (the SSM state of a
// sequence lives in runtime/sequence_state.h and is passed here).
void selective_scan_forward(float* out, float* h, const float* x, const float* delta,
                            const float* A, const float* B, const float* C, const float* Dskip,
                            const float* z, int64_t L, int64_t D, int64_t N);

// selective_scan_forward of several sequences lying one after another in the rows (lens[s] rows
// each), each from a zero state, final states dropped (training), in one parallel region over
// (sequence, channel block) tasks: the same bits as one call per sequence, except for a one-row
// sequence, which a call of its own computes with the one-step kernel (equal up to rounding).
void selective_scan_forward_seqs(float* out, const float* x, const float* delta, const float* A,
                                 const float* B, const float* C, const float* Dskip, const float* z,
                                 std::span<const int64_t> lens, int64_t D, int64_t N);

// One step (L = 1) of S sequences: row s of out, x, delta, z ([S, D]) and of B, C ([S, N]) with
// state hs[s]. A decode step's scans are each too small for the channel threading above, so the
// sequences go to the threads instead; each is computed as selective_scan_forward computes it.
void selective_scan_forward_steps(float* out, float* const* hs, const float* x, const float* delta,
                                  const float* A, const float* B, const float* C, const float* Dskip,
                                  const float* z, int64_t S, int64_t D, int64_t N);

// Backward from the initial state h0 (null = zeros); recomputes the states internally.
// Accumulates (+=) into every non-null gradient: dx, ddelta, dz: [L, D]; dA: [D, N];
// dB, dC: [L, N]; dDskip: [D]. With accumulate false the per-step ones (dx, ddelta, dz, dB, dC)
// are overwritten instead (no zero-fill needed); dA and dDskip still add.
void selective_scan_backward(float* dx, float* ddelta, float* dA, float* dB, float* dC,
                             float* dDskip, float* dz, const float* dout, const float* h0,
                             const float* x, const float* delta, const float* A, const float* B,
                             const float* C, const float* Dskip, const float* z, int64_t L,
                             int64_t D, int64_t N, bool accumulate = true);

// selective_scan_backward of several sequences lying one after another in the rows (lens[s] rows
// each, from zero initial states; dx, ..., dB, dC, dout, x, delta, B, C, z cover Σ lens rows), in
// one parallel region over (sequence, channel chunk) tasks: a training batch's sequences balance
// across the threads without a fork/join each. dA and dDskip get each sequence's share in order:
// the same bits as one selective_scan_backward per sequence.
void selective_scan_backward_seqs(float* dx, float* ddelta, float* dA, float* dB, float* dC,
                                  float* dDskip, float* dz, const float* dout, const float* x,
                                  const float* delta, const float* A, const float* B, const float* C,
                                  const float* Dskip, const float* z, std::span<const int64_t> lens,
                                  int64_t D, int64_t N, bool accumulate = true);

}  // namespace hymba
