#!/usr/bin/python3
"""lora_dropout in training, LoRA and DoRA, against PyTorch autograd on the float64 reference with
PEFT's formulas (src/peft/tuners/lora/variants.py, DoraLinearVariant.forward with a dropout that
is not the identity: the DoRA part is computed on the dropped-out input, base_result=None):
    LoRA: y = W·x + b + s·B·A·d(x)
    DoRA: y = W·x + b + (m/‖W + s·B·A‖ - 1) ⊙ W·d(x) + m/‖W + s·B·A‖ ⊙ s·B·A·d(x)   (norm detached)
with d(x) = mask ⊙ x / (1 - p). `hymba grad --lora DIR --dropout P --dropout-seed S` draws the
masks of HymbaModel::adapter_dropout (splitmix64 of seed, layer, module, element), which this
test draws again bit for bit, so both sides see the same masks. Checked: the loss, dA, dB, dm on
every target module (max |engine - ref| <= 1e-3·max |ref| + 1e-6), and that the masks matter
(the gradients without dropout differ by more than that).
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_ref  # noqa: E402
import testlib as U  # noqa: E402
from lora_ref import hymba_ref  # noqa: E402
from test_lora_vs_reference import compare, check, R  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import make_checkpoint as MC  # noqa: E402

ALL = ["in_proj", "x_proj.0", "dt_proj.0", "out_proj", "gate_proj", "up_proj", "down_proj"]
SLOT = {"mamba.in_proj": 0, "mamba.x_proj.0": 1, "mamba.dt_proj.0": 2, "mamba.out_proj": 3,
        "moe.experts.0.gate_proj": 4, "moe.experts.0.up_proj": 5, "moe.experts.0.down_proj": 6}
U64 = (1 << 64) - 1


def mask(seed, layer, slot, n, p):
    """HymbaModel::adapter_dropout's multipliers: 0 (dropped) or float32(1 / (1 - p))."""
    key = (seed ^ (layer << 40) ^ (slot << 56)) & U64
    with np.errstate(over="ignore"):
        z = np.uint64(key) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    threshold = np.uint64(int(float(np.float32(p)) * 2.0 ** 64))
    keep = float(np.float32(1.0) / (np.float32(1.0) - np.float32(p)))
    return np.where(z < threshold, 0.0, keep)


def ref_gradients(model, adapter, cfg, batch, p, seed):
    s = lora_ref.scale(cfg["r"], cfg["lora_alpha"])
    leaves = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in adapter.items()}
    params = dict(model.params)
    for k in leaves:
        if not k.endswith(".lora_A.weight"):
            continue
        path = k[len(lora_ref.PREFIX):-len(".lora_A.weight")]  # "N.mamba.in_proj"
        layer, module = int(path.split(".", 1)[0]), path.split(".", 1)[1]
        wname = "model.layers." + path + ".weight"
        A, B = leaves[k], leaves[k.replace("lora_A", "lora_B")]
        mv = leaves.get(k.replace(".lora_A.weight", ".lora_magnitude_vector"))
        W0 = params[wname].detach().clone()

        def fwd(x, W0=W0, A=A, B=B, mv=mv, layer=layer, slot=SLOT[module]):
            mk = torch.tensor(mask(seed, layer, slot, x.numel(), p).reshape(x.shape))
            xd = x * mk
            y = x @ W0.t()
            lora = s * ((xd @ A.t()) @ B.t())
            if mv is None:
                return y + lora
            mag = mv / (W0 + s * (B @ A)).norm(dim=1).detach()
            return y + (mag - 1) * (xd @ W0.t()) + mag * lora
        W0.hymba_forward = fwd
        params[wname] = W0
    ref = hymba_ref.HymbaReference(model.config, params)
    ref.cfg = model.cfg
    loss = ref.loss(batch[:, :-1], batch[:, 1:])
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in leaves.items()}


def main():
    work = tempfile.mkdtemp(prefix="hymba-lora-dropout-")
    try:
        cfg = json.load(open(os.path.join(U.SRC, "tests", "configs", "tiny-hymba.json")))
        rng = np.random.default_rng(4)
        batch = rng.integers(0, cfg["vocab_size"], size=(1, 15)).astype(np.int64)
        spec = ",".join(map(str, batch[0]))
        ckpt = os.path.join(work, "base")
        MC.make_checkpoint(cfg, ckpt, "f32", seed=5)
        model = hymba_ref.load(ckpt)
        p, seed = 0.25, 7
        for name, dora in (("lora", False), ("dora", True)):
            adapter = lora_ref.random_adapter(model, ALL, 4, 8.0, dora, seed=11 + dora)
            adir = os.path.join(work, name)
            lora_ref.write_peft(adir, adapter, 4, 8.0, dora, ALL)
            pcfg, _ = lora_ref.read_peft(adir)
            out = os.path.join(adir, "g.safetensors")
            res = U.run(["grad", "-m", ckpt, "--lora", adir, "--batch", spec, "-o", out, "--dropout", str(p),
                         "--dropout-seed", str(seed)])
            if not check(f"{name} + dropout {p}: hymba grad runs", res.returncode == 0, res.stderr.strip()[-300:]):
                continue
            eng = hymba_ref.read_safetensors(out)[0]
            loss_r, gref = ref_gradients(model, adapter, pcfg, batch, p, seed)
            loss_e = float(res.stdout.split()[-1])
            check(f"{name} + dropout: loss", abs(loss_e - loss_r) <= 1e-5 * abs(loss_r),
                  f"engine {loss_e:.9g} ref {loss_r:.9g}")
            compare(f"{name} + dropout: dA, dB{', dm' if dora else ''} vs autograd (PEFT's formula)", eng, gref)
            _, g0 = lora_ref.gradients(model, adapter, pcfg, batch)
            diff = max(np.abs(g0[k] - gref[k]).max() / (np.abs(gref[k]).max() + 1e-30) for k in gref)
            check(f"{name}: the masks matter (gradients without dropout differ, rel {diff:.2e})", diff > 1e-2, "")
        return R.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
