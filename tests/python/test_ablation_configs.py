"""The paper's architectures (configs/ablations/*.json: attention-only, Mamba-only, sequential
hybrid, parallel hybrid global, + SWA, + KV sharing, + meta tokens = Hymba) all train in C++
(one optimizer step) and the trained checkpoints run in the engine with logits matching the
float64 reference."""
import glob
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_util as U  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref  # noqa: E402


def main():
    R = U.Results()
    work = tempfile.mkdtemp(prefix="hymba-ablations-")
    try:
        data = U.make_data(work, copies=5)
        cfgs = sorted(glob.glob(os.path.join(U.SRC, "configs", "ablations", "*.json")))
        R.check("seven ablation configs", len(cfgs) == 7, str(len(cfgs)))
        ids = [1, 20, 300, 4000, 5, 66, 700, 8, 90, 1000, 11, 12] * 2
        for cfg in cfgs:
            name = os.path.basename(cfg)[:-5]
            out = os.path.join(work, name)
            r = U.run(["train", "--config", cfg, "--data", data, "--out", out, "--batch", "1", "--seq-len", "16",
                       "--steps", "1", "--eval-every", "0"])
            if r.returncode != 0:
                R.check(f"{name}: trains", False, r.stderr.strip()[-200:])
                continue
            npy = os.path.join(work, name + ".npy")
            r = U.run(["logits", "-m", out, "--ids", ",".join(map(str, ids)), "-o", npy])
            if r.returncode != 0:
                R.check(f"{name}: runs in the engine", False, r.stderr.strip()[-200:])
                continue
            eng = np.load(npy).astype(np.float64)
            ref = hymba_ref.load(out).forward(np.array([ids]))
            ref = ref.detach().numpy()[0] if hasattr(ref, "detach") else np.asarray(ref)[0]
            err = np.abs(eng - ref).max()
            R.check(f"{name}: trained, engine logits = reference", err <= 1e-3 * max(1.0, np.abs(ref).max()),
                    f"max abs err {err:.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
