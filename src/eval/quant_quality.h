// How much a quantized model's predictions differ from the model it came from, on a token stream
// (llama.cpp's `llama-perplexity --kl-divergence`): the chunks and scored positions of
// perplexity() (eval/perplexity.h), and over the scored positions the perplexity of each model,
// the mean KL divergence KL(base || test) of the next-token distributions and how often both
// put the same token first.
#pragma once
#include <cstdint>
#include <vector>

#include "eval/perplexity.h"
#include "model/imatrix.h"
#include "runtime/engine.h"

namespace hymba {

struct QuantQuality {
  PerplexityResult base, test;
  double kl_sum = 0;     // Σ KL(p_base || p_test) over scored positions (nats)
  int64_t top1_same = 0;  // positions where both argmaxes agree
  double mean_kl() const { return base.scored ? kl_sum / double(base.scored) : 0; }
  double top1() const { return base.scored ? double(top1_same) / double(base.scored) : 0; }
};

// llama.cpp's `llama-imatrix`: evaluates the chunks of perplexity() (eval/perplexity.h) and adds
// every linear layer's squared inputs, all rows of every chunk, to `out` (model/imatrix.h). The
// meta-token prefix is not included (it is computed once, the same for every input). Returns the
// calibration text's perplexity; `progress` as perplexity()'s.
PerplexityResult collect_imatrix(Engine& eng, const std::vector<int32_t>& tokens, const PerplexityOptions& o,
                                 ImportanceMatrix* out,
                                 const std::function<void(const PerplexityResult&)>& progress = {});

// Both engines must share the vocabulary; throws hymba::Error otherwise.
QuantQuality compare_models(Engine& base, Engine& test, const std::vector<int32_t>& tokens,
                            const PerplexityOptions& o);

}  // namespace hymba
