#!/usr/bin/python3
"""Regenerates the seed corpora fuzz/corpus/<target>/ (committed; run again when a format changes).
   fuzz/make_corpus.py BUILD_DIR     (BUILD_DIR/hymba: the CLI, for real prompt-cache files)
Seeds are small valid inputs written by the project's own writers where it has them."""
import json, os, shutil, struct, subprocess, sys, tempfile

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HYMBA = os.path.join(sys.argv[1], "hymba")
OUT = os.path.join(SRC, "fuzz", "corpus")
KJV = os.path.join(SRC, "models", "hymba-kjv")
PC_TAG = 0x6675a2a2a2a2a2a2  # prompt_cache_fuzz.cpp kTag


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, meta=None):
    h, off, blob = {}, 0, b""
    if meta is not None:
        h["__metadata__"] = meta
    for name, dtype, shape, data in tensors:
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blob += data
    hs = json.dumps(h).encode()
    hs += b" " * ((8 - len(hs) % 8) % 8)
    return struct.pack("<Q", len(hs)) + hs + blob


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for c in data:
        h = ((h ^ c) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def token_file(ids, width, vocab):
    fmt = "<H" if width == 2 else "<I"
    return b"HYMBATOK" + struct.pack("<IIQII", 1, width, len(ids), vocab, 0) + b"".join(struct.pack(fmt, i) for i in ids)


shutil.rmtree(OUT, ignore_errors=True)
# safetensors
put("safetensors", "f32_bf16", safetensors([("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
                                            ("b", "BF16", [3], b"\x80\x3f" * 3)], {"format": "pt"}))
put("safetensors", "empty_and_scalar", safetensors([("e", "F16", [0, 5], b""), ("s", "I64", [], struct.pack("<q", 7))]))
put("safetensors", "no_tensors", safetensors([], {"format": "pt", "k": "v"}))
# sharded index (shards a.safetensors: x[2]; b.safetensors: y[1], z[3]; see the target)
put("safetensors_index", "valid", json.dumps({"metadata": {"total_size": 24},
                                               "weight_map": {"x": "a.safetensors", "y": "b.safetensors", "z": "b.safetensors"}}))
put("safetensors_index", "missing_shard", json.dumps({"weight_map": {"x": "a.safetensors", "q": "c.safetensors"}}))
# config.json
for name in sorted(os.listdir(os.path.join(SRC, "tests", "configs"))):
    put("config", name, open(os.path.join(SRC, "tests", "configs", name), "rb").read())
put("config", "hymba-kjv.json", open(os.path.join(KJV, "config.json"), "rb").read())
# tokenizer_config.json [+ "\n@@\n" + added_tokens.json]; the kjv SentencePiece vocab has 4096 pieces
kjv_cfg = open(os.path.join(KJV, "tokenizer_config.json")).read()
put("tokenizer_config", "kjv", kjv_cfg)
put("tokenizer_config", "pad_added", json.dumps({"add_bos_token": True, "pad_token": "[PAD]", "legacy": False,
                                                  "added_tokens_decoder": {"4096": {"content": "[PAD]"}}}))
put("tokenizer_config", "added_json", kjv_cfg + "\n@@\n" + json.dumps({"<tool>": 4096, "</tool>": 4097, "<s>": 1}))
# token files
put("token_file", "u16", token_file([1, 5, 9, 2, 1, 7, 3, 2, 0, 4], 2, 16))
put("token_file", "u32", token_file([1, 70000, 9, 2, 1, 65537, 3, 2], 4, 70001))
# server request bodies: first byte % 4 = completions, chat, tokenize, detokenize
put("server_request", "completion", "\x00" + json.dumps({"prompt": "And God said", "max_tokens": 4, "temperature": 0.5,
                                                         "stop": ["\n"], "logprobs": 2, "echo": True, "seed": 3}))
put("server_request", "completion_ids", "\x00" + json.dumps({"prompt": [1, 450, 7], "top_k": 5, "stream": True}))
put("server_request", "chat", "\x01" + json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                                {"role": "user", "content": "Who made the light?"}],
                                                   "max_completion_tokens": 8, "logprobs": True, "top_logprobs": 2}))
put("server_request", "completion_lora", "\x00" + json.dumps({"prompt": "And God said", "max_tokens": 2,
                                                              "lora": [{"id": 0, "scale": 0.7}, {"id": 1, "scale": -0.4}]}))
put("server_request", "tokenize", "\x02" + json.dumps({"content": "In the beginning", "add_special": True}))
put("server_request", "detokenize", "\x03" + json.dumps({"tokens": [1, 450, 7, 2]}))
# chat messages: "\n\x01" separates messages, the next byte % 6 picks the role
roles = {"system": "\x00", "user": "\x01", "assistant": "\x02", "tool": "\x03"}
put("chat_template", "turns", "\n\x01".join(roles[r] + c for r, c in
                                             [("system", " Be brief. "), ("user", "Hi\n"), ("assistant", "Hello."), ("user", "Again")]))
put("chat_template", "tool", "\n\x01".join(roles[r] + c for r, c in [("user", "2+2?"), ("tool", "4"), ("system", "late system")]))
# train_state.json as the trainer writes it
state = {"format": "hymba-train-state", "version": 1, "step": 10, "data_rng": "1234567890123", "tokens_seen": 2560,
         "schedule": {"kind": "wsd", "max_lr": 0.001, "min_lr": 0.0001, "total_steps": 100, "warmup_frac": 0.01,
                      "warmup_steps": -1, "decay_frac": 0.2}, "run": {"batch": 4, "seq_len": 64}}
put("train_state", "wsd", json.dumps(state, indent=2))
state["schedule"].update(kind="cosine", warmup_steps=5)
put("train_state", "cosine", json.dumps(state))
# JSONL training rows: first byte even = SFT conversations, odd = DPO preference pairs
sft = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who made the light?"},
                     {"role": "assistant", "content": "God."}]},
       {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                     {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Hello again."}]}]
put("jsonl", "sft", "\x00" + "\n".join(json.dumps(r) for r in sft) + "\n")
dpo = [{"prompt": "And God said", "chosen": " Let there be light.", "rejected": " nothing."},
       {"prompt": [{"role": "user", "content": "Name a river."}], "chosen": [{"role": "assistant", "content": "Jordan"}],
        "rejected": [{"role": "assistant", "content": "Light"}]}]
put("jsonl", "dpo", "\x01" + "\n".join(json.dumps(r) for r in dpo) + "\n")
# eval rows (hymba eval --data): first byte = task index in lm_tasks.cpp's order, second = --num-fewshot
# (mmlu; its dev rows follow "\n@@\n"); the rows are the test fixtures tests/data/eval/
EVAL = os.path.join(SRC, "tests", "data", "eval")
for i, task in enumerate(["arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "openbookqa", "mmlu",
                          "lambada_openai", "wikitext", "squad_completion", "swde"]):
    put("eval_rows", task, bytes([i, 0]) + open(os.path.join(EVAL, task + ".jsonl"), "rb").read())
    if task == "mmlu":
        put("eval_rows", "mmlu_2shot", bytes([i, 2]) + open(os.path.join(EVAL, "mmlu.jsonl"), "rb").read().rstrip(b"\n") +
            b"\n@@\n" + open(os.path.join(EVAL, "mmlu_dev.jsonl"), "rb").read())
# PEFT adapter folders: adapter_config.json + "\n@@\n" + adapter_model.safetensors, for
# tests/configs/tiny-hymba.json (H 64, d_inner 128, dt_rank 4, d_state 16, intermediate 160, 4 layers)
def lora(layer, module, r, rows, cols, dtype="F32", magnitude=None):
    k = f"base_model.model.model.layers.{layer}.{module}."
    size = {"F32": 4, "BF16": 2, "F16": 2}[dtype]
    fill = {"F32": struct.pack("<f", 0.01), "BF16": b"\x24\x3c", "F16": b"\x1f\x21"}[dtype]
    out = [(k + "lora_A.weight", dtype, [r, cols], fill * (r * cols)), (k + "lora_B.weight", dtype, [rows, r], fill * (rows * r))]
    if magnitude:
        out.append((k + magnitude, "F32", [rows], struct.pack("<f", 1.0) * rows))
    return out


def adapter(cfg, tensors):
    return json.dumps(dict({"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none"}, **cfg)).encode() + \
        b"\n@@\n" + safetensors(tensors, {"format": "pt"})


put("adapter", "lora", adapter({"r": 2, "lora_alpha": 4, "target_modules": ["out_proj", "gate_proj"]},
                               lora(0, "mamba.out_proj", 2, 64, 128) + lora(2, "moe.experts.0.gate_proj", 2, 160, 64, "BF16")))
put("adapter", "dora", adapter({"r": 2, "lora_alpha": 2, "use_dora": True, "target_modules": ["down_proj"]},
                               lora(1, "moe.experts.0.down_proj", 2, 64, 160, "F16", "lora_magnitude_vector.weight")))
put("adapter", "rslora_ssm", adapter({"r": 3, "lora_alpha": 6, "use_rslora": True, "lora_dropout": 0.05,
                                      "target_modules": ["x_proj.0", "dt_proj.0"]},
                                     lora(3, "mamba.x_proj.0", 3, 36, 128) + lora(3, "mamba.dt_proj.0", 3, 128, 4)))
put("adapter", "meta_tokens", adapter({"r": 1, "lora_alpha": 1, "modules_to_save": ["memory_tokens"]},
                                      lora(0, "moe.experts.0.up_proj", 1, 160, 64) +
                                      [("base_model.model.model.memory_tokens", "F32", [8, 64], struct.pack("<f", 0.25) * 512)]))
# prompt caches written by `hymba generate --prompt-cache` on a random tests/configs/tiny-hymba.json
# model (vocab widened to the kjv tokenizer's), tag field set to the target's kTag
with tempfile.TemporaryDirectory() as tmp:
    cfg = json.load(open(os.path.join(SRC, "tests", "configs", "tiny-hymba.json")))
    cfg["vocab_size"] = 4096
    json.dump(cfg, open(os.path.join(tmp, "c.json"), "w"))
    subprocess.run([HYMBA, "init", os.path.join(tmp, "c.json"), "-o", os.path.join(tmp, "m")], check=True,
                   stdout=subprocess.DEVNULL)
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(KJV, f), os.path.join(tmp, "m", f))
    for name, prompt, cache in (("short", "And", "bf16"), ("past_window", "And God said, Let there be light: and there was light.", "bf16")):
        pc = os.path.join(tmp, name + ".pc")
        subprocess.run([HYMBA, "generate", "-m", os.path.join(tmp, "m"), "-p", prompt, "-n", "2", "--temp", "0",
                        "--prompt-cache", pc, "--cache-type", cache], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b = bytearray(open(pc, "rb").read())
        b[8:16] = struct.pack("<Q", PC_TAG)
        put("prompt_cache", name, bytes(b))
        # the same state as a Redis state-store entry (runtime/state_store.cpp), first byte = mode
        n = struct.unpack("<Q", b[16:24])[0]
        state = bytes(b[24 + 4 * n:])
        entry = b"HYMBAST1" + bytes(b[8:24 + 4 * n]) + struct.pack("<Q", fnv1a64(state)) + state
        put("state_store", name, b"\x00" + entry)
        if name == "short":  # forged (checksum recomputed by the target): position one past the tokens
            st = bytearray(state)
            st[12:20] = struct.pack("<q", struct.unpack("<q", st[12:20])[0] + 1)
            put("state_store", "forged_position", b"\x01" + entry[:32 + 4 * n] + bytes(st))
for t in sorted(os.listdir(OUT)):
    files = os.listdir(os.path.join(OUT, t))
    print(f"{t}: {len(files)} seeds, {sum(os.path.getsize(os.path.join(OUT, t, f)) for f in files)} bytes")
