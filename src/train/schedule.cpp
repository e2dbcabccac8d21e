#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "base/error.h"

namespace hymba {

int64_t LrSchedule::warmup() const {
  const int64_t w = warmup_steps >= 0 ? warmup_steps : int64_t(std::llround(warmup_frac * double(total_steps)));
  return std::clamp<int64_t>(w, 0, std::max<int64_t>(total_steps, 0));
}

int64_t LrSchedule::decay_start() const {
  const int64_t d = std::clamp<int64_t>(int64_t(std::llround(decay_frac * double(total_steps))), 0, total_steps);
  // The decay never eats into the warmup.
  return std::max(total_steps - d, warmup());
}

float LrSchedule::lr(int64_t step) const {
  HYMBA_CHECK(total_steps > 0, "lr schedule: total_steps must be > 0");
  HYMBA_CHECK(step >= 0, "lr schedule: negative step");
  const int64_t W = warmup();
  const double mx = max_lr, mn = min_lr;
  if (step < W) return float(mx * double(step + 1) / double(W));
  const int64_t T = total_steps;
  switch (kind) {
    case LrScheduleKind::Constant:
      return max_lr;
    case LrScheduleKind::Cosine: {
      const int64_t span = T - 1 - W;  // steps W..T-1 map to progress 0..1
      if (span <= 0) return max_lr;  // nothing left to decay over (warmup fills the run)
      const double p = std::min(1.0, double(step - W) / double(span));
      return float(mn + (mx - mn) * 0.5 * (1.0 + std::cos(std::numbers::pi * p)));
    }
    case LrScheduleKind::WSD: {
      const int64_t D0 = decay_start(), D = T - D0;
      if (step < D0) return max_lr;
      if (D <= 0) return max_lr;
      // Decay steps D0..T-1 map to (1/D .. 1]: the last step lands exactly on min_lr.
      const double p = std::min(1.0, double(step - D0 + 1) / double(D));
      return float(mx + (mn - mx) * p);
    }
  }
  return max_lr;
}

LrScheduleKind parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrScheduleKind::Constant;
  if (name == "cosine") return LrScheduleKind::Cosine;
  if (name == "wsd") return LrScheduleKind::WSD;
  fail("unknown lr schedule '" + name + "' (expected constant, cosine or wsd)");
}

std::string to_string(LrScheduleKind k) {
  switch (k) {
    case LrScheduleKind::Constant: return "constant";
    case LrScheduleKind::Cosine: return "cosine";
    case LrScheduleKind::WSD: return "wsd";
  }
  return "?";
}

}  // namespace hymba
