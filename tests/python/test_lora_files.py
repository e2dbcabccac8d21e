"""PEFT adapter files: `--lora DIR[:scale]` applies an adapter without merging (logits vs the float64
reference with the adapted weights, tests/python/lora_ref.py), `hymba merge` writes the merged
checkpoint in the official layout (tensors vs the reference's merge, and the merged folder's logits),
a bf16 base, and a q8 base (vs the reference on the same 8-bit values) with an adapter, and bad adapters (wrong shape, unknown tensor, other
peft_type, missing files) rejected with a message naming the tensor/file and a non-zero exit."""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_ref  # noqa: E402
import test_quantized_vs_reference as TQ  # noqa: E402
import testlib as U  # noqa: E402
from lora_ref import hymba_ref  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import make_checkpoint as MC  # noqa: E402

R = U.Results()
check = R.check
ALL = ["in_proj", "x_proj.0", "dt_proj.0", "out_proj", "gate_proj", "up_proj", "down_proj"]


def ref_logits(model, adapter, pcfg, ids):
    params, _ = lora_ref.apply(model, adapter, pcfg)
    def detached(v):  # keeping the engine-side product of an 8-bit base (lora_ref.apply)
        d = v.detach()
        if getattr(v, "hymba_forward", None) is not None:
            d.hymba_forward = v.hymba_forward
        return d
    ref = hymba_ref.HymbaReference(model.config, {k: detached(v) for k, v in params.items()})
    ref.cfg = model.cfg
    with torch.no_grad():
        return ref.forward(np.array([ids]))[0].numpy()


def eng_logits(model_dir, ids, *extra):
    out = os.path.join(tempfile.mkdtemp(prefix="hymba-lora-logits-"), "l.npy")
    r = U.run(["logits", "-m", model_dir, "--ids", ",".join(map(str, ids)), "-o", out] + list(extra))
    return (np.load(out).astype(np.float64) if r.returncode == 0 else None), r


def close(name, eng, ref, rel):
    err, bound = np.abs(eng - ref).max(), rel * max(1.0, np.abs(ref).max())
    return check(name, err <= bound, f"max abs err {err:.2e} (bound {bound:.2e})")


def main():
    work = tempfile.mkdtemp(prefix="hymba-lora-files-")
    cfg = json.load(open(os.path.join(U.SRC, "tests", "configs", "tiny-hymba.json")))
    base = os.path.join(work, "base")
    MC.make_checkpoint(cfg, base, "f32", seed=7)
    model = hymba_ref.load(base)
    ids = list(np.random.default_rng(1).integers(0, cfg["vocab_size"], size=23))
    plain = U.reference_logits(base, ids)

    for dora, meta in ((False, False), (True, False), (False, True)):
        kind = ("dora" if dora else "lora") + ("-meta" if meta else "")
        adapter = lora_ref.random_adapter(model, ALL, 4, 8.0, dora, seed=2 + dora + 5 * meta, meta=meta)
        adir = os.path.join(work, kind)
        lora_ref.write_peft(adir, adapter, 4, 8.0, dora, ALL)
        pcfg, _ = lora_ref.read_peft(adir)
        want = ref_logits(model, adapter, pcfg, ids)
        check(f"{kind}: the adapter changes the reference's logits", np.abs(want - plain).max() > 1e-2,
              f"{np.abs(want - plain).max():.2e}")
        got, r = eng_logits(base, ids, "--lora", adir)
        if check(f"{kind}: logits --lora runs", got is not None, r.stderr.strip()[-200:]):
            close(f"{kind}: logits --lora vs reference", got, want, 1e-3)
        if meta:  # the stateless path reads the meta tokens itself
            got, r = eng_logits(base, ids, "--lora", adir, "--mode", "stateless")
            if check(f"{kind}: logits --lora --mode stateless runs", got is not None, r.stderr.strip()[-200:]):
                close(f"{kind}: stateless logits --lora vs reference", got, want, 1e-3)
            mt_only = {k: v for k, v in adapter.items() if k != lora_ref.META}
            check(f"{kind}: the adapter's meta tokens matter",
                  np.abs(ref_logits(model, mt_only, pcfg, ids) - want).max() > 1e-2)
        half = dict(pcfg, lora_alpha=pcfg["lora_alpha"] * 0.5)
        got, r = eng_logits(base, ids, "--lora", adir + ":0.5")
        if check(f"{kind}: --lora DIR:0.5 runs", got is not None, r.stderr.strip()[-200:]):
            close(f"{kind}: --lora DIR:0.5 == alpha/2 in the reference", got, ref_logits(model, adapter, half, ids), 1e-3)

        out = os.path.join(work, kind + "-merged")
        r = U.run(["merge", "-m", base, "--lora", adir, "-o", out, "--dtype", "f32"])
        if not check(f"{kind}: hymba merge", r.returncode == 0, (r.stdout + r.stderr).strip()[-200:]):
            continue
        mt = hymba_ref.read_checkpoint_tensors(out)
        mt = mt[0] if isinstance(mt, tuple) else mt
        want_t = lora_ref.merged(model, adapter, pcfg)
        bad = [k for k, v in want_t.items()
               if np.abs(np.asarray(mt[k], np.float64) - v).max() > 1e-5 * max(1.0, np.abs(v).max())]
        changed = sum(1 for k, v in want_t.items() if np.abs(v - model.params[k].numpy()).max() > 0)
        check(f"{kind}: merged tensors == the reference's W + s·B·A{' (DoRA-normalised)' if dora else ''}",
              not bad and sorted(mt) == sorted(want_t), f"{changed} tensors changed; bad {bad[:3]}")
        got, r = eng_logits(out, ids)
        if got is not None:
            close(f"{kind}: the merged model's logits == the adapted reference", got, want, 1e-3)
        r = U.run(["merge", "-m", base, "--lora", adir, "-o", out])
        check(f"Bad {kind}: merge into an existing model folder is refused", r.returncode != 0 and "exists" in r.stderr,
              r.stderr.strip()[-200:])

    # bf16 base with a DoRA adapter (norms from the bf16 rows), and the q8 base.
    b16 = os.path.join(work, "base-bf16")
    MC.make_checkpoint(cfg, b16, "bf16", seed=7)
    m16 = hymba_ref.load(b16)
    adapter = lora_ref.random_adapter(m16, ALL, 4, 8.0, True, seed=9)
    adir = os.path.join(work, "dora16")
    lora_ref.write_peft(adir, adapter, 4, 8.0, True, ALL, dtype="BF16")
    pcfg, adapter16 = lora_ref.read_peft(adir)
    want = ref_logits(m16, adapter16, pcfg, ids)
    got, r = eng_logits(b16, ids, "--lora", adir)
    if check("bf16 base + bf16 DoRA file: runs", got is not None, r.stderr.strip()[-200:]):
        close("bf16 base + bf16 DoRA file vs reference", got, want, 1e-3)
    got, r = eng_logits(b16, ids, "--lora", adir, "--quantize", "q8")
    if check("q8 base + DoRA: runs", got is not None, r.stderr.strip()[-200:]):
        mq, nq = TQ.quantized_reference(b16)  # the reference on the same Q8 values (QLoRA-style)
        _, msg, e, bound = U.close_with_8bit_activations(got, ref_logits(mq, adapter16, pcfg, ids))
        check(f"q8 base ({nq} Q8 matrices) + DoRA vs the reference on the Q8 values (max bound only)",
              e <= bound, msg)
        # One module at a time (fewer boundary flips to carry), each held to testlib's bound.
        for tgt in ALL:
            one = {k: v for k, v in adapter16.items() if "." + tgt + "." in k}
            d1 = os.path.join(work, "dora16-" + tgt)
            lora_ref.write_peft(d1, one, 4, 8.0, True, [tgt], dtype="BF16")
            p1, a1 = lora_ref.read_peft(d1)
            g1, r1 = eng_logits(b16, ids, "--lora", d1, "--quantize", "q8")
            if check(f"q8 base + DoRA on {tgt} only: runs", g1 is not None, r1.stderr.strip()[-200:]):
                ok, msg, _, _ = U.close_with_8bit_activations(g1, ref_logits(mq, a1, p1, ids))
                check(f"q8 base + DoRA on {tgt} only vs the reference on the Q8 values", ok, msg)

    # Bad adapters.
    good = os.path.join(work, "lora")
    def bad_copy(name, edit_tensors=None, edit_cfg=None):
        d = os.path.join(work, "bad-" + name)
        shutil.copytree(good, d)
        if edit_tensors:
            t = hymba_ref.read_safetensors(os.path.join(d, "adapter_model.safetensors"))[0]
            t = edit_tensors(dict(t))
            hymba_ref.write_safetensors(os.path.join(d, "adapter_model.safetensors"), t)
        if edit_cfg:
            c = json.load(open(os.path.join(d, "adapter_config.json")))
            edit_cfg(c)
            json.dump(c, open(os.path.join(d, "adapter_config.json"), "w"))
        return d
    k_in = lora_ref.key(1, "mamba.in_proj", "A")
    cases = [
        ("shape", bad_copy("shape", lambda t: {**t, k_in: np.zeros((4, 5), np.float32)}), k_in),
        ("unknown tensor", bad_copy("unknown", lambda t: {**t, "base_model.model.model.layers.0.mamba.q_proj.lora_A.weight": np.zeros((4, 64), np.float32)}), "q_proj"),
        ("layer out of range", bad_copy("layer", lambda t: {**t, lora_ref.key(9, "mamba.in_proj", "A"): t[k_in], lora_ref.key(9, "mamba.in_proj", "B"): t[k_in.replace("lora_A", "lora_B")]}), "layers.9"),
        ("missing B", bad_copy("noB", lambda t: {k: v for k, v in t.items() if k != k_in.replace("lora_A", "lora_B")}), k_in.replace("lora_A", "lora_B")),
        ("peft_type", bad_copy("type", edit_cfg=lambda c: c.update(peft_type="IA3")), "IA3"),
        ("dora without magnitude", bad_copy("nomag", edit_cfg=lambda c: c.update(use_dora=True)), "lora_magnitude_vector"),
        ("meta tokens not in modules_to_save",
         bad_copy("meta-unlisted", lambda t: {**t, lora_ref.META: np.zeros((8, 64), np.float32)}), "modules_to_save"),
        ("modules_to_save other than memory_tokens",
         bad_copy("mts-lm-head", edit_cfg=lambda c: c.update(modules_to_save=["lm_head"])), "lm_head"),
        ("modules_to_save without the tensor",
         bad_copy("mts-missing", edit_cfg=lambda c: c.update(modules_to_save=["memory_tokens"])), lora_ref.META),
        ("meta tokens of the wrong shape", bad_copy("meta-shape", lambda t: {**t, lora_ref.META: np.zeros((3, 64), np.float32)},
                                                    lambda c: c.update(modules_to_save=["memory_tokens"])), lora_ref.META),
    ]
    for name, d, needle in cases:
        _, r = eng_logits(base, ids, "--lora", d)
        check(f"Bad adapter ({name}) rejected naming it", r.returncode not in (0,) and r.returncode < 128 and needle in r.stderr,
              r.stderr.strip()[-200:])
    _, r = eng_logits(base, ids, "--lora", os.path.join(work, "nowhere"))
    check("Bad --lora folder without adapter_config.json", r.returncode == 1 and "adapter_config.json" in r.stderr, r.stderr.strip()[-160:])
    _, r = eng_logits(base, ids, "--lora", good + ":x")
    check("Bad --lora DIR:scale with a non-number", r.returncode == 1 and "scale" in r.stderr, r.stderr.strip()[-160:])
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
