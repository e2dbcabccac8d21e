#!/usr/bin/python3
"""Random checkpoints in the official Hymba layout, for tests.

    /usr/bin/python3 reference/make_checkpoint.py --config CONFIG.json --out DIR \
        --dtype f32|bf16|f16 --seed N [--shards K]

writes DIR/config.json (copied), DIR/model.safetensors (or K shards + model.safetensors.index.json)
and DIR/generation_config.json. The weights are chosen so that every term of the forward pass has
a visible effect on the logits (activations O(1), no parameter at a neutral value):
  linear weights N(0, 1/fan_in) (std 1/sqrt(fan_in)), norm weights 1 + 0.2 N(0,1),
  biases N(0, 0.5), A_log = log(1..N) + 0.1 N(0,1), D = N(1, 0.5),
  meta tokens N(0,1), embedding N(0,1). lm_head.weight is omitted when tie_word_embeddings is true.
bf16 = round-to-nearest-even of the float32 value.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hymba_ref  # noqa: E402

DTYPES = {"f32": "F32", "bf16": "BF16", "f16": "F16"}


def random_tensor(name, shape, rng, N):
    """One tensor's random values (float32), by the role its official name gives it."""
    if name in ("model.embed_tokens.weight", "model.memory_tokens"):
        return rng.standard_normal(shape)
    if "layernorm" in name:                                     # every RMSNorm weight
        return 1.0 + 0.2 * rng.standard_normal(shape)
    if name.endswith(".bias"):                                  # conv1d, dt_proj, in/out_proj
        return 0.5 * rng.standard_normal(shape)
    if name.endswith("A_log.0"):
        return np.log(np.arange(1, N + 1, dtype=np.float64))[None, :] + 0.1 * rng.standard_normal(shape)
    if name.endswith("D.0"):
        return 1.0 + 0.5 * rng.standard_normal(shape)
    if name.endswith("conv1d.weight"):                          # [C, 1, K]: fan_in = K
        return rng.standard_normal(shape) / np.sqrt(shape[-1])
    if name.endswith(".weight") and len(shape) == 2:            # linear [out, in] (incl. lm_head)
        return rng.standard_normal(shape) / np.sqrt(shape[1])
    raise ValueError(f"no init rule for {name}")


def make_tensors(config, seed):
    cfg = hymba_ref.derive_config(config)
    rng = np.random.default_rng(seed)
    return {name: random_tensor(name, shape, rng, cfg.N).astype(np.float32)
            for name, shape in hymba_ref.param_shapes(cfg).items()}


def make_checkpoint(config, out, dtype="f32", seed=0, shards=1):
    tensors = make_tensors(config, seed)
    hymba_ref.write_checkpoint(out, config, tensors, DTYPES[dtype], shards)
    return tensors


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1)
    args = ap.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    make_checkpoint(config, args.out, args.dtype, args.seed, args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
