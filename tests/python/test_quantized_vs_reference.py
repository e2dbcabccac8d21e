#!/usr/bin/python3
"""8-bit weights (`--quantize q8`) against the float64 reference run on independently quantized
weights.

The reference side quantizes here, in numpy, from the rule alone (src/ops/quant.h): every linear
weight whose input width is a multiple of 32 (in_proj, x_proj, dt_proj, out_proj, the MLP, the LM
head; the embedding lookup keeps the stored table, so a tied head becomes its own matrix), in
blocks of 32 along a row, scale = max|w| / 127 in float32, q = round(w / scale), w' = scale * q.
Then:
- `hymba logits --quantize q8` equals the reference on w' within 1e-3 * max|logit| (the same
  tolerance as the unquantized engine-vs-reference test);
- the check can fail: the unquantized reference differs from the quantized one by more than the
  tolerance on the random checkpoints, so skipping the quantization would be caught;
- on the bundled model, the q8 logits stay close to the unquantized ones (reported: max error
  relative to max|logit|, and argmax agreement, which must be >= 0.9).
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref as R  # noqa: E402
import make_checkpoint as MC  # noqa: E402

RES = U.Results()
BLOCK = 32
LINEAR = ("mamba.in_proj.weight", "mamba.x_proj.0.weight", "mamba.dt_proj.0.weight",
          "mamba.out_proj.weight", "moe.experts.0.gate_proj.weight", "moe.experts.0.up_proj.weight",
          "moe.experts.0.down_proj.weight")


def q8(w):
    """float64 tensor [N, K] -> the float64 values of its Q8 copy (K % 32 == 0)."""
    a = w.numpy().astype(np.float32)
    N, K = a.shape
    blocks = a.reshape(N, K // BLOCK, BLOCK)
    scale = (np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    r = blocks / safe
    q = np.clip(np.sign(r) * np.floor(np.abs(r) + 0.5), -127, 127).astype(np.float32)
    return torch.from_numpy((scale * q).astype(np.float32).reshape(N, K).astype(np.float64))


def quantized_reference(folder):
    m = R.load(folder)
    n = 0
    for name in list(m.params):
        if name.split(".", 3)[-1] in LINEAR and name.startswith("model.layers.") and m.params[name].shape[1] % BLOCK == 0:
            m.params[name] = R.quantize_inputs(q8(m.params[name]))
            n += 1
    emb = m.params["model.embed_tokens.weight"]
    head = emb if m.cfg.tie else m.params["lm_head.weight"]
    if head.shape[1] % BLOCK == 0:
        m.params["lm_head.weight"] = R.quantize_inputs(q8(head))
        m.cfg.tie = False
        n += 1
    return m, n


def logits_of(model, ids):
    with torch.no_grad():
        return model.forward(np.array([ids], dtype=np.int64))[0].numpy()


def engine(folder, ids, quantize, work):
    out = os.path.join(work, "l.npy")
    if os.path.exists(out):
        os.remove(out)
    r = U.run(["logits", "-m", folder, "--ids", ",".join(map(str, ids)), "-o", out, "--quantize", quantize])
    if r.returncode != 0:
        return None, r.stderr.strip()[-300:]
    return np.load(out).astype(np.float64), ""


def main():
    work = tempfile.mkdtemp(prefix="hymba-q8-")
    try:
        for name in ("tiny-hymba", "tiny-global", "tiny-expand3"):
            config = json.load(open(os.path.join(U.SRC, "tests", "configs", name + ".json")))
            ckpt = os.path.join(work, name)
            MC.make_checkpoint(config, ckpt, "bf16", seed=3)
            ref_q, nq = quantized_reference(ckpt)
            cfg = R.derive_config(config)
            ids = [int(i) for i in np.random.default_rng(1).integers(0, cfg.V, 40)]
            got, err = engine(ckpt, ids, "q8", work)
            if not RES.check(f"{name}: logits --quantize q8 runs", got is not None, err):
                continue
            want = logits_of(ref_q, ids)
            full = logits_of(R.load(ckpt), ids)
            ok, msg, e, bound = U.close_with_8bit_activations(got, want)
            RES.check(f"{name}: q8 engine vs q8 reference ({nq} matrices quantized)", ok, msg)
            d = np.abs(full - want).max()
            RES.check(f"{name}: quantization is visible (unquantized differs by more than the bound)",
                      d > bound / 20 and d > 2 * e, f"unquantized vs q8 reference {d:.3e}")
        # The bundled model: how much 8 bits change a trained model's predictions.
        model = os.path.join(U.SRC, "models", "hymba-kjv")
        ids = [1] + [int(i) for i in np.random.default_rng(2).integers(3, 4096, 63)]
        a, ea = engine(model, ids, "none", work)
        b, eb = engine(model, ids, "q8", work)
        if RES.check("bundled model: logits with and without q8", a is not None and b is not None, ea + eb):
            rel = np.abs(a - b).max() / np.abs(a).max()
            agree = float((a.argmax(-1) == b.argmax(-1)).mean())
            RES.check("bundled model: q8 keeps the predictions", agree >= 0.9,
                      f"max |q8 - bf16| / max|logit| = {rel:.3e}, argmax agreement {agree:.3f}")
        bad = U.run(["logits", "-m", model, "--ids", "1,2", "-o", os.path.join(work, "x.npy"), "--quantize", "q4"])
        RES.check("--quantize q4 refused", bad.returncode == 1 and bad.stderr.startswith("hymba: error:"),
                  bad.stderr.strip())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
