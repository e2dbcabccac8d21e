"""The paper's architectures (configs/ablations/*.json: attention-only, Mamba-only, sequential
hybrid, parallel hybrid global, + SWA, + KV sharing, + meta tokens = Hymba, Hymba with concat fusion) all train in C++
(one optimizer step) and the trained checkpoints run in the engine with logits matching the
float64 reference."""
import glob
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402


def main():
    R = U.Results()
    work = tempfile.mkdtemp(prefix="hymba-ablations-")
    try:
        data = U.make_data(work, copies=5)
        cfgs = sorted(glob.glob(os.path.join(U.SRC, "configs", "ablations", "*.json")))
        R.check("eight ablation configs", len(cfgs) == 8, str(len(cfgs)))
        ids = [1, 20, 300, 4000, 5, 66, 700, 8, 90, 1000, 11, 12] * 2
        for cfg in cfgs:
            name = os.path.basename(cfg)[:-5]
            out = os.path.join(work, name)
            r = U.run(["train", "--config", cfg, "--data", data, "--out", out, "--batch", "1", "--seq-len", "16",
                       "--steps", "1", "--eval-every", "0"])
            if r.returncode != 0:
                R.check(f"{name}: trains", False, r.stderr.strip()[-200:])
                continue
            ok, detail = U.logits_vs_reference(out, ids)
            R.check(f"{name}: trained, engine logits = reference", ok, detail)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
