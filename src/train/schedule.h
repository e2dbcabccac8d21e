// Learning-rate schedules, as a pure function of the 0-based optimizer step.
//  - constant: linear warmup, then max_lr.
//  - cosine:   linear warmup, then cosine from max_lr (first step after warmup) down to min_lr
//              (last step, total_steps-1).
//  - wsd:      warmup-stable-decay as in the Hymba paper: linear warmup over the first
//              warmup_frac of the steps (1%), max_lr, then a *linear* decay over the last
//              decay_frac (20%) of the steps down to min_lr at the last step (the paper does
//              not pin the decay shape; linear is the simplest and matches common WSD use).
// Warmup starts from 0: step s < W gets max_lr*(s+1)/W, so the first step is small but non-zero
// and step W-1 reaches max_lr. Steps >= total_steps get the schedule's final value.
#pragma once
#include <cstdint>
#include <string>

namespace hymba {

enum class LrScheduleKind { Constant, Cosine, WSD };

struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::WSD;
  float max_lr = 1e-3f;
  float min_lr = 0.0f;
  int64_t total_steps = 1;
  double warmup_frac = 0.01;   // all kinds; ignored if warmup_steps >= 0
  int64_t warmup_steps = -1;   // explicit warmup length, overrides warmup_frac
  double decay_frac = 0.2;     // wsd only

  int64_t warmup() const;       // steps of warmup, clamped to [0, total_steps]
  int64_t decay_start() const;  // wsd: first step of the decay phase
  float lr(int64_t step) const;
};

LrScheduleKind parse_lr_schedule(const std::string& name);  // "constant" | "cosine" | "wsd"
std::string to_string(LrScheduleKind k);

}  // namespace hymba
