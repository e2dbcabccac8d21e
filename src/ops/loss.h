// Softmax and the next-token cross-entropy.
#pragma once
#include <cstdint>

namespace hymba {

// In place softmax over each row of x[n, V].
void softmax_rows(float* x, int64_t n, int64_t V);

// losses[n] = -log softmax(logits[t])[targets[t]]; rows with target < 0 are ignored (loss 0).
// Returns the mean over counted rows (0 if none).
double cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t n,
                             int64_t V);
// dlogits[n, V] = scale · (softmax(logits) - onehot(target)) for counted rows, 0 for ignored ones
// (written, not accumulated; dlogits may be logits). Use scale = 1 / (number of counted rows) for
// a mean loss.
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets, int64_t n,
                            int64_t V, float scale);

}  // namespace hymba
