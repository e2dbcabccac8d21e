// Vector primitives shared by the ops (Highway, dispatched at run time to the best target the CPU
// has). Every reduction sums in a fixed lane/element order, so results depend only on the inputs
// and the CPU's target, never on the thread count.
#pragma once
#include <cstdint>

#include "base/dtype.h"

namespace hymba::simd {

// Σ a[i]·b[i].
float dot(const float* a, const float* b, int64_t n);

// S[r·lds + j] = scale · Σ_i a[r·lda + i] · b[j·bstride + i], r < R, j < nb, i < d.
// b holds nb rows of type bt (F32, BF16, F16), widened on the fly; each b row is read once for
// every 4 rows of a (attention: key rows shared by a GQA group's query heads).
void rows_dot(float* S, int64_t lds, const float* a, int64_t lda, int64_t R, const void* b,
              int64_t bstride, DType bt, int64_t nb, int64_t d, float scale);

// acc[r·lda + i] += Σ_j P[r·ldp + j] · b[j·bstride + i], r < R, i < d, j < nb (j in order).
// b rows of type bt widened on the fly (attention: p·V, and the backward's dS·K, dS·Q).
void rows_accum(float* acc, int64_t lda, const float* P, int64_t ldp, int64_t R, const void* b,
                int64_t bstride, DType bt, int64_t nb, int64_t d);

// x[i] = exp(x[i] - m); returns Σ x[i]. exp(-inf) = 0.
float exp_sub_sum(float* x, int64_t n, float m);

// max_i x[i] (-inf for n = 0).
float max(const float* x, int64_t n);

// y[i] *= a.
void scale(float* y, float a, int64_t n);

// y[i] += a·x[i].
void axpy(float* y, float a, const float* x, int64_t n);

// Pointwise activations with a vectorised exp (all of y may alias an input; dx/dgate/dup are
// accumulated, or with acc false overwritten, and dgate or dup may be null). silu(x) = x·σ(x), softplus(x) = log(1 + eˣ) (x for
// x > 20), swiglu(g, u) = silu(g)·u.
void silu(float* y, const float* x, int64_t n);
void silu_grad(float* dx, const float* dy, const float* x, int64_t n, bool acc = true);
void softplus(float* y, const float* x, int64_t n);
void sigmoid_mul_acc(float* dx, const float* dy, const float* x, int64_t n,
                     bool acc = true);  // dx += dy·σ(x)
void swiglu(float* y, const float* g, const float* u, int64_t n);
void swiglu_grad(float* dg, float* du, const float* dy, const float* g, const float* u, int64_t n,
                 bool acc = true);

}  // namespace hymba::simd
