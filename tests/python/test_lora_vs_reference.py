"""LoRA and DoRA gradients: `hymba grad --lora DIR` (frozen base, adapters beside the base
matmuls, float32) against PyTorch autograd over the float64 reference with the adapted weights
substituted (tests/python/lora_ref.py), for dL/dA, dL/dB, the DoRA magnitude and trained meta tokens
(PEFT modules_to_save: the adapter's memory_tokens replace the base's), on every target
module (in_proj, x_proj, dt_proj, out_proj, gate/up/down), on F32 and BF16 bases (the bf16 base is
never widened as a whole: its backward goes through matview_backward_input). The DoRA norm is
detached as in PEFT, and the DPO loss (TRL's sigmoid form, reference = the base with the adapters
off) and its gradients are checked the same way. The test also shows the engine's gradient is the detached one and not the
one through the norm (they differ by more than the tolerance). Tolerance per tensor:
max |engine - ref| <= 1e-3 * max |ref| + 1e-6; loss within 1e-5 relative. Also LoRA/DoRA on a base
with fusion "concat" (out_proj twice as wide).
"""
import json
import os
import subprocess
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
check = R.check
ALL = ["in_proj", "x_proj.0", "dt_proj.0", "out_proj", "gate_proj", "up_proj", "down_proj"]


def compare(name, e, ref):
    bad, worst = [], (0.0, "")
    for k, b in ref.items():
        if k not in e:
            bad.append(f"{k} missing")
            continue
        a = np.asarray(e[k], np.float64)
        err, sc = np.abs(a - b).max(), np.abs(b).max()
        if err > 1e-3 * sc + 1e-6:
            bad.append(f"{k} err {err:.2e} scale {sc:.2e}")
        worst = max(worst, (err / (sc + 1e-30), k))
    extra = sorted(set(e) - set(ref))
    return check(name, not bad and not extra and len(ref) > 0,
                 f"{len(ref)} tensors, worst {worst[1]} rel {worst[0]:.2e}" +
                 ("; " + "; ".join(bad[:4]) if bad else "") + (f"; extra {extra[:3]}" if extra else ""))


def main():
    work = tempfile.mkdtemp(prefix="hymba-lora-")
    cfg = json.load(open(os.path.join(U.SRC, "tests", "configs", "tiny-hymba.json")))
    rng = np.random.default_rng(3)
    L = cfg["sliding_window"] + cfg["num_memory_tokens"] + 6
    batch = rng.integers(0, cfg["vocab_size"], size=(2, L + 1)).astype(np.int64)
    spec = ";".join(",".join(map(str, r)) for r in batch)
    cases = [("lora-f32", "f32", False, ALL, 4, 8.0),
             ("lora-meta-f32", "f32", False, ["in_proj", "out_proj"], 4, 8.0),
             ("dora-f32", "f32", True, ALL, 4, 8.0),
             ("dora-bf16", "bf16", True, ["in_proj", "x_proj.0", "dt_proj.0", "out_proj", "down_proj"], 2, 3.0),
             ("lora-bf16-mlp", "bf16", False, ["gate_proj", "up_proj", "down_proj"], 3, 6.0)]
    for name, dtype, dora, targets, r, alpha in cases:
        ckpt = os.path.join(work, "base-" + dtype)
        if not os.path.exists(ckpt):
            MC.make_checkpoint(cfg, ckpt, dtype, seed=5)
        model = hymba_ref.load(ckpt)
        adapter = lora_ref.random_adapter(model, targets, r, alpha, dora, seed=len(name), meta="meta" in name)
        adir = os.path.join(work, name)
        lora_ref.write_peft(adir, adapter, r, alpha, dora, targets)
        out = os.path.join(adir, "g.safetensors")
        res = U.run(["grad", "-m", ckpt, "--lora", adir, "--batch", spec, "-o", out])
        if not check(f"{name}: hymba grad --lora", res.returncode == 0, res.stderr.strip()[-300:]):
            continue
        eng = hymba_ref.read_safetensors(out)[0]
        pcfg, _ = lora_ref.read_peft(adir)
        loss_r, gref = lora_ref.gradients(model, adapter, pcfg, batch)
        loss_e = float(res.stdout.split()[-1])
        check(f"{name}: loss", abs(loss_e - loss_r) <= 1e-5 * abs(loss_r), f"engine {loss_e:.9g} ref {loss_r:.9g}")
        compare(f"{name}: dA, dB{', dm' if dora else ''}{', d meta tokens' if lora_ref.META in gref else ''} vs autograd",
                eng, gref)
        if dora and dtype == "f32":
            _, gfull = lora_ref.gradients(model, adapter, pcfg, batch, detach_norm=False)
            k = max((k for k in gfull if "lora_A" in k),
                    key=lambda k: np.abs(gfull[k] - gref[k]).max() / (np.abs(gref[k]).max() + 1e-30))
            d = np.abs(gfull[k] - gref[k]).max() / np.abs(gref[k]).max()
            e = np.abs(np.asarray(eng[k], np.float64) - gref[k]).max() / np.abs(gref[k]).max()
            check(f"{name}: the norm is detached (PEFT), not differentiated", d > 10 * max(e, 1e-4),
                  f"{k}: through-the-norm differs by {d:.2e}, engine vs detached {e:.2e}")
    # fusion "concat" (Table 9's ablation): out_proj is 2*d_inner wide, its LoRA A / DoRA norms follow.
    ccfg = json.load(open(os.path.join(U.SRC, "tests", "configs", "tiny-concat.json")))
    for name, dora in (("lora-concat-f32", False), ("dora-concat-f32", True)):
        ckpt = os.path.join(work, "base-concat")
        if not os.path.exists(ckpt):
            MC.make_checkpoint(ccfg, ckpt, "f32", seed=5)
        model = hymba_ref.load(ckpt)
        adapter = lora_ref.random_adapter(model, ["in_proj", "out_proj"], 4, 8.0, dora, seed=7 + dora)
        adir = os.path.join(work, name)
        lora_ref.write_peft(adir, adapter, 4, 8.0, dora, ["in_proj", "out_proj"])
        out = os.path.join(adir, "g.safetensors")
        res = U.run(["grad", "-m", ckpt, "--lora", adir, "--batch", spec, "-o", out])
        if not check(f"{name}: hymba grad --lora", res.returncode == 0, res.stderr.strip()[-300:]):
            continue
        pcfg, _ = lora_ref.read_peft(adir)
        loss_r, gref = lora_ref.gradients(model, adapter, pcfg, batch)
        loss_e = float(res.stdout.split()[-1])
        check(f"{name}: loss", abs(loss_e - loss_r) <= 1e-5 * abs(loss_r), f"engine {loss_e:.9g} ref {loss_r:.9g}")
        compare(f"{name}: dA, dB{', dm' if dora else ''} vs autograd", hymba_ref.read_safetensors(out)[0], gref)
    # DPO (TRL's sigmoid loss, reference = the base with adapters off) on a LoRA and a DoRA adapter.
    ckpt = os.path.join(work, "base-f32")
    model = hymba_ref.load(ckpt)
    for name, dora in (("dpo-lora", False), ("dpo-dora", True), ("dpo-lora-meta", False)):
        # with meta tokens: the reference log-probs use the base's, the policy the adapter's
        adapter = lora_ref.random_adapter(model, ALL, 4, 8.0, dora, seed=20 + dora, meta="meta" in name)
        adir = os.path.join(work, name)
        lora_ref.write_peft(adir, adapter, 4, 8.0, dora, ALL)
        out = os.path.join(adir, "g.safetensors")
        res = U.run(["grad", "-m", ckpt, "--lora", adir, "--dpo", "0.1", "--batch", spec, "-o", out])
        if not check(f"{name}: hymba grad --dpo", res.returncode == 0, res.stderr.strip()[-300:]):
            continue
        pcfg, _ = lora_ref.read_peft(adir)
        loss_r, gref = lora_ref.dpo_gradients(model, adapter, pcfg, batch, 0.1)
        loss_e = float(res.stdout.split()[-1])
        check(f"{name}: DPO loss", abs(loss_e - loss_r) <= 1e-4 * abs(loss_r) + 1e-6, f"engine {loss_e:.9g} ref {loss_r:.9g}")
        compare(f"{name}: DPO gradients vs autograd", hymba_ref.read_safetensors(out)[0], gref)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
