"""LoRA / DoRA on the float64 reference (reference/hymba_ref.py), as Hugging Face PEFT computes
them, for the adapter tests. The adapted layer's weight is substituted into the reference's
parameter dict:
    LoRA: W + s·B·A
    DoRA: m / ‖W + s·B·A‖ ⊙ (W + s·B·A)   (row norms of the [out, in] weight; detached, as PEFT)
so the reference forward is unchanged and autograd gives dL/dA, dL/dB, dL/dm. The engine computes
the adapters beside the base matmul instead (src/ops/lora.cpp): an independent route."""
import json
import os
import sys

import numpy as np
import torch

SRC = os.environ.get("HYMBA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "reference"))
import hymba_ref  # noqa: E402

MODULES = {"in_proj": "mamba.in_proj", "x_proj.0": "mamba.x_proj.0", "dt_proj.0": "mamba.dt_proj.0",
           "out_proj": "mamba.out_proj", "gate_proj": "moe.experts.0.gate_proj",
           "up_proj": "moe.experts.0.up_proj", "down_proj": "moe.experts.0.down_proj"}
PREFIX = "base_model.model.model.layers."
META = "base_model.model.model.memory_tokens"  # trained meta tokens (PEFT modules_to_save)


def key(layer, module, kind):
    k = f"{PREFIX}{layer}.{module}"
    return k + {"A": ".lora_A.weight", "B": ".lora_B.weight", "m": ".lora_magnitude_vector"}[kind]


def adapted_modules(model, targets):
    """[(layer, module path, base weight name)] for every target the model has."""
    out = []
    for layer in range(model.config["num_hidden_layers"]):
        for t in targets:
            w = f"model.layers.{layer}.{MODULES[t]}.weight"
            if w in model.params:
                out.append((layer, MODULES[t], w))
    return out


def scale(r, alpha, rslora=False):
    return alpha / (np.sqrt(r) if rslora else r)


def random_adapter(model, targets, r, alpha, dora, seed, meta=False):
    """Random non-trivial A, B (and m near ‖W + sBA‖; with meta, meta tokens near the base's)
    -> dict PEFT key -> float32 array."""
    rng = np.random.default_rng(seed)
    s = scale(r, alpha)
    out = {}
    if meta:
        M = model.params["model.memory_tokens"].detach().numpy()
        out[META] = (M + 0.5 * rng.standard_normal(M.shape) * np.abs(M).mean()).astype(np.float32)
    for layer, module, wname in adapted_modules(model, targets):
        W = model.params[wname].detach().numpy()
        A = rng.standard_normal((r, W.shape[1])) / np.sqrt(W.shape[1])
        B = 0.3 * rng.standard_normal((W.shape[0], r)) / np.sqrt(r)
        out[key(layer, module, "A")] = A.astype(np.float32)
        out[key(layer, module, "B")] = B.astype(np.float32)
        if dora:
            n = np.linalg.norm(W + s * B @ A, axis=1)
            out[key(layer, module, "m")] = (n * (1 + 0.2 * rng.standard_normal(n.shape))).astype(np.float32)
    return out


def write_peft(folder, tensors, r, alpha, dora, targets, dtype="F32"):
    os.makedirs(folder, exist_ok=True)
    hymba_ref.write_safetensors(os.path.join(folder, "adapter_model.safetensors"), tensors, dtype)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
           "target_modules": list(targets), "use_dora": dora, "bias": "none",
           "modules_to_save": ["memory_tokens"] if META in tensors else None}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)


def read_peft(folder):
    cfg = json.load(open(os.path.join(folder, "adapter_config.json")))
    t = hymba_ref.read_safetensors(os.path.join(folder, "adapter_model.safetensors"))[0]
    return cfg, t


def apply(model, adapter, cfg, detach_norm=True):
    """-> (params dict with the adapted weights, dict PEFT key -> leaf tensor requiring grad)."""
    s = scale(cfg["r"], cfg["lora_alpha"], cfg.get("use_rslora", False))
    leaves = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in adapter.items()}
    params = dict(model.params)
    if META in leaves:
        params["model.memory_tokens"] = leaves[META]
    for k in leaves:
        if not k.endswith(".lora_A.weight"):
            continue
        base = k[len(PREFIX):-len(".lora_A.weight")]          # "N.mamba.in_proj"
        wname = "model.layers." + base + ".weight"
        A, B = leaves[k], leaves[k.replace("lora_A", "lora_B")]
        W0 = params[wname]
        W = W0 + s * (B @ A)
        mk = k.replace(".lora_A.weight", ".lora_magnitude_vector")
        mag = None
        if cfg.get("use_dora"):
            n = W.norm(dim=1)
            if detach_norm:
                n = n.detach()
            mag = leaves[mk] / n
            W = mag[:, None] * W
        if getattr(W0, "hymba_forward", None) is not None:
            # An 8-bit base (QLoRA-style): the engine's adapter is not merged, only the base
            # product sees the 8-bit activations: mag ⊙ (W0·q(x) + s·B·A·x).
            def fwd(x, W0=W0, A=A, B=B, mag=mag):
                y = W0.hymba_forward(x) + s * ((x @ A.t()) @ B.t())
                return y if mag is None else y * mag
            W.hymba_forward = fwd
        params[wname] = W
    return params, leaves


def gradients(model, adapter, cfg, batch, detach_norm=True):
    """batch int64 [B, L+1] -> (mean loss, dict PEFT key -> float64 gradient)."""
    batch = np.asarray(batch, np.int64)
    params, leaves = apply(model, adapter, cfg, detach_norm)
    ref = hymba_ref.HymbaReference(model.config, params)
    ref.cfg = model.cfg
    loss = ref.loss(batch[:, :-1], batch[:, 1:])
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in leaves.items()}


def merged(model, adapter, cfg):
    """The base parameters with the adapters folded in (what `hymba merge` must write)."""
    with torch.no_grad():
        params, _ = apply(model, adapter, cfg)
        return {k: v.detach().numpy() for k, v in params.items()}


def dpo_gradients(model, adapter, cfg, batch, beta):
    """TRL's sigmoid DPO loss of one pair (batch row 0 chosen, row 1 rejected, every next token
    counted), the reference being the base model; -> (loss, dict PEFT key -> gradient)."""
    import torch.nn.functional as F
    batch = np.asarray(batch, np.int64)
    ids, tg = batch[:, :-1], torch.as_tensor(batch[:, 1:])

    def logps(params):
        ref = hymba_ref.HymbaReference(model.config, params)
        ref.cfg = model.cfg
        lp = torch.log_softmax(ref.forward(ids), -1)
        return lp.gather(-1, tg[..., None])[..., 0].sum(-1)          # [2]
    with torch.no_grad():
        r = logps(model.params)
    params, leaves = apply(model, adapter, cfg)
    p = logps(params)
    loss = -F.logsigmoid(beta * ((p[0] - r[0]) - (p[1] - r[1])))
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in leaves.items()}
