#!/usr/bin/python3
"""Activation checkpointing (`--grad-checkpointing`, HymbaModel::set_grad_checkpointing): the
backward reruns each layer's forward from its kept input instead of keeping every intermediate.
`hymba grad` with it on and off must give the same loss and gradients: every parameter of a full
model (tiny config with a K/V-sharing consumer, two sequences), and the adapter tensors of a LoRA
with lora_dropout (the masks are redrawn in the recomputation) and of a DoRA with it. Tolerance: max
|on - off| <= 1e-6 · max |off| per tensor (the recomputation runs the same code on the same
inputs, so in practice they are identical; the test prints the worst difference)."""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_ref  # noqa: E402
import testlib as U  # noqa: E402
from lora_ref import hymba_ref  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import make_checkpoint as MC  # noqa: E402

R = U.Results()
ALL = ["in_proj", "x_proj.0", "dt_proj.0", "out_proj", "gate_proj", "up_proj", "down_proj"]


def grads(ckpt, spec, out, *extra):
    r = U.run(["grad", "-m", ckpt, "--batch", spec, "-o", out, *extra])
    if r.returncode != 0:
        return None, None, r.stderr.strip()[-300:]
    return float(r.stdout.split()[-1]), hymba_ref.read_safetensors(out)[0], ""


def same(name, ckpt, spec, work, *extra):
    l0, g0, e0 = grads(ckpt, spec, os.path.join(work, "off.safetensors"), *extra, "--grad-checkpointing", "off")
    l1, g1, e1 = grads(ckpt, spec, os.path.join(work, "on.safetensors"), *extra, "--grad-checkpointing", "on")
    if not R.check(f"{name}: hymba grad runs with checkpointing off and on", g0 is not None and g1 is not None, e0 + e1):
        return
    R.check(f"{name}: same loss", l0 == l1, f"{l0!r} vs {l1!r}")
    worst, bad, nonzero = 0.0, [], 0
    for k, a in g0.items():
        b = g1.get(k)
        if b is None:
            bad.append(f"{k} missing")
            continue
        d, sc = np.abs(np.asarray(b, np.float64) - a).max(), np.abs(a).max()
        nonzero += sc > 0
        worst = max(worst, d / sc if sc > 0 else d)
        if d > 1e-6 * sc:
            bad.append(f"{k} diff {d:.2e} scale {sc:.2e}")
    R.check(f"{name}: same gradients ({len(g0)} tensors, worst relative difference {worst:.2e})",
            not bad and nonzero > 0 and set(g0) == set(g1), "; ".join(bad[:4]))


def main():
    work = tempfile.mkdtemp(prefix="hymba-grad-ckpt-")
    try:
        cfg = json.load(open(os.path.join(U.SRC, "tests", "configs", "tiny-hymba.json")))
        batch = np.random.default_rng(6).integers(0, cfg["vocab_size"], size=(2, 22))
        spec = ";".join(",".join(map(str, r)) for r in batch)
        ckpt = os.path.join(work, "base")
        MC.make_checkpoint(cfg, ckpt, "f32", seed=3)
        same("full parameters", ckpt, spec, work)
        model = hymba_ref.load(ckpt)
        for name, dora, extra in (("lora + dropout 0.25", False, ["--dropout", "0.25", "--dropout-seed", "9"]),
                                  ("dora + dropout 0.25", True, ["--dropout", "0.25", "--dropout-seed", "9"])):
            adir = os.path.join(work, name.split()[0])
            lora_ref.write_peft(adir, lora_ref.random_adapter(model, ALL, 4, 8.0, dora, seed=4 + dora), 4, 8.0, dora, ALL)
            same(name, ckpt, spec, work, "--lora", adir, *extra)
        r = U.run(["grad", "-m", ckpt, "--batch", spec, "-o", os.path.join(work, "x"), "--grad-checkpointing", "yes"])
        R.check("Bad --grad-checkpointing value refused", r.returncode == 1 and "on or off" in r.stderr, r.stderr.strip())
        return R.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
