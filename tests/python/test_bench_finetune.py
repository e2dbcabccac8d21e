#!/usr/bin/python3
"""`hymba bench --finetune` on a tiny random model (seconds): LoRA and DoRA steps run with and
without activation checkpointing, report a positive throughput and peak RSS, and the first loss
(before any update, the adapters start as the identity) is the same with checkpointing on and
off and for LoRA and DoRA (same model, same tokens). Speed itself is not asserted (a benchmark,
not a timed test). Bad values are refused."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

R = U.Results()


def main():
    cfg = os.path.join(U.SRC, "tests", "configs", "tiny-hymba.json")
    first = {}
    for method in ("lora", "dora"):
        for ck in ("off", "on"):
            r = U.run(["bench", "--finetune", "--random", cfg, "--method", method, "--rank", "4", "--seq-len", "32",
                       "--grad-accum", "2", "--steps", "1", "--grad-checkpointing", ck, "--no-peaks", "--json", "-t", "1"])
            if not R.check(f"bench --finetune {method}, checkpointing {ck}: exits 0", r.returncode == 0,
                           r.stderr.strip()[-300:]):
                continue
            j = json.loads(r.stdout)
            R.check(f"{method}/{ck}: tokens/s > 0, peak RSS > 0, checkpointing as asked",
                    j["tokens_per_s"] > 0 and j["peak_rss_mib"] > 0 and j["grad_checkpointing"] == (ck == "on") and
                    j["trainable_params"] > 0, f"{j['tokens_per_s']:.1f} tok/s, {j['peak_rss_mib']:.0f} MiB")
            first[(method, ck)] = j["first_loss"]
    if len(first) == 4:
        v = list(first.values())
        R.check("same first loss with checkpointing on/off, LoRA and DoRA (identity adapters at init)",
                max(v) - min(v) <= 1e-5 * max(1.0, abs(v[0])), str(first))
    r = U.run(["bench", "--finetune", "--random", cfg, "--no-peaks", "--json", "--seq-len", "16", "--steps", "1"])
    R.check("--grad-checkpointing auto is off for a tiny model",
            r.returncode == 0 and json.loads(r.stdout)["grad_checkpointing"] is False, r.stderr.strip()[-200:])
    for extra, words in ((["--method", "full"], "lora or dora"), (["--grad-checkpointing", "yes"], "auto, on or off"),
                         (["--steps", "0"], "--steps")):
        bad = U.run(["bench", "--finetune", "--random", cfg, "--no-peaks", *extra])
        R.check(f"Bad {' '.join(extra)} refused", bad.returncode == 1 and words in bad.stderr, bad.stderr.strip()[-200:])
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
