#!/usr/bin/python3
"""`hymba bench --train` runs the C++ trainer and the PyTorch reference trainer
(reference/train_ref.py) on the same checkpoint and the same token batches: their first losses
(before any update) must agree, and both report a positive throughput. Speed itself is not
asserted here (benchmarks, not timed tests)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

R = U.Results()


def main():
    cfg = os.path.join(U.SRC, "tests", "configs", "tiny-hymba.json")
    r = U.run(["bench", "--train", "--config", cfg, "--train-batch", "2", "--seq-len", "24",
               "--steps", "1", "--no-peaks", "--json"])
    R.check("bench --train exits 0", r.returncode == 0, r.stderr.strip()[-300:])
    if r.returncode == 0:
        j = json.loads(r.stdout)
        R.check("PyTorch reference ran", j["torch"] == "ok", j["torch"])
        R.check("C++ throughput > 0", j["tokens_per_s"] > 0, f"{j['tokens_per_s']:.1f} tok/s")
        R.check("PyTorch throughput > 0", j["torch_tokens_per_s"] > 0, f"{j['torch_tokens_per_s']:.1f} tok/s")
        if j["torch"] == "ok":
            a, b = j["first_loss"], j["torch_first_loss"]
            R.check("same first loss (same model and data)", abs(a - b) <= 1e-4 * max(1.0, abs(b)),
                    f"{a:.7f} vs {b:.7f}")
    bad = U.run(["bench", "--train", "--config", cfg, "--steps", "0", "--no-torch"])
    R.check("--steps 0 refused", bad.returncode == 1 and bad.stderr.startswith("hymba: error:"), bad.stderr.strip())
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
