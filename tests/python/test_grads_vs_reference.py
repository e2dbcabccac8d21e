"""Gradient parity: `hymba grad` (C++ forward + backward, float32) against PyTorch autograd over the
float64 reference (reference/hymba_ref.py), for every parameter tensor of the official layout,
on random F32 checkpoints of every tests/configs/tiny-*.json and baseline-*.json.

Batches are longer than window + meta, so the sliding-window mask, the always-visible meta
tokens (model.memory_tokens gets a gradient), GQA and the KV groups are all exercised: a
consumer's gradient only reaches its producer's K/V rows of in_proj through the shared K/V, so
a dropped share shows up as a wrong in_proj gradient of the producer.
Tolerance per tensor: max |engine - ref| <= 1e-3 * max |ref| + 1e-6; losses within 1e-5 relative.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.environ.get("HYMBA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ["HYMBA_BIN"]
BUILD = os.environ.get("HYMBA_BUILD_DIR") or tempfile.mkdtemp()
sys.path.insert(0, os.path.join(SRC, "reference"))
import hymba_ref  # noqa: E402
import make_checkpoint as MC  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

R = U.Results()
check = R.check


def read(path):
    t = hymba_ref.read_safetensors(path)
    return t[0] if isinstance(t, tuple) else t


def main():
    work = os.path.join(BUILD, "grad-ckpt")
    os.makedirs(work, exist_ok=True)
    cfgs = sorted(glob.glob(os.path.join(SRC, "tests", "configs", "tiny-*.json")) +
                  glob.glob(os.path.join(SRC, "tests", "configs", "baseline-*.json")))
    rng = np.random.default_rng(0)
    for path in cfgs:
        name = os.path.basename(path)[:-5]
        cfg = json.load(open(path))
        ckpt = os.path.join(work, name)
        MC.make_checkpoint(cfg, ckpt, "f32", seed=11)
        window = cfg.get("sliding_window") or 0
        L = max(20, window + cfg.get("num_memory_tokens", 0) + 6)
        # tiny-hymba: 5 sequences on 2 threads, so the attention backward runs one sequence per
        # thread (layer_backward does when sequences >= 2 x threads).
        rows, threads = (5, ["-t", "2"]) if name == "tiny-hymba" else (2, [])
        batch = rng.integers(0, cfg["vocab_size"], size=(rows, L + 1)).astype(np.int64)
        bfile = os.path.join(ckpt, "batch.npy")
        np.save(bfile, batch)
        eng_out, ref_out = os.path.join(ckpt, "g_eng.safetensors"), os.path.join(ckpt, "g_ref.safetensors")
        spec = ";".join(",".join(map(str, r)) for r in batch)
        r = subprocess.run([BIN, "grad", "-m", ckpt, "--batch", spec, "-o", eng_out] + threads,
                           capture_output=True, text=True)
        if r.returncode != 0:
            check(f"{name}: hymba grad", False, r.stderr.strip())
            continue
        r2 = subprocess.run([sys.executable, os.path.join(SRC, "reference", "hymba_ref.py"), "grads", "--model", ckpt,
                             "--ids-file", bfile, "-o", ref_out], capture_output=True, text=True)
        if r2.returncode != 0:
            check(f"{name}: reference grads", False, r2.stderr.strip()[-300:])
            continue
        e, ref = read(eng_out), read(ref_out)
        loss_e = float(r.stdout.split()[-1])
        meta = hymba_ref.read_safetensors(ref_out)
        loss_r = None
        if isinstance(meta, tuple) and len(meta) > 1 and isinstance(meta[1], dict):
            loss_r = float(meta[1].get("loss", "nan"))
        if loss_r is not None:
            check(f"{name}: loss", abs(loss_e - loss_r) <= 1e-5 * abs(loss_r), f"engine {loss_e:.9g}, reference {loss_r:.9g}")
        check(f"{name}: same tensor names", sorted(e) == sorted(ref), f"{len(e)} vs {len(ref)}")
        worst, worst_name, bad = 0.0, "", []
        for k in ref:
            if k not in e:
                continue
            a, b = np.asarray(e[k], np.float64), np.asarray(ref[k], np.float64)
            err, scale = np.abs(a - b).max(), np.abs(b).max()
            if err > 1e-3 * scale + 1e-6:
                bad.append(f"{k} err {err:.2e} scale {scale:.2e}")
            rel = err / (scale + 1e-30)
            if rel > worst:
                worst, worst_name = rel, k
        check(f"{name}: every gradient within tolerance (L={L})", not bad,
              f"worst {worst_name} rel {worst:.2e}" + ("; " + "; ".join(bad[:4]) if bad else ""))
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
