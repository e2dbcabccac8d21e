#!/usr/bin/python3
"""`hymba analyze` against the float64 reference model.

The reference's attention() and selective_scan() are wrapped to record each layer's attention
probabilities, the scan's inputs (Δ, A, B, C) and the branch outputs; the SSM implicit attention
is computed here by propagating an impulse through the recurrence (h ← exp(Δ_t A) h, read out by
C_t), an independent route to the engine's closed form. Compared, per layer: the Meta/BOS/Self/
Cross shares and entropies with and without the meta prefix (num_memory_tokens 0), branch output
norms, fusion weights, the text loss and the loss with each branch's fusion norm zeroed; and the
drawn maps themselves. On the bundled model (text longer than its sliding window) and on a
`hymba init` checkpoint. Also: the figures exist, and bad input is refused.
"""
# The engine runs with F32 activations throughout (HYMBA_BF16_GEMM=0): this test checks `hymba analyze`'s
# logic against the unrounded float64 reference at its tight bounds. The bf16 GEMM (activations
# rounded to bf16 in prefill of more than 64 rows on AVX512-BF16 CPUs) moves them by the
# rounding's size and is checked against a reference that rounds alike in
# test_engine_vs_reference.py and test_perplexity.py.
import copy
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

os.environ["HYMBA_BF16_GEMM"] = "0"  # see above; inherited by every hymba run
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref as R  # noqa: E402

RES = U.Results()
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")
CATS = ["Meta", "BOS", "Self", "Cross"]

REC = {}
_layer = [None]
_orig_block, _orig_attn, _orig_scan = R.hybrid_block, R.attention, R.selective_scan


def _block(c, p, w, u, cos, sin, shared_kv):
    _layer[0] = p.index
    return _orig_block(c, p, w, u, cos, sin, shared_kv)


def _attention(q, k, v, mask, rep):
    kk = k.repeat_interleave(rep, dim=1)
    s = (q @ kk.transpose(-1, -2)) / np.sqrt(q.shape[-1])
    REC.setdefault(_layer[0], {})["probs"] = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)[0]
    out = _orig_attn(q, k, v, mask, rep)
    REC[_layer[0]]["attn_out"] = out[0]
    return out


def _scan(x, delta, A, Bs, Cs, D, z):
    out = _orig_scan(x, delta, A, Bs, Cs, D, z)
    REC.setdefault(_layer[0], {}).update(delta=delta[0], A=A, B=Bs[0], C=Cs[0], ssm_out=out[0])
    return out


R.hybrid_block, R.attention, R.selective_scan = _block, _attention, _scan


def implicit_attention(delta, A, B, C):
    """mean over channels of |α_d[t, s]|, rows normalised; by impulse propagation."""
    T = delta.shape[0]
    alpha = torch.zeros(T, T, dtype=torch.float64)
    for s in range(T):
        h = delta[s][:, None] * B[s][None, :]              # [D, N] state right after input s
        for t in range(s, T):
            if t > s:
                h = torch.exp(delta[t][:, None] * A) * h
            alpha[t, s] = (h * C[t][None, :]).sum(-1).abs().mean()
    return alpha / alpha.sum(-1, keepdim=True)


def summarise(P, M):
    """P [T, T] row-stochastic -> (shares over Meta/BOS/Self/Cross, mean entropy) over rows >= M."""
    T = P.shape[0]
    shares, ent = np.zeros(4), 0.0
    for i in range(M, T):
        for j in range(i + 1):
            p = float(P[i, j])
            if p <= 0:
                continue
            shares[0 if j < M else 1 if j == M else 2 if j == i else 3] += p
            ent -= p * np.log(p)
    return shares / (T - M), ent / (T - M)


def run_reference(model, ids, M):
    REC.clear()
    with torch.no_grad():
        R.model_forward(model.cfg if M else _no_meta(model.cfg), model.params, torch.tensor([ids]))
    return {l: dict(v) for l, v in REC.items()}


def _no_meta(cfg):
    c0 = copy.copy(cfg)
    c0.M = 0
    return c0


def loss(model, params, ids):
    with torch.no_grad():
        logits = R.model_forward(model.cfg, params, torch.tensor([ids[:-1]]))[0]
    return float(F.cross_entropy(logits, torch.tensor(ids[1:])))


def check_model(model_dir, text, work, tag):
    out = os.path.join(work, "an-" + tag)
    r = U.run(["analyze", "-m", model_dir, "--text", text, "-o", out, "--layers", "0,1", "--heads", "0,1", "--max-tokens", "90"])
    if not RES.check(f"{tag}: runs", r.returncode == 0, r.stderr.strip()[-300:]):
        return
    j = json.load(open(os.path.join(out, "analysis.json")))
    ids, M = j["tokens"], j["meta_tokens"]
    ref = R.load(model_dir)
    cfg = ref.cfg
    with_meta, without = run_reference(ref, ids, M), run_reference(ref, ids, 0)
    worst = {"share": 0.0, "entropy": 0.0, "norm": 0.0, "map": 0.0}
    maps_seen = 0
    for L in j["layers"]:
        l = L["layer"]
        for kind in ("attn", "ssm"):
            if kind not in L:
                continue
            if kind == "attn":
                heads = with_meta[l]["probs"].shape[0]
                sw = [summarise(with_meta[l]["probs"][h], M) for h in range(heads)]
                so = [summarise(without[l]["probs"][h], 0) for h in range(heads)]
                out_rows = with_meta[l]["attn_out"][M:]
                wname = f"model.layers.{l}.mamba.pre_avg_layernorm1.weight"
            else:
                sw = [summarise(implicit_attention(with_meta[l]["delta"], with_meta[l]["A"], with_meta[l]["B"], with_meta[l]["C"]), M)]
                so = [summarise(implicit_attention(without[l]["delta"], without[l]["A"], without[l]["B"], without[l]["C"]), 0)]
                out_rows = with_meta[l]["ssm_out"][M:]
                wname = f"model.layers.{l}.mamba.pre_avg_layernorm2.weight"
            share_w, ent_w = np.mean([s for s, _ in sw], 0), np.mean([e for _, e in sw])
            share_o, ent_o = np.mean([s for s, _ in so], 0), np.mean([e for _, e in so])
            got = L[kind]
            worst["share"] = max(worst["share"], max(abs(got["share"][c] - share_w[k]) for k, c in enumerate(CATS)),
                                 max(abs(got["share_without_meta"][c] - share_o[k]) for k, c in enumerate(CATS)))
            worst["entropy"] = max(worst["entropy"], abs(got["entropy"] - ent_w) / max(1, ent_w),
                                   abs(got["entropy_without_meta"] - ent_o) / max(1, ent_o))
            norm = float(out_rows.norm(dim=-1).mean())
            fw = float(ref.params[wname].abs().mean())
            worst["norm"] = max(worst["norm"], abs(got["output_norm"] - norm) / norm, abs(got["fusion_weight_mean_abs"] - fw) / fw)
    for m in j["maps"]:
        l = m["layer"]
        if m["kind"] == "attn":
            want = with_meta[l]["probs"][m["head"]]
        else:
            want = implicit_attention(with_meta[l]["delta"], with_meta[l]["A"], with_meta[l]["B"], with_meta[l]["C"])
        got = np.array(m["p"]).reshape(m["T"], m["T"])
        worst["map"] = max(worst["map"], float(np.abs(got - want.numpy()).max()))
        maps_seen += 1
    RES.check(f"{tag}: Meta/BOS/Self/Cross shares (attention + SSM implicit), with and without meta", worst["share"] <= 1e-4,
              f"max abs err {worst['share']:.1e}")
    RES.check(f"{tag}: entropies with and without meta", worst["entropy"] <= 1e-4, f"max rel err {worst['entropy']:.1e}")
    RES.check(f"{tag}: branch output norms and fusion weights", worst["norm"] <= 1e-4, f"max rel err {worst['norm']:.1e}")
    RES.check(f"{tag}: maps (layers 0,1; heads 0,1; SSM)", maps_seen == 6 and worst["map"] <= 1e-4,
              f"{maps_seen} maps, max abs err {worst['map']:.1e}")
    base = loss(ref, ref.params, ids)
    errs = [abs(j["loss"] - base) / base]
    for L in j["layers"]:
        if "loss_without" not in L:
            continue
        for key, name in (("attn", "pre_avg_layernorm1"), ("ssm", "pre_avg_layernorm2")):
            p2 = dict(ref.params)
            p2[f"model.layers.{L['layer']}.mamba.{name}.weight"] = torch.zeros_like(p2[f"model.layers.{L['layer']}.mamba.{name}.weight"])
            errs.append(abs(L["loss_without"][key] - loss(ref, p2, ids)) / base)
    RES.check(f"{tag}: text loss and loss without each branch", max(errs) <= 1e-5 and len(errs) > 1,
              f"{len(errs)} losses, max rel err {max(errs):.1e}")
    # The window must have mattered: a sliding-window layer's map hides keys beyond it.
    swa = [m for m in j["maps"] if m["kind"] == "attn" and not j["layers"][m["layer"]]["global"]]
    if swa and cfg.window is not None and len(ids) + M > cfg.window + M + 1:
        RES.check(f"{tag}: sliding-window map masks keys past the window (meta keys stay visible)",
                  all(np.array(m["p"]).reshape(m["T"], m["T"])[m["T"] - 1, M] == 0 and
                      np.array(m["p"]).reshape(m["T"], m["T"])[m["T"] - 1, 0] > 0 for m in swa))
    pngs = ["categories.png", "entropy.png", "magnitudes.png", "importance.png", "attention_L0_H0.png", "ssm_L1.png"]
    RES.check(f"{tag}: figures", all(open(os.path.join(out, f), "rb").read(4) == b"\x89PNG" for f in pngs if os.path.exists(os.path.join(out, f)))
              and all(os.path.exists(os.path.join(out, f)) for f in pngs))


def main():
    work = tempfile.mkdtemp(prefix="hymba-analyze-")
    try:
        text = os.path.join(work, "text.txt")
        with open(text, "w") as f:
            f.write("".join(U.TEXT))
        check_model(MODEL, text, work, "hymba-kjv")
        init = os.path.join(work, "init")
        r = U.run(["init", U.make_config(work, sliding_window=24, num_memory_tokens=4), "-o", init, "--dtype", "f32", "--seed", "2"])
        if RES.check("init checkpoint", r.returncode == 0, r.stderr[-200:]):
            for f in ("tokenizer.model", "tokenizer_config.json"):
                shutil.copy(os.path.join(MODEL, f), init)
            check_model(init, text, work, "init")
        empty = os.path.join(work, "empty.txt")
        open(empty, "w").close()
        for label, args in (("no --text", []), ("empty text", ["--text", empty]),
                            ("missing text", ["--text", os.path.join(work, "nope.txt")]),
                            ("layer out of range", ["--text", text, "--layers", "99"]),
                            ("head out of range", ["--text", text, "--heads", "99"]),
                            ("bad layer list", ["--text", text, "--layers", "a,b"]),
                            ("max tokens 1", ["--text", text, "--max-tokens", "1"]),
                            ("--lora (not applied: refused, not ignored)", ["--text", text, "--lora", work])):
            RES.refused(f"bad input: {label}", ["analyze", "-m", MODEL, "-o", os.path.join(work, "bad")] + args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
