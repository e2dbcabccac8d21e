#!/usr/bin/python3
"""Self-checks of the float64 reference (reference/hymba_ref.py) and the checkpoint generator.

Every check compares against something computed another way (closed forms, torch built-ins, explicit
loops, numbers from docs/hymba-spec.md) or asserts that a change that must matter does matter.
Prints what it measured; ends with "N passed, M failed"; exits non-zero on any failure.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import torch
import torch.nn.functional as F

SRC = os.environ.get("HYMBA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "reference"))
import hymba_ref as R  # noqa: E402
import make_checkpoint as MC  # noqa: E402

CONFIG_DIR = os.path.join(SRC, "tests", "configs")
TMP = tempfile.mkdtemp(prefix="hymba-ref-selfcheck-")
PY = sys.executable or "/usr/bin/python3"
torch.manual_seed(0)
RESULTS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""), flush=True)
    return ok


def run(fn):
    try:
        fn()
    except Exception:  # an exception is a failure of that check group, not of the whole script
        RESULTS["failed"] += 1
        print(f"[FAIL] {fn.__name__} raised:\n{traceback.format_exc()}", flush=True)


def test_configs():
    names = sorted(f for f in os.listdir(CONFIG_DIR)
                   if (f.startswith("tiny-") or f.startswith("baseline-")) and f.endswith(".json"))
    return [(n[:-5], json.load(open(os.path.join(CONFIG_DIR, n)))) for n in names]


def rel(a, b):
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


# ---------------------------------------------------------------------------------------------
# (a) ops against closed forms / other implementations
# ---------------------------------------------------------------------------------------------
def test_scan_closed_form():
    g = torch.Generator().manual_seed(1)
    B, T, C, N = 2, 5, 3, 4
    x, z = torch.randn(B, T, C, generator=g, dtype=R.F64), torch.randn(B, T, C, generator=g, dtype=R.F64)
    delta = F.softplus(torch.randn(B, T, C, generator=g, dtype=R.F64))
    A = -torch.rand(C, N, generator=g, dtype=R.F64) * 3
    Bs, Cs = torch.randn(B, T, N, generator=g, dtype=R.F64), torch.randn(B, T, N, generator=g, dtype=R.F64)
    D = torch.randn(C, generator=g, dtype=R.F64)
    y = R.selective_scan(x, delta, A, Bs, Cs, D, z)
    # unrolled: y_t = sum_n C_t[n] sum_{s<=t} exp(A[c,n] sum_{r=s+1..t} delta_r[c]) delta_s[c] B_s[n] x_s[c] + D x_t
    err = 0.0
    for b in range(B):
        for t in range(T):
            for c in range(C):
                acc = 0.0
                for n in range(N):
                    for s in range(t + 1):
                        decay = math.exp(float(A[c, n]) * float(delta[b, s + 1:t + 1, c].sum()))
                        acc += float(Cs[b, t, n]) * decay * float(delta[b, s, c] * Bs[b, s, n] * x[b, s, c])
                acc += float(D[c] * x[b, t, c])
                acc *= float(z[b, t, c]) / (1 + math.exp(-float(z[b, t, c])))
                err = max(err, abs(acc - float(y[b, t, c])))
    check("selective scan == unrolled closed form", err < 1e-12, f"max abs err {err:.2e}")


def test_conv_vs_torch():
    g = torch.Generator().manual_seed(2)
    B, T, C, K = 2, 7, 5, 4
    x = torch.randn(B, T, C, generator=g, dtype=R.F64)
    w, b = torch.randn(C, 1, K, generator=g, dtype=R.F64), torch.randn(C, generator=g, dtype=R.F64)
    ours = R.causal_conv(x, w, b)
    ref = F.conv1d(x.transpose(1, 2), w, b, padding=K - 1, groups=C)[..., :T].transpose(1, 2)
    err = float((ours - ref).abs().max())
    check("causal depthwise conv == torch conv1d(groups=C)[:T]", err < 1e-13, f"max abs err {err:.2e}")
    # the current token is multiplied by w[:, 0, K-1]
    x1 = torch.zeros(1, 3, C, dtype=R.F64)
    x1[0, 2] = 1.0
    out = R.causal_conv(x1, w, None)[0, 2]
    check("conv tap K-1 multiplies the current token", bool(torch.allclose(out, w[:, 0, K - 1])))


def test_attention_vs_loops():
    g = torch.Generator().manual_seed(3)
    B, hq, hkv, T, dqk, dv, M, window = 1, 6, 2, 11, 4, 8, 3, 2
    q = torch.randn(B, hq, T, dqk, generator=g, dtype=R.F64)
    k = torch.randn(B, hkv, T, dqk, generator=g, dtype=R.F64)
    v = torch.randn(B, hkv, T, dv, generator=g, dtype=R.F64)
    mask = R.attention_mask(T, M, window, False)
    vis9 = [j for j in range(T) if mask[9, j]]
    check("SWA mask row 9 (M=3, window=2) sees {0,1,2,7,8,9}", vis9 == [0, 1, 2, 7, 8, 9], f"{vis9}")
    check("global mask is plain causal", bool(torch.equal(R.attention_mask(T, M, window, True),
                                                         torch.ones(T, T).tril().bool())))
    out = R.attention(q, k, v, mask, hq // hkv)
    err = 0.0
    for h in range(hq):
        kv = h // (hq // hkv)
        for i in range(T):
            js = [j for j in range(T) if j <= i and (i - j <= window or j < M)]
            s = [float(q[0, h, i] @ k[0, kv, j]) / math.sqrt(dqk) for j in js]
            mx = max(s)
            e = [math.exp(a - mx) for a in s]
            o = sum(ei * v[0, kv, j] for ei, j in zip(e, js)) / sum(e)
            err = max(err, float((out[0, i, h * dv:(h + 1) * dv] - o).abs().max()))
    check("attention (GQA h//rep, window, meta, scale 1/sqrt(dqk)) == loops", err < 1e-13, f"max abs err {err:.2e}")


def test_rope_and_norm():
    c = R.derive_config(json.load(open(os.path.join(CONFIG_DIR, "tiny-hymba.json"))))
    T = 20
    cos, sin = R.rope_cos_sin(c, T)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, T, c.d_qk, generator=g, dtype=R.F64)
    y = R.apply_rope(x, cos, sin)
    half = c.d_qk // 2
    zc = torch.complex(x[..., :half], x[..., half:])
    ang = torch.arange(T, dtype=R.F64)[:, None] * c.rope_base ** (-2.0 * torch.arange(half, dtype=R.F64) / c.d_qk)
    zr = zc * torch.polar(torch.ones_like(ang), ang)
    err = float((torch.cat([zr.real, zr.imag], -1) - y).abs().max())
    check("rotate-half RoPE == complex rotation of pairs (d, d+d/2)", err < 1e-13, f"max abs err {err:.2e}")
    # relative: <R_p q, R_s k> depends on p - s only
    q, k = x[0, 0, 0], x[0, 1, 0]
    def dot(p, s):
        return float(R.apply_rope(q.expand(T, -1), cos, sin)[p] @ R.apply_rope(k.expand(T, -1), cos, sin)[s])
    err = abs(dot(7, 3) - dot(15, 11))
    check("RoPE scores depend on relative position only", err < 1e-12, f"|diff| {err:.2e}")
    w = torch.randn(c.H, generator=g, dtype=R.F64)
    xx = torch.randn(3, c.H, generator=g, dtype=R.F64)
    ref = torch.stack([r / math.sqrt(float((r * r).mean()) + c.eps) * w for r in xx])
    err = float((R.rms_norm(xx, w, c.eps) - ref).abs().max())
    check("RMSNorm == explicit formula", err < 1e-13, f"max abs err {err:.2e}")


def test_official_config_derivations():
    path = os.path.join(CONFIG_DIR, "hymba-1.5b.json")
    if not os.path.exists(path):
        print("[SKIP] tests/configs/hymba-1.5b.json not present")
        return
    c = R.derive_config(json.load(open(path)))
    check("1.5B: d_qk 64, d_v 128, d_inner 3200, dt_rank 100, GQA 5",
          (c.d_qk, c.d_v, c.d_inner, c.R, c.rep) == (64, 128, 3200, 100, 5),
          f"{(c.d_qk, c.d_v, c.d_inner, c.R, c.rep)}")
    check("1.5B: NTK base = 10000*7^(64/62) ~ 74534.83 (spec §3.9)", abs(c.rope_base - 74534.83) < 0.01,
          f"{c.rope_base:.4f}")
    producers = [p.index for p in c.plan if p.producer]
    want = [0, 1, 3, 5, 7, 9, 11, 13, 15, 16, 19, 21, 23, 25, 27, 29, 31]
    check("1.5B: producer layers as spec §1.1", producers == want, f"{producers}")
    check("1.5B: layers 17, 18 consume 16", c.plan[17].kv_source == 16 and c.plan[18].kv_source == 16)
    check("1.5B: globals {0,15,31}", [p.index for p in c.plan if p.is_global] == [0, 15, 31])
    shapes = R.param_shapes(c)
    rows = (shapes["model.layers.1.mamba.in_proj.weight"][0], shapes["model.layers.2.mamba.in_proj.weight"][0])
    check("1.5B: in_proj rows producer 8960 / consumer 8000", rows == (8960, 8000), f"{rows}")
    n = sum(int(np.prod(s)) for s in shapes.values())
    check("1.5B: parameter count 1,522,797,824 (spec §1.1)", n == 1522797824, f"{n:,}")


# ---------------------------------------------------------------------------------------------
# (b) window >= length equals global; (e) causality; batch rows independent; loss
# ---------------------------------------------------------------------------------------------
def ckpt(name, config, dtype="f32", seed=0, shards=1):
    out = os.path.join(TMP, f"{name}-{dtype}-{seed}-{shards}")
    MC.make_checkpoint(config, out, dtype, seed, shards)
    return out


def prompt(c, n=40, seed=0):
    return np.random.default_rng(seed).integers(0, c.V, (1, n))


def test_window_and_causality():
    config = json.load(open(os.path.join(CONFIG_DIR, "tiny-hymba.json")))
    m = R.load(ckpt("tiny-hymba", config))
    ids = prompt(m.cfg)
    T = m.cfg.M + ids.shape[1]
    with torch.no_grad():
        base = m.forward(ids)
        m.cfg.window = T - 1                 # every i - j <= T - 1: the band covers everything
        wide = m.forward(ids)
        m.cfg.window = config["sliding_window"]
        flags = [p.is_global for p in m.cfg.plan]
        for p in m.cfg.plan:
            p.is_global = True
        glob = m.forward(ids)
        for p, f in zip(m.cfg.plan, flags):
            p.is_global = f
    d = float((wide - glob).abs().max())
    check("window >= length equals global attention", d < 1e-12, f"max abs diff {d:.2e}")
    d2 = float((base - glob).abs().max())
    check("window 8 < length differs from global", d2 > 1e-3, f"max abs diff {d2:.3f}")
    t = 17
    ids2 = ids.copy()
    ids2[0, t + 1:] = (ids2[0, t + 1:] + 7) % m.cfg.V
    with torch.no_grad():
        other = m.forward(ids2)
    before = float((other[0, :t + 1] - base[0, :t + 1]).abs().max())
    after = float((other[0, t + 1:] - base[0, t + 1:]).abs().max())
    check("causality: logits[<=t] unchanged by tokens after t", before < 1e-12, f"max abs diff {before:.2e}")
    check("causality: logits[>t] do change", after > 1e-3, f"max abs diff {after:.3f}")
    batch = np.concatenate([ids, ids2])
    with torch.no_grad():
        both = m.forward(batch)
    d = max(float((both[0] - base[0]).abs().max()), float((both[1] - other[0]).abs().max()))
    check("batch rows are independent (B=2 == two B=1)", d < 1e-12, f"max abs diff {d:.2e}")
    targets = np.roll(ids, -1, axis=1)
    targets[0, :5] = -1
    with torch.no_grad():
        L = float(m.loss(ids, targets))
    lp = torch.log_softmax(base[0], -1)
    manual = -np.mean([float(lp[i, targets[0, i]]) for i in range(ids.shape[1]) if targets[0, i] >= 0])
    check("loss == mean -log p over targets != -1", abs(L - manual) < 1e-12, f"{L:.6f} vs {manual:.6f}")


# ---------------------------------------------------------------------------------------------
# (c) every parameter / structural rule has an effect on the logits of each random checkpoint
# ---------------------------------------------------------------------------------------------
ENGINE_TOL = 1e-3      # engine test tolerance: max abs diff <= ENGINE_TOL * max(1, max|logit|)
MARGIN = 10.0          # a dropped term must move the logits by >= MARGIN x that tolerance


def neutral_mutations(c, params):
    """(label, name, new value): each drops one parameter's effect (or one block of rows)."""
    out = []
    for name, t in params.items():
        if "layernorm" in name:
            out.append((f"{name} := 1", name, torch.ones_like(t)))
        elif name.endswith("A_log.0"):
            out.append((f"{name} := log(1..N)", name,
                        torch.log(torch.arange(1, c.N + 1, dtype=R.F64)).expand_as(t).clone()))
        elif name.endswith("D.0") or name.endswith(".bias") or name == "model.memory_tokens":
            out.append((f"{name} := 0", name, torch.zeros_like(t)))
        elif name.endswith("in_proj.weight"):
            layer = int(name.split(".")[2])
            start = 0
            for part, width in c.plan[layer].split:     # each of Q, K, V, x, z separately
                v = t.clone()
                v[start:start + width] = 0
                out.append((f"{name}[{part} rows] := 0", name, v))
                start += width
        elif name.endswith("x_proj.0.weight"):
            for part, (a, b) in (("dt", (0, c.R)), ("B", (c.R, c.R + c.N)), ("C", (c.R + c.N, c.R + 2 * c.N))):
                v = t.clone()
                v[a:b] = 0
                out.append((f"{name}[{part} rows] := 0", name, v))
        elif name == "model.embed_tokens.weight":
            v = t.clone()
            v[:, : c.H // 2] = 0
            out.append((f"{name}[:, :H/2] := 0", name, v))
        else:
            out.append((f"{name} := 0", name, torch.zeros_like(t)))
    return out


def structural_mutations(c):
    """(label, patch dict for module functions / cfg fields) that break one rule of the spec."""
    muts = []
    if any(p.has_attn and not p.is_global for p in c.plan):
        orig = R.attention_mask
        muts.append(("sliding window ignored (all global)", {"attention_mask": lambda T, M, w, g: orig(T, M, w, True)}))
        muts.append(("window off by one (i-j < w)", {"cfg.window": c.window - 1}))
        if c.M > 0:
            muts.append(("meta tokens not always visible", {"attention_mask": lambda T, M, w, g: orig(T, 0, w, g)}))
    if any(p.has_attn for p in c.plan):
        if 1 < c.n_kv < c.n_heads:
            def gqa_interleaved(q, k, v, mask, rep):
                k = k.repeat(1, rep, 1, 1)
                v = v.repeat(1, rep, 1, 1)
                return R_attention_orig(q, k, v, mask, 1)
            muts.append(("GQA head h -> kv h % n_kv", {"attention": gqa_interleaved}))
        if c.rope:
            def rope_interleaved(x, cos, sin):
                half = x.shape[-1] // 2
                xe, xo = x[..., 0::2], x[..., 1::2]
                cc, ss = cos[..., :half], sin[..., :half]
                return torch.stack([xe * cc - xo * ss, xo * cc + xe * ss], -1).flatten(-2)
            muts.append(("RoPE interleaved pairs instead of rotate-half", {"apply_rope": rope_interleaved}))
            if abs(c.rope_base - float(c.raw.get("rope_theta", 10000.0))) > 1e-6:
                muts.append(("RoPE base without NTK scaling", {"cfg.rope_base": float(c.raw.get("rope_theta", 1e4))}))
        if any(p.kv_source != p.index for p in c.plan):
            muts.append(("consumer applies RoPE to the shared (already rotated) K again",
                         {"apply_rope_consumer_twice": True}))
    if any(p.has_ssm for p in c.plan):
        def scan_no_gate(x, delta, A, Bs, Cs, D, z):
            return R_selective_scan_orig(x, delta, A, Bs, Cs, D, torch.full_like(z, 50.0))
        muts.append(("SSM output not gated by SiLU(z)", {"selective_scan": scan_no_gate}))
    if any(p.kind == "h" for p in c.plan):
        def block_sum(c_, p, w, u, cos, sin, shared_kv):
            out = R_hybrid_block_orig(c_, p, w, u, cos, sin, shared_kv)
            if p.kind == "h":                # out_proj(2 * fused) = 2 * (out - bias) + bias
                bias = w.get(f"model.layers.{p.index}.mamba.out_proj.bias")
                out = 2 * out - (0 if bias is None else bias)
            return out
        muts.append(("fusion: sum instead of mean of the two branches", {"hybrid_block": block_sum}))
    return muts


R_attention_orig = R.attention
R_selective_scan_orig = R.selective_scan
R_hybrid_block_orig = R.hybrid_block


def forward_patched(m, ids, patch):
    saved_fns, saved_cfg = {}, {}
    try:
        for key, val in patch.items():
            if key == "apply_rope_consumer_twice":
                orig_heads = R.attention_heads

                def heads(c_, p, w, parts, cos, sin, shared_kv, _orig=orig_heads):
                    if p.kv_source != p.index:   # consumer rotates the shared K again: must differ
                        k, v = shared_kv[p.kv_source]
                        shared_kv = dict(shared_kv)
                        shared_kv[p.kv_source] = (R.apply_rope(k, cos, sin), v)
                    return _orig(c_, p, w, parts, cos, sin, shared_kv)
                saved_fns["attention_heads"] = R.attention_heads
                R.attention_heads = heads
            elif key.startswith("cfg."):
                saved_cfg[key[4:]] = getattr(m.cfg, key[4:])
                setattr(m.cfg, key[4:], val)
            else:
                saved_fns[key] = getattr(R, key)
                setattr(R, key, val)
        with torch.no_grad():
            return m.forward(ids)
    finally:
        for k, v in saved_fns.items():
            setattr(R, k, v)
        for k, v in saved_cfg.items():
            setattr(m.cfg, k, v)


def test_every_term_matters():
    for name, config in test_configs():
        m = R.load(ckpt(name, config))
        ids = prompt(m.cfg, 40, seed=1)
        with torch.no_grad():
            base = m.forward(ids)
        scale = max(1.0, float(base.abs().max()))
        need = MARGIN * ENGINE_TOL * scale
        weakest, fails = (None, float("inf")), []
        muts = neutral_mutations(m.cfg, m.params)
        for label, pname, value in muts:
            old = m.params[pname]
            m.params[pname] = value
            with torch.no_grad():
                d = float((m.forward(ids) - base).abs().max())
            m.params[pname] = old
            if d < weakest[1]:
                weakest = (label, d)
            if d < need:
                fails.append(f"{label} ({d:.2e})")
        check(f"{name}: each of {len(muts)} parameter drops moves logits by >= {MARGIN:g}x engine tol "
              f"({need:.3g})", not fails,
              f"max|logit| {scale:.1f}; weakest: {weakest[0]} -> {weakest[1]:.3g}" + (f"; too weak: {fails}" if fails else ""))
        smuts = structural_mutations(m.cfg)
        sfails, details = [], []
        for label, patch in smuts:
            d = float((forward_patched(m, ids, patch) - base).abs().max())
            details.append(f"{label}: {d:.3g}")
            if d < need:
                sfails.append(label)
        check(f"{name}: {len(smuts)} rule violations each move logits by >= {need:.3g}", not sfails,
              "; ".join(details))
        with torch.no_grad():
            again = m.forward(ids)
        check(f"{name}: patches restored (logits reproduce)", float((again - base).abs().max()) == 0.0)


# ---------------------------------------------------------------------------------------------
# (d) safetensors round trips, dtypes, shards, rejection of broken files
# ---------------------------------------------------------------------------------------------
def test_safetensors():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((33, 7)) * 10).astype(np.float32)
    # bf16 ties and special values
    x.flat[:6] = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -2.5, 0.0, 65504.0, 1e-40], dtype=np.float32)
    mine = R.f32_to_bf16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    check("f32 -> bf16 bits == torch (round to nearest even)", bool(np.array_equal(mine, ref)),
          f"{int((mine != ref).sum())} of {x.size} differ")
    tensors = {"a": x, "b": rng.standard_normal((4, 1, 3)), "c": rng.standard_normal(5)}
    for dt, conv in (("F32", lambda a: a.astype(np.float32)), ("F64", lambda a: a.astype(np.float64)),
                     ("F16", lambda a: a.astype(np.float16).astype(np.float32)),
                     ("BF16", lambda a: R.bf16_bits_to_f32(R.f32_to_bf16_bits(a.astype(np.float32))))):
        path = os.path.join(TMP, f"rt-{dt}.safetensors")
        R.write_safetensors(path, tensors, dt, {"k": "v"})
        back, meta, dts = R.read_safetensors(path)
        ok = all(np.array_equal(back[n].astype(np.float64), conv(tensors[n]).astype(np.float64)) and
                 back[n].shape == np.shape(tensors[n]) and dts[n] == dt for n in tensors) and meta == {"k": "v"}
        with open(path, "rb") as f:
            hlen = int.from_bytes(f.read(8), "little")
        check(f"safetensors round trip {dt} (shapes, values, metadata, header 8-aligned)", ok and hlen % 8 == 0)
    config = json.load(open(os.path.join(CONFIG_DIR, "tiny-mqa.json")))
    for dt in ("f32", "bf16", "f16"):
        one = R.read_checkpoint_tensors(ckpt("tiny-mqa", config, dt, 3, 1))
        three_dir = ckpt("tiny-mqa", config, dt, 3, 3)
        three = R.read_checkpoint_tensors(three_dir)
        files = sorted(f for f in os.listdir(three_dir) if f.endswith(".safetensors"))
        index = json.load(open(os.path.join(three_dir, "model.safetensors.index.json")))
        same = one.keys() == three.keys() and all(np.array_equal(one[n], three[n]) for n in one)
        check(f"{dt}: 3 shards + index == single file", same and len(files) == 3 and
              set(index["weight_map"].values()) == set(files), f"{files}")
        f32 = MC.make_tensors(config, 3)
        expect = {"f32": lambda a: a, "f16": lambda a: a.astype(np.float16).astype(np.float32),
                  "bf16": lambda a: torch.from_numpy(a).to(torch.bfloat16).float().numpy()}[dt]
        check(f"{dt}: stored weights == rounding of the f32 draw",
              all(np.array_equal(one[n], expect(f32[n])) for n in f32))
    ok = "lm_head.weight" not in one and os.path.exists(os.path.join(three_dir, "generation_config.json"))
    check("tied config: lm_head.weight omitted; generation_config.json written", ok)
    # broken files must be rejected with ValueError, not crash or mis-read
    good = os.path.join(TMP, "rt-F32.safetensors")
    data = open(good, "rb").read()
    cases = {"truncated": data[: len(data) // 2],
             "header length > file": (len(data) * 2).to_bytes(8, "little") + data[8:],
             "short file": data[:5]}
    for label, blob in cases.items():
        p = os.path.join(TMP, "bad.safetensors")
        open(p, "wb").write(blob)
        try:
            R.read_safetensors(p)
            check(f"reader rejects {label}", False, "no error")
        except ValueError as e:
            check(f"reader rejects {label}", True, str(e))
    # loader rejects missing tensors / wrong shapes
    cdir = ckpt("tiny-mqa", config, "f32", 4)
    t = R.read_checkpoint_tensors(cdir)
    cfg = R.derive_config(config)
    for label, mutate in (("missing tensor", lambda d: d.pop("model.layers.1.mamba.D.0")),
                          ("wrong shape", lambda d: d.__setitem__("model.layers.0.mamba.conv1d.weight",
                                                                  np.zeros((cfg.d_inner, cfg.K)))),
                          ("unexpected tensor", lambda d: d.__setitem__("model.layers.2.mamba.k_proj.weight",
                                                                        np.zeros(3)))):
        d = dict(t)
        mutate(d)
        try:
            R.check_params(R.derive_config(config), d)
            check(f"loader rejects {label}", False, "no error")
        except ValueError as e:
            check(f"loader rejects {label}", True, str(e))


# ---------------------------------------------------------------------------------------------
# gradients (autograd vs finite differences) and the CLI
# ---------------------------------------------------------------------------------------------
def test_grads_and_cli():
    config = json.load(open(os.path.join(CONFIG_DIR, "tiny-mha.json")))   # untied head, proj biases
    d = ckpt("tiny-mha", config, "f32", 6)
    m = R.load(d)
    batch = np.random.default_rng(7).integers(1, m.cfg.V, (2, 21))
    batch[1, 3] = 0                      # the pad token: its embedding row gets no gradient from lookup
    batch_t = batch.copy()
    batch_t[0, 20] = -1                  # an ignored target (the last column is only a target)
    loss, grads = R.gradients(m, batch_t)
    rng = np.random.default_rng(8)
    worst = 0.0
    for name in ["model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mamba.in_proj.weight",
                 "model.layers.0.mamba.in_proj.bias", "model.layers.1.mamba.A_log.0", "model.layers.1.mamba.D.0",
                 "model.layers.2.mamba.conv1d.weight", "model.layers.2.mamba.dt_proj.0.bias",
                 "model.layers.2.mamba.B_layernorm.weight", "model.layers.1.mamba.out_proj.bias",
                 "model.layers.0.moe.experts.0.down_proj.weight", "model.final_layernorm.weight"]:
        t = m.params[name]
        for _ in range(2):
            idx = tuple(int(rng.integers(0, s)) for s in t.shape)
            if name == "model.embed_tokens.weight":
                idx = (int(batch[0, 2]),) + idx[1:]
            h = 1e-5
            old = float(t[idx])
            with torch.no_grad():
                t[idx] = old + h
                lp = float(m.loss(batch_t[:, :-1], batch_t[:, 1:]))
                t[idx] = old - h
                lm = float(m.loss(batch_t[:, :-1], batch_t[:, 1:]))
                t[idx] = old
            fd = (lp - lm) / (2 * h)
            g = float(grads[name][idx])
            worst = max(worst, abs(fd - g) / max(1e-4, abs(fd), abs(g)))
    check("autograd == central finite differences (24 entries, 12 tensors)", worst < 1e-5, f"worst rel err {worst:.2e}")
    check("gradient of the pad row (token 0, untied) from the lookup is zero",
          float(np.abs(grads["model.embed_tokens.weight"][0]).max()) == 0.0)
    check("grads exist for every official tensor", set(grads) == set(R.param_shapes(m.cfg)))
    # CLI: logits
    ids = prompt(m.cfg, 23, seed=9)[0]
    out = os.path.join(TMP, "cli-logits.npy")
    r = subprocess.run([PY, os.path.join(SRC, "reference", "hymba_ref.py"), "logits", "--model", d, "--ids",
                        ",".join(map(str, ids)), "-o", out], capture_output=True, text=True)
    ok = r.returncode == 0 and os.path.exists(out)
    if ok:
        a = np.load(out)
        with torch.no_grad():
            ref = m.forward(ids[None])[0].numpy()
        ok = a.dtype == np.float32 and a.shape == (len(ids), m.cfg.V) and np.allclose(a, ref, rtol=1e-6, atol=1e-5)
    check("CLI logits: float32 [n, V] == in-process forward", ok, r.stderr.strip()[-300:])
    # CLI: grads
    bpath, gpath = os.path.join(TMP, "batch.npy"), os.path.join(TMP, "grads.safetensors")
    np.save(bpath, batch_t.astype(np.int64))
    r = subprocess.run([PY, os.path.join(SRC, "reference", "hymba_ref.py"), "grads", "--model", d, "--ids-file",
                        bpath, "-o", gpath], capture_output=True, text=True)
    ok = r.returncode == 0
    detail = r.stderr.strip()[-300:]
    if ok:
        g2, meta, dts = R.read_safetensors(gpath)
        ok = (set(g2) == set(grads) and all(v == "F64" for v in dts.values()) and
              all(np.array_equal(g2[n], grads[n]) for n in grads) and abs(float(meta["loss"]) - loss) < 1e-12)
        detail = f"loss {meta.get('loss')}, {len(g2)} tensors"
    check("CLI grads: F64 per official name + metadata loss == in-process", ok, detail)
    r = subprocess.run([PY, os.path.join(SRC, "reference", "hymba_ref.py"), "logits", "--model", d, "--ids",
                        str(m.cfg.V), "-o", out], capture_output=True, text=True)
    check("CLI rejects out-of-range id with exit 1", r.returncode == 1 and "error" in r.stderr, r.stderr.strip())


def main():
    for fn in (test_scan_closed_form, test_conv_vs_torch, test_attention_vs_loops, test_rope_and_norm,
               test_official_config_derivations, test_window_and_causality, test_safetensors,
               test_grads_and_cli, test_every_term_matters):
        run(fn)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
