#!/usr/bin/python3
"""`hymba eval --task needle` and `--task mqar` against the float64 reference model.

Needle: every prompt is exactly --lengths tokens, starts with BOS, holds the needle at
round(depth/100 · m) of the haystack (the same haystack prefix before it at every depth), and the
greedy continuation equals the reference model's greedy ids; "retrieved" is the first number of
the text being the passkey; the grid is the mean over trials; the heatmap PNG is written.
MQAR: samples have distinct keys and values in their ranges, each query is a key seen before
followed by its value; correctness at each query equals the reference model's argmax; acc and
stderr follow; --make-data writes token files `hymba train` accepts (a 2-step smoke run).
Bad input: lengths too short, depths outside [0, 100], ids beyond the vocabulary.
"""
import json
import os
import re
import shutil
import struct
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref as R  # noqa: E402
import lm_eval_ref as L  # noqa: E402

RES = U.Results()
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")
MARGIN = 1e-3


def main():
    work = tempfile.mkdtemp(prefix="hymba-recall-")
    try:
        cfg = json.load(open(os.path.join(MODEL, "config.json")))
        ref = R.load(MODEL)
        hay = os.path.join(work, "hay.txt")
        with open(hay, "w") as f:
            f.write("".join(U.TEXT))
        out, png = os.path.join(work, "needle.json"), os.path.join(work, "needle.png")
        lengths, depths = [128, 224], [0, 50, 100]
        r = U.run(["eval", "-m", MODEL, "--task", "needle", "--data", hay, "--lengths", "128,224", "--depths", "0,50,100",
                   "--trials", "2", "--json", out, "--png", png])
        if RES.check("needle: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            j = json.load(open(out))
            trials = j["trials_detail"]
            RES.check("needle: one trial per length x depth x --trials", len(trials) == 12, str(len(trials)))
            shape_ok, gen_bad, score_ok = True, 0, True
            for t in trials:
                p = t["prompt"]
                before = t["needle_pos"] - next(x["needle_pos"] for x in trials if x["length"] == t["length"] and x["depth"] == 0)
                shape_ok &= (len(p) == t["length"] and p[0] == cfg["bos_token_id"]
                             and before == round(t["depth"] / 100 * t["haystack_len"]))
                same = [x for x in trials if x["length"] == t["length"] and x["depth"] == 100][0]
                shape_ok &= p[:t["needle_pos"]] == same["prompt"][:t["needle_pos"]]  # haystack prefix
                ids = []
                for ids, margin in L.greedy_generate(ref, p, len(t["generated"]), cfg["eos_token_id"]):
                    if ids != t["generated"][:len(ids)] and margin > MARGIN:
                        gen_bad += 1
                        break
                m = re.search(r"\d+", t["text"])
                score_ok &= t["retrieved"] == bool(m and m.group(0) == t["passkey"])
                score_ok &= re.fullmatch(r"\d{5}", t["passkey"]) is not None
            RES.check("needle: prompt length, BOS, needle depth, shared haystack prefix", shape_ok)
            RES.check("needle: greedy continuation = float64 reference", gen_bad == 0, f"{gen_bad} differ")
            RES.check("needle: retrieved = first number is the passkey", score_ok)
            grid_ok = all(abs(j["retrieved"][li][di] - np.mean([t["retrieved"] for t in trials
                                                                if t["length"] == L_ and t["depth"] == d]))
                          < 1e-12 for li, L_ in enumerate(lengths) for di, d in enumerate(depths))
            RES.check("needle: grid = mean over trials", grid_ok, str(j["retrieved"]))
            RES.check("needle: heatmap PNG", os.path.exists(png) and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n")
        # MQAR.
        out = os.path.join(work, "mqar.json")
        r = U.run(["eval", "-m", MODEL, "--task", "mqar", "--samples", "12", "--mqar-pairs", "6", "--mqar-vocab", "64",
                   "--seed", "5", "--json", out])
        if RES.check("mqar: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            j = json.load(open(out))
            ok, bad_flags, flags = True, 0, []
            for s in j["samples_detail"]:
                ids, q, ans = s["ids"], s["query_pos"], s["answers"]
                keys, vals = ids[1:13:2], ids[2:13:2]
                ok &= len(ids) == 4 * 6 + 2 and ids[0] == cfg["bos_token_id"] and ids[-1] == cfg["eos_token_id"]
                ok &= len(set(keys)) == 6 and all(3 <= k < 35 for k in keys) and all(35 <= v < 67 for v in vals)
                ok &= sorted(ids[p] for p in q) == sorted(keys)
                ok &= all(a == vals[keys.index(ids[p])] and ids[p + 1] == a for p, a in zip(q, ans))
                with torch.no_grad():
                    lg = torch.as_tensor(ref.forward(np.array([ids])))[0]
                for p, a in zip(q, ans):
                    top2 = lg[p].topk(2)
                    flags.append(int(int(lg[p].argmax()) == a))
                    if top2.values[0] - top2.values[1] > MARGIN and flags[-1] != j["correct"][len(flags) - 1]:
                        bad_flags += 1
            RES.check("mqar: samples (distinct keys, ranges, queries answered by their pair)", ok)
            RES.check("mqar: correct at each query = reference argmax", bad_flags == 0 and len(flags) == len(j["correct"]),
                      f"{bad_flags} differ of {len(flags)}")
            acc = float(np.mean(j["correct"]))
            se = L.mean_stderr(j["correct"])
            RES.check("mqar: acc and stderr", abs(j["acc"] - acc) < 1e-12 and abs(j["acc_stderr"] - se) < 1e-12,
                      f"{j['acc']} ± {j['acc_stderr']}")
        data = os.path.join(work, "mqdata")
        r = U.run(["eval", "-m", MODEL, "--task", "mqar", "--make-data", data, "--mqar-pairs", "4", "--mqar-vocab", "32",
                   "--train-samples", "50", "--val-samples", "5"])
        if RES.check("mqar --make-data: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            raw = open(os.path.join(data, "train.tok"), "rb").read()
            magic, ver, width, count, vocab, _ = struct.unpack("<8sIIQII", raw[:32])
            ids = np.frombuffer(raw[32:], dtype=np.uint16 if width == 2 else np.uint32)
            RES.check("mqar --make-data: token file of 50 samples of 18 tokens, BOS..EOS each",
                      magic == b"HYMBATOK" and count == 50 * 18 and vocab == cfg["vocab_size"]
                      and (ids[::18] == cfg["bos_token_id"]).all() and (ids[17::18] == cfg["eos_token_id"]).all(),
                      f"{count} ids")
            run = os.path.join(work, "run")
            r = U.run(["train", "--config", U.make_config(work), "--data", data, "--out", run, "--steps", "2", "--batch", "2",
                       "--seq-len", "16", "--eval-every", "0", "--save-every", "0"])
            RES.check("mqar --make-data: `hymba train` trains on it", r.returncode == 0, r.stderr.strip()[-300:])
        for label, args in (("needle length too short", ["--task", "needle", "--data", hay, "--lengths", "20"]),
                            ("needle bad depth", ["--task", "needle", "--data", hay, "--depths", "0,150"]),
                            ("needle bad length", ["--task", "needle", "--data", hay, "--lengths", "1k,x"]),
                            ("needle empty haystack", ["--task", "needle", "--data", os.devnull, "--lengths", "200"]),
                            ("mqar ids beyond vocab", ["--task", "mqar", "--mqar-vocab", "5000"]),
                            ("mqar too many pairs", ["--task", "mqar", "--mqar-vocab", "8", "--mqar-pairs", "9"])):
            RES.refused(f"bad input: {label}", ["eval", "-m", MODEL] + args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
