#!/usr/bin/python3
"""Float64 PyTorch reference of the Hymba forward pass (the oracle hymba.cpp is checked against).

Written plainly from docs/hymba-spec.md (section numbers "§" below refer to it), independent of the
C++ code. Everything is float64; weights stored as F32/BF16/F16 are converted exactly to float64.

Python API
    model = load(dir)                        # config.json + model.safetensors (or shards + index)
    logits = model.forward(ids)              # ids int64 [B, n] -> float64 [B, n, V], all positions
    loss = model.loss(ids, targets)          # mean next-token CE over targets != -1
    model.params                             # dict official name -> float64 tensor
    model.requires_grad_(True)               # then loss.backward() gives .grad of every tensor

CLI
    /usr/bin/python3 reference/hymba_ref.py logits --model DIR --ids 1,2,3 -o out.npy
        float32 .npy [n, V] for one sequence
    /usr/bin/python3 reference/hymba_ref.py grads --model DIR --ids-file batch.npy -o grads.safetensors
        batch.npy int64 [B, L+1]: inputs = [:, :-1], targets = [:, 1:] (-1 = ignored);
        writes the F64 gradient of every parameter under its official name, metadata "loss".

Config extensions beyond the official file (docs/ARCHITECTURE.md): layer_type per layer "h" (hybrid,
official), "a" (attention heads only), "m" (Mamba heads only); sliding_window null => all global;
kv_reuse_group [] => no sharing; num_memory_tokens 0 => no meta tokens; mamba_proj_bias true =>
in_proj/out_proj biases; fusion "concat" => "h" layers feed [norm1(attn); norm2(ssm)] to out_proj
(2*d_inner wide) instead of their mean.
"""
import argparse
import json
import math
import os
import struct
import sys
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

F64 = torch.float64

# =================================================================================================
# safetensors (by hand): u64 little-endian header length, JSON header, raw little-endian data
# =================================================================================================
_NP_OF = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_SIZE_OF = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1}


def bf16_bits_to_f32(bits):
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x):
    """float32 -> uint16 bf16 bit patterns, round to nearest, ties to even (as torch does)."""
    u = np.ascontiguousarray(np.asarray(x, dtype=np.float32)).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out[nan] = 0x7FC0
    return out


def encode_tensor(arr, dtype):
    """float array -> raw little-endian bytes of `dtype` (F64/F32/F16/BF16 or an integer type)."""
    arr = np.asarray(arr)
    if dtype == "BF16":
        return f32_to_bf16_bits(arr.astype(np.float32)).astype("<u2").tobytes()
    return np.ascontiguousarray(arr.astype(np.dtype(_NP_OF[dtype]).newbyteorder("<"))).tobytes()


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """tensors: dict name -> array (or name -> (dtype, array) to override). Written atomically."""
    header, blobs, offset = {}, [], 0
    for name, val in tensors.items():
        dt, arr = val if isinstance(val, tuple) else (dtype, val)
        raw = encode_tensor(arr, dt)
        header[name] = {"dtype": dt, "shape": list(np.shape(arr)),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)  # pad the header with spaces to 8-byte alignment
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    """-> (dict name -> numpy array (BF16 becomes float32), metadata dict, dict name -> dtype)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        data = f.read()
    if size < 8:
        raise ValueError(f"{path}: file too short for a safetensors header ({size} bytes)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > size - 8:
        raise ValueError(f"{path}: header length {hlen} exceeds file size {size}")
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    meta = header.pop("__metadata__", {}) or {}
    out, dtypes = {}, {}
    for name, info in header.items():
        dt, shape, (b, e) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        if dt not in _SIZE_OF:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * _SIZE_OF[dt]
        if e - b != nbytes or b < 0 or base + e > size:
            raise ValueError(f"{path}: tensor {name}: bad data_offsets {[b, e]} for {dt}{shape}")
        raw = data[base + b:base + e]
        if dt == "BF16":
            arr = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2")).reshape(shape)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(_NP_OF[dt]).newbyteorder("<")).reshape(shape)
        out[name], dtypes[name] = arr, dt
    return out, meta, dtypes


def read_checkpoint_tensors(folder):
    """All tensors of a checkpoint folder: model.safetensors, or shards + model.safetensors.index.json."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            t, _, _ = read_safetensors(os.path.join(folder, shard))
            tensors.update(t)
        missing = [n for n in weight_map if n not in tensors]
        if missing:
            raise ValueError(f"{index}: tensors listed but not found in their shard: {missing[:5]}")
        return tensors
    return read_safetensors(os.path.join(folder, "model.safetensors"))[0]


def write_checkpoint(folder, config, tensors, dtype="F32", shards=1):
    """config.json + model.safetensors (or `shards` files + index) + generation_config.json."""
    os.makedirs(folder, exist_ok=True)
    for stale in os.listdir(folder):
        if stale.startswith("model") and (stale.endswith(".safetensors") or stale.endswith(".json")):
            os.remove(os.path.join(folder, stale))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    gen = {"_from_model_config": True, "bos_token_id": config.get("bos_token_id", 1),
           "eos_token_id": config.get("eos_token_id", 2), "pad_token_id": config.get("pad_token_id", 0),
           "use_cache": False}
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    names = list(tensors)
    if shards <= 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), tensors, dtype, {"format": "pt"})
        return
    # greedy split into `shards` groups of about equal size, in name order
    total = sum(int(np.prod(np.shape(tensors[n]))) for n in names)
    groups, acc = [[] for _ in range(shards)], 0
    for n in names:
        k = min(shards - 1, acc * shards // max(total, 1))
        groups[k].append(n)
        acc += int(np.prod(np.shape(tensors[n])))
    weight_map = {}
    for k, g in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(folder, fname), {n: tensors[n] for n in g}, dtype,
                          {"format": "pt"})
        weight_map.update({n: fname for n in g})
    total_size = sum(int(np.prod(np.shape(tensors[n]))) * _SIZE_OF[dtype] for n in names)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)


# =================================================================================================
# Config (§1, §1.1) and per-layer roles (§3.5, §3.6)
# =================================================================================================
def derive_config(raw):
    """config.json dict -> namespace with the derived sizes and one `plan` entry per layer."""
    g = raw.get

    def need(key):
        if key not in raw:
            raise ValueError(f"config.json: missing key '{key}'")
        return raw[key]

    c = SimpleNamespace(raw=raw)
    c.V, c.H, c.L = int(need("vocab_size")), int(need("hidden_size")), int(need("num_hidden_layers"))
    c.n_heads, c.n_kv = int(need("num_attention_heads")), int(need("num_key_value_heads"))
    c.I = int(g("intermediate_size", 0))                 # MLP width (0: no MLP, as the official code)
    c.eps = float(g("rms_norm_eps", 1e-6))
    c.expand = g("mamba_expand", 2)
    c.d_inner = int(c.expand * c.H)                      # Mamba inner width = attention output width
    c.N = int(g("mamba_d_state", 16))
    c.K = int(g("mamba_d_conv", 4))
    dt_rank = g("mamba_dt_rank", "auto")
    c.R = math.ceil(c.H / 16) if dt_rank in ("auto", None) else int(dt_rank)
    attn_hidden = int(g("attn_hidden_size", -1) or -1)
    attn_hidden = attn_hidden if attn_hidden > 0 else c.H
    kq = int(g("kq_head_dim", -1) or -1)
    if c.n_heads <= 0 or c.n_kv <= 0 or c.n_heads % c.n_kv:
        raise ValueError("config.json: num_attention_heads must be a multiple of num_key_value_heads")
    c.d_qk = kq if kq > 0 else attn_hidden // c.n_heads  # q/k head dim
    if c.d_inner % c.n_heads:
        raise ValueError("config.json: mamba_expand*hidden_size must be divisible by num_attention_heads")
    c.d_v = c.d_inner // c.n_heads                       # v_head_dim in the file is ignored (overwritten)
    c.rep = c.n_heads // c.n_kv                          # GQA: query head h reads kv head h // rep
    c.M = int(g("num_memory_tokens", 0) or 0)
    c.tie = bool(g("tie_word_embeddings", True))
    c.pad = g("pad_token_id", None)
    c.conv_bias = bool(g("mamba_conv_bias", True))
    c.proj_bias = bool(g("mamba_proj_bias", False))
    c.inner_norms = bool(g("mamba_inner_layernorms", True))
    # fusion of the two kinds of heads in "h" layers (our extension, Table 9's ablation):
    # "mean" (official) or "concat" (out_proj reads [norm1(attn); norm2(ssm)], 2*d_inner wide)
    c.fusion = g("fusion", "mean")
    if c.fusion not in ("mean", "concat"):
        raise ValueError(f"config.json: fusion must be 'mean' or 'concat' (got {c.fusion!r})")
    # unsupported official options: refuse instead of computing something else
    if int(g("num_experts", 1) or 1) != 1:
        raise ValueError("config.json: num_experts != 1 is not supported")
    if int(g("memory_tokens_interspersed_every", 0) or 0) != 0:
        raise ValueError("config.json: memory_tokens_interspersed_every != 0 is not supported")
    if g("kq_norm", "none") not in ("none", None):
        raise ValueError("config.json: kq_norm other than 'none' is not supported")
    for key in ("hidden_act", "mlp_hidden_act"):
        if g(key, "silu") != "silu":
            raise ValueError(f"config.json: {key} must be 'silu'")
    if g("kv_weight_reuse", False):
        raise ValueError("config.json: kv_weight_reuse true is not supported")
    # RoPE (§3.9): "default"/null -> base = rope_theta; "ntk" -> static NTK with factor 2
    c.rope = bool(g("rope", False))
    theta = float(g("rope_theta", 10000.0))
    rope_type = g("rope_type", None)
    if rope_type in (None, "default"):
        c.rope_base = theta
    elif rope_type == "ntk":
        factor = 2.0
        ratio = factor * float(need("max_position_embeddings")) / float(need("orig_max_position_embeddings"))
        c.rope_base = theta * (ratio - (factor - 1)) ** (c.d_qk / (c.d_qk - 2))
    else:
        raise ValueError(f"config.json: unsupported rope_type {rope_type!r}")
    # layer types (our extension; official = all "h")
    types = g("layer_type", None) or ["h"] * c.L
    if len(types) != c.L or any(t not in ("h", "a", "m") for t in types):
        raise ValueError("config.json: layer_type must list 'h'/'a'/'m' for every layer")
    # conv_dim: {"0": d_inner, ...} (string keys; ints accepted); must agree with d_inner
    conv_dim = g("conv_dim", None) or {}
    for k, v in conv_dim.items():
        i = int(k)
        if 0 <= i < c.L and types[i] in ("h", "m") and int(v) != c.d_inner:
            raise ValueError(f"config.json: conv_dim[{k}] = {v} != mamba_expand*hidden_size = {c.d_inner}")
    # sliding window / global layers (flex mask of §3.5: SWA iff window set and layer not global)
    window = g("sliding_window", None)
    gidx = g("global_attn_idx", None)
    c.window = None if window is None else int(window)
    # cross-layer KV sharing (§3.6)
    source = list(range(c.L))
    groups = g("kv_reuse_group", None)
    every = int(g("kv_reuse_every_i_layer", -1) or -1)
    if groups is not None:
        seen = set()
        for grp in groups:
            for i in grp:
                if not 0 <= i < c.L or i in seen:
                    raise ValueError(f"config.json: kv_reuse_group: bad or repeated layer {i}")
                seen.add(i)
            for i in grp[1:]:
                if i <= grp[0]:
                    raise ValueError(f"config.json: kv_reuse_group {grp}: consumer before producer")
                source[i] = grp[0]
    elif every > 0:
        source = [i - i % every for i in range(c.L)]
    c.plan = []
    for i, t in enumerate(types):
        p = SimpleNamespace(index=i, kind=t, has_attn=t in ("h", "a"), has_ssm=t in ("h", "m"))
        p.is_global = c.window is None or gidx is None or i in gidx
        p.kv_source = source[i]
        p.producer = p.has_attn and p.kv_source == i
        if p.kv_source != i and not (p.has_attn and types[p.kv_source] in ("h", "a")):
            raise ValueError(f"config.json: layer {i} shares K/V with layer {p.kv_source} but one has no attention")
        # in_proj rows in order (§3.4): [Q, K, V] (attention part) then [x, z] (SSM part)
        p.split = []
        if p.has_attn:
            p.split.append(("q", c.n_heads * c.d_qk))
            if p.producer:
                p.split += [("k", c.n_kv * c.d_qk), ("v", c.n_kv * c.d_v)]
        if p.has_ssm:
            p.split += [("x", c.d_inner), ("z", c.d_inner)]
        c.plan.append(p)
    return c


def param_shapes(c):
    """Official tensor names -> shapes (§2), for the layer types of the config."""
    s = {"model.embed_tokens.weight": (c.V, c.H), "model.final_layernorm.weight": (c.H,)}
    if c.M > 0:
        s["model.memory_tokens"] = (c.M, c.H)
    if not c.tie:
        s["lm_head.weight"] = (c.V, c.H)
    for p in c.plan:
        pre = f"model.layers.{p.index}."
        s[pre + "input_layernorm.weight"] = (c.H,)
        s[pre + "mamba.in_proj.weight"] = (sum(w for _, w in p.split), c.H)
        concat = c.fusion == "concat" and p.kind == "h"
        s[pre + "mamba.out_proj.weight"] = (c.H, 2 * c.d_inner if concat else c.d_inner)
        if c.proj_bias:
            s[pre + "mamba.in_proj.bias"] = (sum(w for _, w in p.split),)
            s[pre + "mamba.out_proj.bias"] = (c.H,)
        if p.has_attn:
            s[pre + "mamba.pre_avg_layernorm1.weight"] = (c.d_inner,)
        if p.has_ssm:
            s[pre + "mamba.pre_avg_layernorm2.weight"] = (c.d_inner,)
            s[pre + "mamba.conv1d.weight"] = (c.d_inner, 1, c.K)
            if c.conv_bias:
                s[pre + "mamba.conv1d.bias"] = (c.d_inner,)
            s[pre + "mamba.x_proj.0.weight"] = (c.R + 2 * c.N, c.d_inner)
            s[pre + "mamba.dt_proj.0.weight"] = (c.d_inner, c.R)
            s[pre + "mamba.dt_proj.0.bias"] = (c.d_inner,)
            s[pre + "mamba.A_log.0"] = (c.d_inner, c.N)
            s[pre + "mamba.D.0"] = (c.d_inner,)
            if c.inner_norms:
                s[pre + "mamba.dt_layernorm.weight"] = (c.R,)
                s[pre + "mamba.B_layernorm.weight"] = (c.N,)
                s[pre + "mamba.C_layernorm.weight"] = (c.N,)
        if c.I > 0:
            s[pre + "pre_moe_layernorm.weight"] = (c.H,)
            s[pre + "moe.experts.0.gate_proj.weight"] = (c.I, c.H)
            s[pre + "moe.experts.0.up_proj.weight"] = (c.I, c.H)
            s[pre + "moe.experts.0.down_proj.weight"] = (c.H, c.I)
    return s


# =================================================================================================
# Building blocks (B = batch, T = positions incl. meta tokens)
# =================================================================================================
def rms_norm(x, w, eps):
    """x [..., d], w [d] or None -> x / sqrt(mean(x^2) + eps) * w   (§3.1)."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w


def act_q8(x):
    """The engine's 8-bit activations for Q8/Q4_0 weights (src/ops/quant.h, quantize_act_q8): per
    block of 32 along the last axis, in float32: d = max|x| / 127, q = round_half_even(x * (127 /
    max|x|)); returns d * q in float64."""
    a = x.to(torch.float32)
    blocks = a.reshape(-1, 32)
    amax = blocks.abs().amax(dim=1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0, dtype=torch.float32) / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inv)                   # torch.round: half to even, as the engine
    d = amax / torch.tensor(127.0, dtype=torch.float32)
    return (d.to(torch.float64) * q.to(torch.float64)).reshape(x.shape)


def quantize_inputs(w):
    """Marks a weight as 8-bit-quantized in the engine: linear() then multiplies act_q8(x)."""
    w.hymba_forward = lambda x: act_q8(x) @ w.t()
    return w


def act_bf16(x):
    """The engine's bf16 activations for BF16 weights in the bf16 GEMM (src/ops/matmul.cpp,
    GemmBF16: more than 64 rows on a CPU with AVX512-BF16): x in float32, rounded to bf16
    nearest-even; returned in float64."""
    return x.to(torch.float32).to(torch.bfloat16).to(torch.float64)


def round_inputs_bf16(w, skip_rows=0):
    """Marks a weight as multiplied by the bf16 GEMM in the engine: linear() then multiplies
    act_bf16(x), except the first skip_rows rows of the sequence axis (x [..., L, in])."""
    def fwd(x):
        return torch.cat([x[..., :skip_rows, :], act_bf16(x[..., skip_rows:, :])], dim=-2) @ w.t()
    w.hymba_forward = fwd
    return w


def round_bf16_gemm_inputs(m, skip_rows=0):
    """The reference model m as the engine runs it where the bf16 GEMM takes every projection: all
    linears (and the head, untied) multiply act_bf16(x); the first skip_rows rows of the layers'
    linears are left alone (the meta-token prefix, which the engine computes apart through the F32
    GEMV when it has at most 64 rows). Returns m."""
    for name in list(m.params):
        if name.startswith("model.layers.") and name.endswith(".weight") and m.params[name].dim() == 2:
            m.params[name] = round_inputs_bf16(m.params[name], skip_rows)
    head = m.params["model.embed_tokens.weight"] if m.cfg.tie else m.params["lm_head.weight"]
    m.params["lm_head.weight"] = round_inputs_bf16(head.clone())
    m.cfg.tie = False
    return m


def linear(x, w, b=None):
    """x [..., in], w [out, in], b [out] -> [..., out]. A weight marked by quantize_inputs (or an
    adapter on one, see tests/python/lora_ref.py) brings its own product."""
    fwd = getattr(w, "hymba_forward", None)
    y = fwd(x) if fwd is not None else x @ w.t()
    return y if b is None else y + b


def rope_cos_sin(c, T):
    """cos, sin [T, d_qk] for positions 0..T-1: angle(p, d) = p * base^(-2(d mod d/2)/d_qk)  (§3.9)."""
    half = c.d_qk // 2
    inv_freq = c.rope_base ** (-torch.arange(half, dtype=F64) * 2.0 / c.d_qk)  # [d_qk/2]
    ang = torch.arange(T, dtype=F64)[:, None] * inv_freq[None, :]                # [T, d_qk/2]
    ang = torch.cat([ang, ang], dim=-1)                                           # [T, d_qk]
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    """Rotate-half RoPE over the full head dim: pairs (d, d + d_qk/2).  x [B, h, T, d_qk]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention_mask(T, M, window, is_global):
    """[T, T] bool: key j visible to query i iff j <= i and (global or i-j <= window or j < M)."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    visible = j <= i
    if not is_global:
        visible = visible & (((i - j) <= window) | (j < M))
    return visible


def attention(q, k, v, mask, rep):
    """q [B, hq, T, dqk], k [B, hkv, T, dqk], v [B, hkv, T, dv], mask [T, T] -> [B, T, hq*dv]."""
    k = k.repeat_interleave(rep, dim=1)           # query head h <-> kv head h // rep
    v = v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])   # [B, hq, T, T]
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = probs @ v                                # [B, hq, T, dv]
    B, hq, T, dv = out.shape
    return out.transpose(1, 2).reshape(B, T, hq * dv)   # column = head*dv + dim


def causal_conv(x, w, b):
    """Depthwise causal conv, zero left padding.  x [B, T, C], w [C, 1, K], b [C] or None -> [B, T, C].
    out[t, c] = b[c] + sum_k w[c, 0, k] * x[t - (K-1) + k, c]   (k = K-1 multiplies the current token)."""
    K = w.shape[-1]
    T = x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))               # [B, T+K-1, C]
    out = sum(w[:, 0, k] * xp[:, k:k + T, :] for k in range(K))
    return out if b is None else out + b


def selective_scan(x, delta, A, Bs, Cs, D, z):
    """Mamba-1 selective scan with D skip and SiLU(z) gate (§3.7 step 6), sequential over time.
    x, delta, z [B, T, C]; A [C, N]; Bs, Cs [B, T, N]; D [C] -> [B, T, C]."""
    Bn, T, C = x.shape
    h = torch.zeros(Bn, C, A.shape[1], dtype=x.dtype)    # state [B, C, N], zero before position 0
    ys = []
    for t in range(T):
        dt = delta[:, t, :, None]                          # [B, C, 1]
        h = torch.exp(dt * A) * h + dt * Bs[:, t, None, :] * x[:, t, :, None]
        ys.append((h * Cs[:, t, None, :]).sum(-1) + D * x[:, t])   # [B, C]
    y = torch.stack(ys, dim=1)
    return y * F.silu(z)


def split_in_proj(P, split):
    """P [B, T, rows] -> dict part name -> [B, T, width] in the column order of §3.4."""
    parts, start = {}, 0
    for name, width in split:
        parts[name] = P[..., start:start + width]
        start += width
    return parts


def attention_heads(c, p, w, parts, cos, sin, shared_kv):
    """Attention path (§3.5) -> [B, T, n_heads*d_v]; records this layer's post-RoPE (K, V)."""
    B, T, _ = parts["q"].shape
    q = parts["q"].reshape(B, T, c.n_heads, c.d_qk).transpose(1, 2)        # [B, hq, T, dqk]
    if c.rope:
        q = apply_rope(q, cos, sin)
    if p.producer:
        k = parts["k"].reshape(B, T, c.n_kv, c.d_qk).transpose(1, 2)       # [B, hkv, T, dqk]
        v = parts["v"].reshape(B, T, c.n_kv, c.d_v).transpose(1, 2)        # [B, hkv, T, dv]
        if c.rope:
            k = apply_rope(k, cos, sin)
        shared_kv[p.index] = (k, v)
    else:
        k, v = shared_kv[p.kv_source]       # consumer: the producer's post-RoPE K/V of this step
    mask = attention_mask(T, c.M, c.window, p.is_global)
    return attention(q, k, v, mask, c.rep)


def ssm_heads(c, w, pre, parts):
    """Mamba path (§3.7) -> [B, T, d_inner]."""
    x = F.silu(causal_conv(parts["x"], w[pre + "conv1d.weight"], w.get(pre + "conv1d.bias")))
    s = linear(x, w[pre + "x_proj.0.weight"])                              # [B, T, R + 2N]
    dt_raw, Bs, Cs = s[..., :c.R], s[..., c.R:c.R + c.N], s[..., c.R + c.N:]
    if c.inner_norms:
        dt_raw = rms_norm(dt_raw, w[pre + "dt_layernorm.weight"], c.eps)
        Bs = rms_norm(Bs, w[pre + "B_layernorm.weight"], c.eps)
        Cs = rms_norm(Cs, w[pre + "C_layernorm.weight"], c.eps)
    delta = F.softplus(linear(dt_raw, w[pre + "dt_proj.0.weight"], w[pre + "dt_proj.0.bias"]))
    A = -torch.exp(w[pre + "A_log.0"])                                     # [C, N]
    return selective_scan(x, delta, A, Bs, Cs, w[pre + "D.0"], parts["z"])


def hybrid_block(c, p, w, u, cos, sin, shared_kv):
    """HymbaBlock (§3.4-§3.8): u [B, T, H] (normed) -> [B, T, H]."""
    pre = f"model.layers.{p.index}.mamba."
    P = linear(u, w[pre + "in_proj.weight"], w.get(pre + "in_proj.bias"))
    parts = split_in_proj(P, p.split)
    if p.kind == "h":
        a = attention_heads(c, p, w, parts, cos, sin, shared_kv)
        m = ssm_heads(c, w, pre, parts)
        n1 = rms_norm(a, w[pre + "pre_avg_layernorm1.weight"], c.eps)
        n2 = rms_norm(m, w[pre + "pre_avg_layernorm2.weight"], c.eps)
        fused = torch.cat([n1, n2], dim=-1) if c.fusion == "concat" else (n1 + n2) / 2
    elif p.kind == "a":
        a = attention_heads(c, p, w, parts, cos, sin, shared_kv)
        fused = rms_norm(a, w[pre + "pre_avg_layernorm1.weight"], c.eps)
    else:  # "m"
        m = ssm_heads(c, w, pre, parts)
        fused = rms_norm(m, w[pre + "pre_avg_layernorm2.weight"], c.eps)
    return linear(fused, w[pre + "out_proj.weight"], w.get(pre + "out_proj.bias"))


def mlp(w, pre, x):
    """SwiGLU: down(SiLU(gate(x)) * up(x))."""
    return linear(F.silu(linear(x, w[pre + "gate_proj.weight"])) * linear(x, w[pre + "up_proj.weight"]),
                  w[pre + "down_proj.weight"])


def decoder_layer(c, p, w, x, cos, sin, shared_kv):
    """§3.3: h = x + block(norm_in(x)); out = h + MLP(norm_pre_moe(h))."""
    pre = f"model.layers.{p.index}."
    h = x + hybrid_block(c, p, w, rms_norm(x, w[pre + "input_layernorm.weight"], c.eps), cos, sin, shared_kv)
    if c.I > 0:
        h = h + mlp(w, pre + "moe.experts.0.", rms_norm(h, w[pre + "pre_moe_layernorm.weight"], c.eps))
    return h


def model_forward(c, w, ids):
    """§3.2: ids int64 [B, n] -> logits float64 [B, n, V] for every real position."""
    B, n = ids.shape
    pad = c.pad if (c.pad is not None and 0 <= int(c.pad) < c.V) else None
    x = F.embedding(ids, w["model.embed_tokens.weight"], padding_idx=pad)  # [B, n, H]; pad row gets no grad
    if c.M > 0:
        meta = w["model.memory_tokens"].unsqueeze(0).expand(B, c.M, c.H)
        x = torch.cat([meta, x], dim=1)                                     # [B, M+n, H]
    T = x.shape[1]
    cos, sin = rope_cos_sin(c, T)                                           # positions 0..M+n-1
    shared_kv = {}
    for p in c.plan:
        x = decoder_layer(c, p, w, x, cos, sin, shared_kv)
    x = rms_norm(x, w["model.final_layernorm.weight"], c.eps)
    x = x[:, c.M:, :]                                                       # meta tokens never output
    head = w["model.embed_tokens.weight"] if c.tie else w["lm_head.weight"]
    return linear(x, head)


# =================================================================================================
# Model object, loading
# =================================================================================================
class HymbaReference:
    def __init__(self, config, params):
        self.config = config                        # raw config.json dict
        self.cfg = derive_config(config)
        self.params = params                        # official name -> float64 tensor

    def requires_grad_(self, flag=True):
        for t in self.params.values():
            t.requires_grad_(flag)
        return self

    def forward(self, ids):
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.numel() == 0:
            raise ValueError("empty token list")
        if int(ids.min()) < 0 or int(ids.max()) >= self.cfg.V:
            raise ValueError(f"token id out of range [0, {self.cfg.V})")
        return model_forward(self.cfg, self.params, ids)

    def loss(self, ids, targets):
        """Mean next-token cross-entropy over real tokens; targets == -1 are ignored."""
        logits = self.forward(ids)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t, ignore_index=-1, reduction="mean")


def check_params(cfg, tensors, where="checkpoint"):
    """Validate names/shapes against §2; returns dict name -> float64 tensor (lm_head tied if absent)."""
    expected = param_shapes(cfg)
    tensors = dict(tensors)
    if cfg.tie or "lm_head.weight" not in tensors:
        tensors.pop("lm_head.weight", None)
        if not cfg.tie:        # untied config but no head in the file: tie, as the official loader does
            cfg.tie = True
            expected.pop("lm_head.weight", None)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise ValueError(f"{where}: missing tensor(s) {missing[:5]}")
    extra = [n for n in tensors if n not in expected]
    if extra:
        raise ValueError(f"{where}: unexpected tensor(s) {extra[:5]}")
    params = {}
    for name, shape in expected.items():
        arr = np.asarray(tensors[name])
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"{where}: tensor {name} has shape {list(arr.shape)}, expected {list(shape)}")
        params[name] = torch.tensor(arr.astype(np.float64))
    return params


def load(folder):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model = HymbaReference(config, {})
    model.params = check_params(model.cfg, read_checkpoint_tensors(folder), folder)
    return model


def forward(model, ids):
    return model.forward(ids)


def loss(model, ids, targets):
    return model.loss(ids, targets)


def gradients(model, batch):
    """batch int64 [B, L+1] -> (mean loss, dict name -> float64 gradient)."""
    batch = np.asarray(batch, dtype=np.int64)
    model.requires_grad_(True)
    for t in model.params.values():
        t.grad = None
    value = model.loss(batch[:, :-1], batch[:, 1:])
    value.backward()
    grads = {n: (t.grad if t.grad is not None else torch.zeros_like(t)).detach().numpy()
             for n, t in model.params.items()}
    model.requires_grad_(False)
    return float(value.detach()), grads


# =================================================================================================
# CLI
# =================================================================================================
def main(argv=None):
    ap = argparse.ArgumentParser(description="float64 Hymba reference")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("logits", help="logits of one sequence -> float32 .npy [n, V]")
    a.add_argument("--model", required=True)
    a.add_argument("--ids", required=True, help="comma-separated token ids")
    a.add_argument("-o", "--out", required=True)
    g = sub.add_parser("grads", help="mean loss and F64 gradients of a batch -> .safetensors")
    g.add_argument("--model", required=True)
    g.add_argument("--ids-file", required=True, help=".npy int64 [B, L+1]")
    g.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    try:
        model = load(args.model)
        if args.cmd == "logits":
            ids = [int(s) for s in args.ids.split(",") if s.strip() != ""]
            with torch.no_grad():
                logits = model.forward(np.array([ids], dtype=np.int64))[0]
            np.save(args.out, logits.numpy().astype(np.float32))
        else:
            batch = np.load(args.ids_file)
            if batch.ndim != 2 or batch.shape[1] < 2:
                raise ValueError(f"{args.ids_file}: expected int [B, L+1] with L >= 1, got {batch.shape}")
            value, grads = gradients(model, batch)
            write_safetensors(args.out, grads, "F64", {"loss": repr(value)})
            print(f"loss {value!r}")
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"hymba_ref: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
