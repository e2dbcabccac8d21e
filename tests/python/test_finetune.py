"""hymba finetune (SFT) on the bundled model: LoRA and DoRA runs lower the training loss and save a
PEFT adapter that `generate --lora` and `merge` accept; an interrupted run resumed with --resume
ends with the same adapter bytes as an uninterrupted one; full fine-tuning writes a model folder;
bad data (row without messages, unknown role, empty reply, too long) and bad options are refused
naming the row, with a non-zero exit and no checkpoint written. hymba dpo: starts at the reference
(loss ln 2), the margin grows, TRL's metric names; a bad pair is named.
Meta tokens: frozen by default with lora (the adapter has none; modules_to_save null) and with
full --freeze-meta-tokens (the saved model's are the base's, bit for bit); trained with full and
with lora --train-meta-tokens (changed; saved as base_model.model.model.memory_tokens, listed in
modules_to_save, applied by --lora and by merge); a resume with the other setting is refused.
--dropout P (PEFT's lora_dropout): P=0 gives the same adapter bytes as no option; P>0 trains
differently, writes lora_dropout=P, resumes exactly (the masks are a function of seed and step),
and does not touch inference (same logits as the same tensors with lora_dropout 0); P out of
[0, 1), full fine-tuning with dropout, and a resume with another P are refused; DoRA with
dropout trains."""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref  # noqa: E402

R = U.Results()
check = R.check
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")


def conv(i):
    return {"messages": [{"role": "user", "content": f"Say verse {i}."},
                         {"role": "assistant", "content": f"Verse {i}: In the beginning God created the heaven."}]}


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def ft(data, out, *extra):
    return U.run(["finetune", "-m", MODEL, "--data", data, "--out", out, "--seq-len", "96", "-t", "2",
                  "--warmup-steps", "1", "--seed", "3"] + list(extra))


def main():
    work = tempfile.mkdtemp(prefix="hymba-ft-")
    data = os.path.join(work, "sft.jsonl")
    write(data, [conv(i) for i in range(12)])

    for method in ("lora", "dora"):
        out = os.path.join(work, method)
        r = ft(data, out, "--method", method, "--rank", "4", "--max-steps", "4", "--val-fraction", "0.2", "--lr", "2e-3")
        if not check(f"{method}: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            continue
        losses = [float(l.split("loss ")[1].split()[0]) for l in r.stderr.splitlines() if l.startswith("step ") and "| loss " in l]
        check(f"{method}: training loss goes down", len(losses) == 4 and losses[-1] < losses[0],
              f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else r.stderr[-200:])
        check(f"{method}: validation loss reported", "| val " in r.stderr, r.stderr.strip().splitlines()[-2])
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        check(f"{method}: PEFT adapter_config.json", cfg["peft_type"] == "LORA" and cfg["r"] == 4 and
              cfg["use_dora"] == (method == "dora") and "x_proj.0" in cfg["target_modules"], json.dumps(cfg)[:160])
        g = U.run(["generate", "-m", MODEL, "--lora", out, "-p", "Say verse 3.", "-n", "8", "--temp", "0"])
        check(f"{method}: generate --lora RUN", g.returncode == 0, g.stderr.strip()[-200:])

    # Resume: 4 steps at once vs 2 + --resume 2, same bytes.
    a, b = os.path.join(work, "whole"), os.path.join(work, "split")
    ra = ft(data, a, "--max-steps", "4", "--grad-accum", "2")
    rb = ft(data, b, "--max-steps", "4", "--grad-accum", "2", "--stop-after", "2")
    rc = ft(data, b, "--max-steps", "4", "--grad-accum", "2", "--resume")
    if check("resume: runs", ra.returncode == rb.returncode == rc.returncode == 0, (rb.stderr + rc.stderr).strip()[-300:]):
        same = open(os.path.join(a, "adapter_model.safetensors"), "rb").read() == \
            open(os.path.join(b, "adapter_model.safetensors"), "rb").read()
        check("resume: the resumed adapter is byte-identical to the uninterrupted one", same, "")
        rd = ft(data, b, "--max-steps", "4", "--grad-accum", "3", "--resume")
        check("Bad resume with another --grad-accum refused", rd.returncode == 1 and "grad_accum" in rd.stderr, rd.stderr.strip()[-200:])
    r = ft(data, a, "--max-steps", "1")
    check("Bad new run into an existing run refused", r.returncode == 1 and "--resume" in r.stderr, r.stderr.strip()[-200:])

    # Full fine-tuning writes a model folder that loads.
    full = os.path.join(work, "full")
    r = ft(data, full, "--method", "full", "--max-steps", "2")
    if check("full: runs", r.returncode == 0, r.stderr.strip()[-300:]):
        g = U.run(["generate", "-m", full, "-p", "Say verse 3.", "-n", "4", "--temp", "0"])
        check("full: the run folder loads as a model", g.returncode == 0, g.stderr.strip()[-200:])

    # Meta tokens: frozen or trained, and where trained ones go.
    base_meta = hymba_ref.read_safetensors(os.path.join(MODEL, "model.safetensors"))[0]["model.memory_tokens"]
    meta_key = "base_model.model.model.memory_tokens"
    runs = {}
    for name, extra in (("lora", []), ("lora-meta", ["--train-meta-tokens"]), ("full", ["--method", "full"]),
                        ("full-frozen", ["--method", "full", "--freeze-meta-tokens"])):
        out = os.path.join(work, "meta-" + name)
        r = ft(data, out, "--max-steps", "2", "--lr", "1e-2" if name.startswith("lora") else "1e-4", *extra)
        if check(f"meta tokens, {name}: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            f = "adapter_model.safetensors" if name.startswith("lora") else "model.safetensors"
            t = hymba_ref.read_safetensors(os.path.join(out, f))[0]
            runs[name] = (out, t.get(meta_key if name.startswith("lora") else "model.memory_tokens"))
    if "lora" in runs:
        cfg = json.load(open(os.path.join(runs["lora"][0], "adapter_config.json")))
        check("meta tokens, lora default: frozen (none in the adapter, modules_to_save null)",
              runs["lora"][1] is None and cfg.get("modules_to_save") is None, str(cfg.get("modules_to_save")))
    if "full-frozen" in runs:
        m = runs["full-frozen"][1]
        check("meta tokens, full --freeze-meta-tokens: the saved ones are the base's, bit for bit",
              m is not None and np.array_equal(np.asarray(m, np.float32), np.asarray(base_meta, np.float32)), "")
    if "full" in runs:
        m = runs["full"][1]
        check("meta tokens, full default: trained", m is not None and np.abs(np.asarray(m) - base_meta).max() > 0,
              f"max change {np.abs(np.asarray(m) - base_meta).max() if m is not None else None}")
    if "lora-meta" in runs:
        out, m = runs["lora-meta"]
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        check("meta tokens, lora --train-meta-tokens: trained, saved as PEFT modules_to_save",
              m is not None and m.shape == base_meta.shape and np.abs(m - base_meta).max() > 0 and
              cfg.get("modules_to_save") == ["memory_tokens"], f"{cfg.get('modules_to_save')}")
        merged = os.path.join(work, "meta-merged")
        r = U.run(["merge", "-m", MODEL, "--lora", out, "-o", merged, "--dtype", "f32"])
        mm = hymba_ref.read_safetensors(os.path.join(merged, "model.safetensors"))[0]["model.memory_tokens"] \
            if r.returncode == 0 else None
        check("meta tokens, lora --train-meta-tokens: merge writes them", mm is not None and np.array_equal(mm, m),
              (r.stdout + r.stderr).strip()[-200:])
        outs = [U.run(["generate", "-m", mdl, "-p", "Say verse 3.", "-n", "8", "--temp", "0", "--cache-type", "f32",
                       *lora]).stdout for mdl, lora in ((MODEL, ["--lora", out]), (merged, []))]
        check("meta tokens: --lora with them == the merged model", outs[0] == outs[1] and outs[0], str(outs))
        r = ft(data, out, "--max-steps", "3", "--lr", "1e-2", "--resume")
        check("Bad resume without --train-meta-tokens refused", r.returncode == 1 and "train_meta_tokens" in r.stderr,
              r.stderr.strip()[-200:])

    # --dropout (lora_dropout).
    drop = {}
    for name, extra in (("none", []), ("p0", ["--dropout", "0"]), ("p3", ["--dropout", "0.3"])):
        out = os.path.join(work, "drop-" + name)
        r = ft(data, out, "--max-steps", "2", "--grad-accum", "2", "--lr", "1e-2", *extra)
        if check(f"dropout {name}: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            drop[name] = (out, open(os.path.join(out, "adapter_model.safetensors"), "rb").read())
    if len(drop) == 3:
        check("dropout 0 == no dropout, byte for byte", drop["none"][1] == drop["p0"][1], "")
        check("dropout 0.3 trains differently", drop["p3"][1] != drop["p0"][1], "")
        cfg = json.load(open(os.path.join(drop["p3"][0], "adapter_config.json")))
        check("dropout 0.3: adapter_config.json lora_dropout 0.3", abs(cfg.get("lora_dropout", -1) - 0.3) < 1e-9,
              str(cfg.get("lora_dropout")))
        same = os.path.join(work, "drop-p3-as-0")
        os.makedirs(same)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy(os.path.join(drop["p3"][0], f), same)
        json.dump(dict(cfg, lora_dropout=0.0), open(os.path.join(same, "adapter_config.json"), "w"))
        lg = []
        for d in (drop["p3"][0], same):
            npy = os.path.join(d, "l.npy")
            r = U.run(["logits", "-m", MODEL, "--lora", d, "--prompt", "Say verse 3.", "-o", npy])
            lg.append(open(npy, "rb").read() if r.returncode == 0 else r.stderr)
        check("dropout: inference unaffected (logits == the same tensors with lora_dropout 0)", lg[0] == lg[1], "")
        b = os.path.join(work, "drop-split")
        r1 = ft(data, b, "--max-steps", "2", "--grad-accum", "2", "--lr", "1e-2", "--dropout", "0.3", "--stop-after", "1")
        r2 = ft(data, b, "--max-steps", "2", "--grad-accum", "2", "--lr", "1e-2", "--dropout", "0.3", "--resume")
        check("dropout 0.3: resumed run == uninterrupted, byte for byte", r1.returncode == r2.returncode == 0 and
              open(os.path.join(b, "adapter_model.safetensors"), "rb").read() == drop["p3"][1], r2.stderr.strip()[-200:])
        r = ft(data, drop["p3"][0], "--max-steps", "3", "--grad-accum", "2", "--resume")
        check("Bad resume with another --dropout refused", r.returncode == 1 and "dropout" in r.stderr, r.stderr.strip()[-200:])
    for extra, why in ((["--dropout", "1"], "[0, 1)"), (["--dropout", "-0.1"], "[0, 1)"),
                       (["--dropout", "0.1", "--method", "full"], "--method lora or dora")):
        r = ft(data, os.path.join(work, "bad-dropout"), "--max-steps", "1", *extra)
        check(f"Bad {' '.join(extra)} refused", r.returncode == 1 and why in r.stderr, r.stderr.strip()[-200:])

    # DoRA with dropout (PEFT's DoRA part on the dropped-out input; gradients in
    # test_lora_dropout_vs_reference.py).
    dd = os.path.join(work, "dora-dropout")
    r = ft(data, dd, "--max-steps", "1", "--method", "dora", "--dropout", "0.2")
    cfg_dd = os.path.join(dd, "adapter_config.json")
    check("dora + --dropout 0.2 trains and writes lora_dropout 0.2", r.returncode == 0 and os.path.exists(cfg_dd) and
          abs(json.load(open(cfg_dd)).get("lora_dropout", -1) - 0.2) < 1e-9 and json.load(open(cfg_dd)).get("use_dora"),
          r.stderr.strip()[-200:])

    # Bad data: named row, exit 1, nothing written.
    bad = {"no messages": ({"text": "x"}, "no \"messages\""),
           "unknown role": ({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role"),
           "empty reply": ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}, "empty assistant"),
           "too long": ({"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "y"}]}, "longer than")}
    for name, (row, why) in bad.items():
        p = os.path.join(work, "bad.jsonl")
        write(p, [conv(0), conv(1), conv(2), row])
        out = os.path.join(work, "bad-" + name.replace(" ", "-"))
        r = ft(p, out, "--max-steps", "1")
        check(f"Bad data ({name}) refused naming row 4 before any step",
              r.returncode == 1 and ":4: " in r.stderr and why in r.stderr and "step " not in r.stderr
              and not os.path.exists(os.path.join(out, "latest")), r.stderr.strip()[-200:])
    # DPO: the policy starts at the reference (loss ln 2 at step 1), the margin grows; TRL's metrics.
    pairs = os.path.join(work, "dpo.jsonl")
    write(pairs, [{"prompt": f"Quote verse {i}.", "chosen": "In the beginning God created the heaven and the earth.",
                   "rejected": "In the beginning God created the sea."} for i in range(6)])
    for method in ("lora", "full", "lora-meta"):
        out = os.path.join(work, "dpo-" + method)
        r = U.run(["dpo", "-m", MODEL, "--data", pairs, "--out", out, "--method", method.split("-")[0], "--max-steps", "3",
                   "--lr", "1e-5" if method == "full" else "1e-3", "--warmup-steps", "1", "--seq-len", "96", "-t", "2"] +
                  (["--train-meta-tokens"] if method == "lora-meta" else []))
        if not check(f"dpo {method}: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            continue
        rows = [l.split(",") for l in open(os.path.join(out, "metrics.csv")).read().split()]
        head, rows = rows[0], rows[1:]
        col = {k: i for i, k in enumerate(head)}
        check(f"dpo {method}: TRL metric names in metrics.csv",
              all(k in col for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                                     "logps/chosen", "logps/rejected")), ",".join(head))
        check(f"dpo {method}: step 1 loss is ln 2 (policy == reference)", abs(float(rows[0][col["loss"]]) - 0.6931472) < 1e-4,
              rows[0][col["loss"]])
        m = [float(x[col["rewards/margins"]]) for x in rows]
        check(f"dpo {method}: the reward margin grows", m[-1] > m[0], f"{m}")
    p = os.path.join(work, "bad-dpo.jsonl")
    write(p, [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}])
    r = U.run(["dpo", "-m", MODEL, "--data", p, "--out", os.path.join(work, "bad-dpo")])
    check("Bad DPO row without \"rejected\" named", r.returncode == 1 and ":2: " in r.stderr and "rejected" in r.stderr,
          r.stderr.strip()[-200:])
    r = ft(data, os.path.join(work, "bad-method"), "--method", "qlora")
    check("Bad --method refused", r.returncode == 1 and "--method" in r.stderr, r.stderr.strip()[-200:])
    r = ft(data, os.path.join(work, "bad-target"), "--target", "q_proj")
    check("Bad --target refused", r.returncode == 1 and "q_proj" in r.stderr, r.stderr.strip()[-200:])
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
