"""Training speed of the repo's PyTorch reference (reference/hymba_ref.py) in float32 on the CPU,
for `hymba bench --train`: the same checkpoint, token batches and thread count as the C++ trainer.
--tokens is a .npy [steps+1, B, L+1] of token ids (inputs [:, :-1], targets [:, 1:]); batch 0 is
the warm-up step, whose loss (before any update) must equal the C++ trainer's first loss.
Prints one JSON line {"tokens_per_s": ..., "step_seconds": ..., "first_loss": ..., "loss": ...}.

    /usr/bin/python3 reference/train_ref.py --model DIR --tokens DIR/tokens.npy --steps 3 --threads 2
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hymba_ref  # noqa: E402


def no_decay(name):
    # As the C++ AdamW groups: no weight decay on norms, biases, meta tokens, A_log and D.
    return (name.endswith("layernorm.weight") or name.endswith(".bias") or "memory_tokens" in name
            or ".A_log." in name or name.endswith(".D.0"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="checkpoint folder (config.json + model.safetensors)")
    ap.add_argument("--tokens", required=True, help=".npy [steps+1, batch, seq_len+1] of token ids")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (at most the file's steps)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    hymba_ref.F64 = torch.float32  # the reference's only internal float64 tensors (RoPE tables)
    model = hymba_ref.load(a.model)
    floats = {}  # keep the tied head tied: one float32 tensor per distinct parameter
    for k, t in list(model.params.items()):
        model.params[k] = floats.setdefault(id(t), t.float())
    model.requires_grad_(True)
    seen, decay, nodecay = set(), [], []
    for k, t in model.params.items():
        if id(t) not in seen:
            seen.add(id(t))
            (nodecay if no_decay(k) else decay).append(t)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": nodecay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    batches = np.load(a.tokens).astype(np.int64)
    steps = min(a.steps, batches.shape[0] - 1)
    if steps < 1:
        sys.exit("train_ref.py: --tokens needs at least 2 batches")

    def step(b):
        opt.zero_grad()
        loss = model.loss(b[:, :-1], b[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decay + nodecay, 1.0)
        opt.step()
        return float(loss.detach())

    first = step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        loss = step(batches[s])
    dt = (time.perf_counter() - t0) / steps
    B, L = batches.shape[1], batches.shape[2] - 1
    print(json.dumps({"tokens_per_s": B * L / dt, "step_seconds": dt, "first_loss": first, "loss": loss}))


if __name__ == "__main__":
    main()
