#!/usr/bin/python3
"""Write a random-weight GGUF for llama.cpp to benchmark against hymba.cpp (scripts/bench_vs_llamacpp.sh).

  --arch falcon-h1  llama.cpp's generic hybrid (every layer: full attention + Mamba-2 in parallel, then
                    a SwiGLU MLP) with Hymba-1.5B's dimensions (tests/configs/hymba-1.5b.json).
  --arch llama      a dense Llama with Llama-3.2-3B's shape (the paper's dense baseline).

Uses llama.cpp's own gguf-py (pass --gguf-py SRC/gguf-py; pure Python + numpy); nothing of llama.cpp is
vendored here. Tensors are F16 (norms, conv and SSM scalars F32, as convert_hf_to_gguf.py writes them);
quantize with `llama-quantize IN OUT Q8_0|Q4_0`. The tokenizer is a placeholder SentencePiece vocab of the
right size (<unk>, <s>, </s>, 256 byte tokens, fillers): llama-bench samples token ids and never tokenizes.
"""
import argparse
import math
import os
import sys

import numpy as np

# Hymba-1.5B: hidden 1600, 32 layers, MLP 5504, 25 query / 5 KV heads of 64, vocab 32001, SSM 3200 x 16, conv 4.
FALCON_H1 = dict(hidden=1600, layers=32, ff=5504, heads=25, kv_heads=5, head_dim=64, vocab=32001,
                 d_inner=3200, d_state=16, d_conv=4, ssm_head_dim=64, n_group=1, ctx=8192,
                 rope_theta=10000.0, eps=1e-6)
# Llama-3.2-3B (tied embeddings).
LLAMA_3B = dict(hidden=3072, layers=28, ff=8192, heads=24, kv_heads=8, head_dim=128, vocab=128256,
                ctx=131072, rope_theta=500000.0, eps=1e-5)


def embedding(c):  # tied: token_embd is also the output head
    yield "token_embd.weight", (c["vocab"], c["hidden"]), np.float16, "w"
    yield "output_norm.weight", (c["hidden"],), np.float32, "one"


def attention(b, c):
    h, q, kv = c["hidden"], c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    yield b + "attn_norm.weight", (h,), np.float32, "one"
    yield b + "attn_q.weight", (q, h), np.float16, "w"
    yield b + "attn_k.weight", (kv, h), np.float16, "w"
    yield b + "attn_v.weight", (kv, h), np.float16, "w"
    yield b + "attn_output.weight", (h, q), np.float16, "w"


def mlp(b, c, norm_name):
    h = c["hidden"]
    yield b + norm_name, (h,), np.float32, "one"
    yield b + "ffn_gate.weight", (c["ff"], h), np.float16, "w"
    yield b + "ffn_down.weight", (h, c["ff"]), np.float16, "w"
    yield b + "ffn_up.weight", (c["ff"], h), np.float16, "w"


def tensors_falcon_h1(c):
    """(name, numpy shape = ggml ne reversed, dtype, init) in llama.cpp's falcon-h1 loader order."""
    h = c["hidden"]
    nh = c["d_inner"] // c["ssm_head_dim"]  # Mamba-2 heads (llama.cpp: ssm.time_step_rank)
    conv_dim = c["d_inner"] + 2 * c["n_group"] * c["d_state"]
    proj = c["d_inner"] + conv_dim + nh  # z, xBC, dt
    yield from embedding(c)
    for i in range(c["layers"]):
        b = f"blk.{i}."
        yield from attention(b, c)
        yield b + "ssm_in.weight", (proj, h), np.float16, "w"
        yield b + "ssm_conv1d.weight", (conv_dim, c["d_conv"]), np.float32, "w"
        yield b + "ssm_conv1d.bias", (conv_dim,), np.float32, "zero"
        yield b + "ssm_dt.bias", (nh,), np.float32, "dt_bias"
        yield b + "ssm_a", (nh, 1), np.float32, "a"
        yield b + "ssm_d", (nh, 1), np.float32, "one"
        yield b + "ssm_norm.weight", (c["n_group"], c["d_inner"] // c["n_group"]), np.float32, "one"
        yield b + "ssm_out.weight", (h, c["d_inner"]), np.float16, "w"
        yield from mlp(b, c, "ffn_norm")  # falcon-h1 names it without ".weight"


def tensors_llama(c):
    yield from embedding(c)
    for i in range(c["layers"]):
        b = f"blk.{i}."
        yield from attention(b, c)
        yield from mlp(b, c, "ffn_norm.weight")


def make(rng, shape, dtype, init):
    n = int(np.prod(shape))
    if init == "w":  # N(0, 0.02), generated in chunks to bound memory
        out = np.empty(n, dtype=dtype)
        step = 1 << 24
        for s in range(0, n, step):
            e = min(n, s + step)
            out[s:e] = rng.standard_normal(e - s, dtype=np.float32) * np.float32(0.02)
        return out.reshape(shape)
    if init == "one":
        return np.ones(shape, dtype=dtype)
    if init == "zero":
        return np.zeros(shape, dtype=dtype)
    if init == "a":  # Mamba-2 init: A = -U(1, 16)
        return -rng.uniform(1.0, 16.0, size=shape).astype(dtype)
    if init == "dt_bias":  # softplus^-1 of dt ~ logU(1e-3, 0.1)
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(0.1), size=shape))
        return (dt + np.log(-np.expm1(-dt))).astype(dtype)
    raise ValueError(init)


def add_vocab(w, gguf, n_vocab):
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [
        gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"); scores.append(0.0); types.append(gguf.TokenType.BYTE)
    for i in range(len(tokens), n_vocab):
        tokens.append(f"\u2581t{i}"); scores.append(-float(i)); types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf-py", required=True, help="llama.cpp's gguf-py folder (SRC/gguf-py)")
    ap.add_argument("--arch", choices=["falcon-h1", "llama"], default="falcon-h1")
    ap.add_argument("-o", "--output", required=True, help="output .gguf (F16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="print parameter counts only")
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(a.gguf_py, "gguf")):
        sys.exit(f"make_peer_gguf: --gguf-py {a.gguf_py}: no gguf/ package there (expected llama.cpp's gguf-py)")
    sys.path.insert(0, a.gguf_py)
    import gguf  # noqa: E402  (llama.cpp's own)

    c = FALCON_H1 if a.arch == "falcon-h1" else LLAMA_3B
    specs = list((tensors_falcon_h1 if a.arch == "falcon-h1" else tensors_llama)(c))
    n_params = sum(int(np.prod(s)) for _, s, _, _ in specs)
    # Per decoded token every tensor is read once except the embedding table (one row), which is read
    # in full as the tied output head: so the bytes per token are all weights.
    nbytes = sum(int(np.prod(s)) * np.dtype(t).itemsize for _, s, t, _ in specs)
    print(f"{a.arch}: {len(specs)} tensors, {n_params:,} parameters, {nbytes / 1e9:.3f} GB as written")
    if a.dry_run:
        return

    tmp = a.output + ".tmp"
    w = gguf.GGUFWriter(tmp, a.arch)
    w.add_name(f"random {a.arch} ({'Hymba-1.5B' if a.arch == 'falcon-h1' else 'Llama-3.2-3B'} shape)")
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["hidden"])
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(c["ff"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["eps"])
    w.add_vocab_size(c["vocab"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    if a.arch == "falcon-h1":
        w.add_ssm_conv_kernel(c["d_conv"])
        w.add_ssm_inner_size(c["d_inner"])
        w.add_ssm_state_size(c["d_state"])
        w.add_ssm_time_step_rank(c["d_inner"] // c["ssm_head_dim"])
        w.add_ssm_group_count(c["n_group"])
    else:
        w.add_rope_dimension_count(c["head_dim"])
    add_vocab(w, gguf, c["vocab"])
    for name, shape, dtype, _ in specs:
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(a.seed)
    for name, shape, dtype, init in specs:
        w.write_tensor_data(make(rng, shape, dtype, init))
    w.close()
    os.replace(tmp, a.output)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
