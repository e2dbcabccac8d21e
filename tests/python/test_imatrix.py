#!/usr/bin/python3
"""`hymba imatrix` and `hymba quantize --imatrix` against the float64 reference.

- the importance matrix of a random checkpoint in the official layout equals what the float64
  reference model computes: per linear layer, Σ x² of its input per column over every row of every
  chunk (first token BOS, the meta-token rows left out), and the row count; the file's metadata
  names the calibration chunks;
- `hymba quantize --imatrix` (q4_0, q4_k): decoded from the folders' bytes here, the weighted
  error Σ w·(x - x̂)², w = importance · sqrt(σ² + x²) (src/ops/quant.h), is lower with the
  imatrix than without, for q4_0 on no block higher; config.json records the imatrix;
  `--quantize q4_0 --imatrix` at load gives the folder's logits exactly (one rule);
- `hymba quantize --report --imatrix` adds a "+imatrix" row per 4-bit format whose perplexity is
  the one `hymba perplexity` measures for that model;
- a run killed mid-way leaves a file of whole chunks that `--resume` completes to the
  uninterrupted run's sums; an existing -o is not overwritten without --resume; --in-file adds sums;
- bad input is refused with one clear error and nothing written: an imatrix of another model, one
  missing a matrix, a negative sum, a missing file, --imatrix with q8_0, -o a folder.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402
import test_quantize_checkpoint as TQ  # noqa: E402  (the block decoders)

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref as R  # noqa: E402
import make_checkpoint as MC  # noqa: E402

RES = U.Results()
SLOTS = ("mamba.in_proj.weight", "mamba.x_proj.0.weight", "mamba.dt_proj.0.weight", "mamba.out_proj.weight",
         "moe.experts.0.gate_proj.weight", "moe.experts.0.up_proj.weight", "moe.experts.0.down_proj.weight")


def token_file(path, toks):
    with open(path, "wb") as f:
        f.write(b"HYMBATOK" + struct.pack("<IIQII", 1, 2, len(toks), 4096, 0) + np.asarray(toks, np.uint16).tobytes())


def reference_imatrix(folder, toks, ctx):
    """{weight name: (sum2 [cols], rows)} of the float64 reference over the chunks."""
    ref = R.load(folder)
    M = ref.cfg.M
    sums = {}

    def hook(name, w):
        def fwd(x):
            rows = x[..., M:, :].reshape(-1, x.shape[-1])
            s, n = sums.get(name, (0.0, 0))
            sums[name] = (s + (rows * rows).sum(0), n + rows.shape[0])
            return x @ w.t()
        w.hymba_forward = fwd

    for name, w in ref.params.items():
        if name.startswith("model.layers.") and name.split(".", 3)[-1] in SLOTS:
            hook(name, w)
    with torch.no_grad():
        for c in range(len(toks) // ctx):
            chunk = list(toks[c * ctx:(c + 1) * ctx])
            chunk[0] = 1
            ref.forward(np.array([chunk]))
    return {k: (s.numpy(), n) for k, (s, n) in sums.items()}


def weighted_error(x, xq, imp):
    """Per 32-block Σ w·(x - x̂)² of a [rows, cols] matrix (quant.h's weighting), shape [rows, cols/32]."""
    sigma2 = (x * x).mean(1, keepdims=True)
    w = imp[None, :] * np.sqrt(sigma2 + x * x)
    e = w * (x - xq) ** 2
    return e.reshape(x.shape[0], -1, 32).sum(2)


def main():
    work = tempfile.mkdtemp(prefix="hymba-imatrix-")
    try:
        config = json.load(open(os.path.join(U.SRC, "tests", "configs", "tiny-hymba.json")))
        src = os.path.join(work, "tiny")
        MC.make_checkpoint(config, src, "f32", seed=9)
        cfg = R.derive_config(config)
        ctx, chunks = 16, 3
        toks = [int(i) for i in np.random.default_rng(3).integers(3, cfg.V, ctx * chunks + 5)]
        tokf = os.path.join(work, "calib.tok")
        token_file(tokf, toks)
        imf = os.path.join(work, "tiny.imatrix")
        r = U.run(["imatrix", "-m", src, "--tokens", tokf, "-c", str(ctx), "-o", imf, "-t", "2"])
        if not RES.check("hymba imatrix runs", r.returncode == 0 and os.path.exists(imf), r.stderr.strip()[-300:]):
            return RES.finish()

        # 1. The sums against the reference.
        got, meta, dtypes = R.read_safetensors(imf)
        want = reference_imatrix(src, toks, ctx)
        names = sorted(k[:-len(".in_sum2")] for k in got if k.endswith(".in_sum2"))
        RES.check("one entry per linear layer (in_sum2 + counts, F32)",
                  names == sorted(want) and len(got) == 2 * len(want) and set(dtypes.values()) == {"F32"},
                  f"{len(names)} entries, reference {len(want)}")
        bad = []
        for n in names:
            s, c = got[n + ".in_sum2"].astype(np.float64), float(got[n + ".counts"][0])
            ws, wc = want[n]
            err = np.abs(s - ws).max() / max(np.abs(ws).max(), 1e-30)
            if c != wc or err > 1e-4:
                bad.append(f"{n}: counts {c} vs {wc}, rel err {err:.2e}")
        RES.check(f"Σx² and counts equal the float64 reference ({chunks} chunks of {ctx}, meta rows excluded)",
                  not bad and names, "; ".join(bad[:3]))
        RES.check("metadata names the calibration", meta.get("hymba.imatrix.chunks") == str(chunks)
                  and meta.get("hymba.imatrix.chunk_size") == str(ctx) and meta.get("hymba.imatrix.dataset") == tokf,
                  str(meta))

        # 2. quantize --imatrix: the weighted error drops; config.json records it; one rule at load.
        src_t = R.read_checkpoint_tensors(src)
        imp = {n: got[n + ".in_sum2"].astype(np.float64) / float(got[n + ".counts"][0]) for n in names}
        ids = [int(i) for i in np.random.default_rng(4).integers(0, cfg.V, 24)]
        for fmt in ("q4_0", "q4_k"):
            plain, weighted = os.path.join(work, fmt), os.path.join(work, fmt + "-im")
            r0 = U.run(["quantize", "-m", src, "-o", plain, "--type", fmt])
            r1 = U.run(["quantize", "-m", src, "-o", weighted, "--type", fmt, "--imatrix", imf])
            if not RES.check(f"{fmt}: quantize with and without --imatrix runs", r0.returncode == 0 and r1.returncode == 0
                             and "importance matrix" in r1.stdout, (r0.stderr + r1.stderr).strip()[-300:]):
                continue
            t0, m0 = TQ.read_safetensors(os.path.join(plain, "model.safetensors"))
            t1, m1 = TQ.read_safetensors(os.path.join(weighted, "model.safetensors"))
            e0 = e1 = 0.0
            worse_blocks, mats = 0, 0
            for k, (dt, shape, buf) in t1.items():
                if dt != "U8" or k not in imp:
                    continue
                x = np.asarray(src_t[k], np.float64)
                rows, cols = x.shape
                b0 = weighted_error(x, TQ.decode(m0["hymba.quant." + k], t0[k][2], rows, cols), imp[k])
                b1 = weighted_error(x, TQ.decode(m1["hymba.quant." + k], buf, rows, cols), imp[k])
                e0, e1, mats = e0 + b0.sum(), e1 + b1.sum(), mats + 1
                worse_blocks += int((b1 > b0 * (1 + 1e-6) + 1e-12).sum())
            RES.check(f"{fmt}: weighted error with the imatrix < 0.98x without ({mats} matrices)",
                      mats > 0 and e1 < 0.98 * e0, f"{e1:.4e} vs {e0:.4e} ({e1 / max(e0, 1e-300):.3f}x)")
            if fmt == "q4_0":
                RES.check("q4_0: no block has a higher weighted error with the imatrix", worse_blocks == 0,
                          f"{worse_blocks} blocks worse")
            q = json.load(open(os.path.join(weighted, "config.json"))).get("quantization_config", {})
            RES.check(f"{fmt}: config.json records the imatrix",
                      q.get("imatrix", {}).get("file") == os.path.abspath(imf) and q["imatrix"].get("chunks") == str(chunks),
                      str(q))
            l_folder, err = TQ.logits(weighted, ids, work)
            l_load, err2 = TQ.logits(src, ids, work, ["--quantize", fmt, "--imatrix", imf])
            RES.check(f"{fmt}: --quantize --imatrix at load == the folder", l_folder is not None and l_load is not None
                      and np.array_equal(l_folder, l_load), err + err2)

        # 3. --report rows with the imatrix, on the bundled model.
        model = os.path.join(U.SRC, "models", "hymba-kjv")
        held = [int(i) for i in np.random.default_rng(8).integers(3, 4096, 128)]
        heldf, kjv_im = os.path.join(work, "held.tok"), os.path.join(work, "kjv.imatrix")
        token_file(heldf, held)
        r = U.run(["imatrix", "-m", model, "--tokens", tokf, "-c", str(ctx), "-o", kjv_im])
        RES.check("imatrix of the bundled model", r.returncode == 0, r.stderr.strip()[-300:])
        r = U.run(["quantize", "--report", "-m", model, "--tokens", heldf, "--type", "q8_0,q4_0", "-c", "64",
                   "--imatrix", kjv_im, "--json"])
        if RES.check("--report --imatrix runs", r.returncode == 0, r.stderr.strip()[-300:]):
            rows = json.loads(r.stdout)["rows"]
            RES.check("--report: q8_0, q4_0, q4_0+imatrix rows",
                      [(x["type"], x["imatrix"]) for x in rows] == [("q8_0", False), ("q4_0", False), ("q4_0", True)],
                      str([(x["type"], x["imatrix"]) for x in rows]))
            p = U.run(["perplexity", "-m", model, "--tokens", heldf, "-c", "64", "--quantize", "q4_0",
                       "--imatrix", kjv_im, "--json"])
            ok = p.returncode == 0 and len(rows) == 3
            # Within 1e-6: the report's and perplexity's engines sum in different orders; the
            # imatrix moves the PPL by far more (printed).
            RES.check("--report: the +imatrix row's PPL is `hymba perplexity --quantize q4_0 --imatrix`'s",
                      ok and abs(json.loads(p.stdout)["ppl"] - rows[2]["ppl"]) <= 1e-6 * rows[2]["ppl"]
                      and abs(rows[1]["ppl"] - rows[2]["ppl"]) > 1e-4 * rows[2]["ppl"],
                      p.stderr.strip()[-200:] if not ok else
                      f"{rows[2]['ppl']} vs {json.loads(p.stdout)['ppl']} (without the imatrix {rows[1]['ppl']})")

        # 4. Interrupted and resumed, combined: nothing collected is lost.
        long_toks = [int(i) for i in np.random.default_rng(5).integers(3, cfg.V, ctx * 3000)]
        longf, full_f, part_f = os.path.join(work, "long.tok"), os.path.join(work, "full.imatrix"), os.path.join(work, "part.imatrix")
        token_file(longf, long_toks)
        base_args = ["imatrix", "-m", src, "--tokens", longf, "-c", str(ctx), "-t", "1"]
        proc = subprocess.Popen([U.BIN] + base_args + ["-o", part_f, "--output-frequency", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(3000):  # until the first chunk is saved (bounded: 30 s)
            if os.path.exists(part_f) or proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved, smeta, _ = R.read_safetensors(part_f)
        k = int(smeta["hymba.imatrix.chunks"])
        RES.check("killed mid-run: the file holds whole chunks", 1 <= k < 3000 and all(
            float(v[0]) == k * ctx for n, v in saved.items() if n.endswith(".counts")), f"{k} chunks saved")
        r = U.run(base_args + ["-o", part_f, "--resume"])
        r2 = U.run(base_args + ["-o", full_f])
        if RES.check("--resume completes it", r.returncode == 0 and r2.returncode == 0, (r.stderr + r2.stderr).strip()[-300:]):
            a, am, _ = R.read_safetensors(part_f)
            b, bm, _ = R.read_safetensors(full_f)
            err = max(float(np.abs(a[n].astype(np.float64) - b[n]).max() / max(np.abs(b[n]).max(), 1e-30)) for n in b)
            RES.check("resumed == uninterrupted (sums within 1e-5, counts and metadata equal)",
                      a.keys() == b.keys() and err <= 1e-5 and am == bm
                      and all(np.array_equal(a[n], b[n]) for n in b if n.endswith(".counts")), f"rel err {err:.2e}, {am} vs {bm}")
        before = open(full_f, "rb").read()
        refused_keep = U.run(base_args + ["-o", full_f])
        RES.check("Reject an existing -o without --resume (file unchanged)", refused_keep.returncode == 1
                  and "--resume" in refused_keep.stderr and open(full_f, "rb").read() == before, refused_keep.stderr.strip())
        r = U.run(base_args + ["-o", full_f, "--resume"])
        RES.check("Reject resuming a finished run", r.returncode == 1 and "no chunk left" in r.stderr, r.stderr.strip())
        r = U.run(["imatrix", "-m", src, "--tokens", longf, "-c", "32", "-o", full_f, "--resume"])
        RES.check("Reject resuming with another --ctx", r.returncode == 1 and "chunks of 16" in r.stderr, r.stderr.strip())
        comb = os.path.join(work, "comb.imatrix")
        r = U.run(["imatrix", "-m", src, "--tokens", tokf, "-c", str(ctx), "--in-file", imf, "-o", comb])
        if RES.check("--in-file runs", r.returncode == 0, r.stderr.strip()[-300:]):
            c, cm, _ = R.read_safetensors(comb)
            one, _, _ = R.read_safetensors(imf)
            err = max(float(np.abs(c[n] - 2.0 * one[n].astype(np.float64)).max() / max(np.abs(one[n]).max(), 1e-30))
                      for n in one)
            RES.check("--in-file: the same text twice doubles the sums and counts", c.keys() == one.keys()
                      and err <= 1e-6 and cm.get("hymba.imatrix.merged_chunks") == str(chunks), f"rel err {err:.2e}, {cm}")

        # 5. Bad input: one error line, exit 1, no folder.
        def refused(name, args, out, words):
            r = U.run(args)
            ok = r.returncode == 1 and "hymba: error:" in r.stderr and all(w in r.stderr for w in words) \
                and (out is None or not os.path.exists(out))
            RES.check(name, ok, r.stderr.strip()[-240:])

        out = os.path.join(work, "bad")
        refused("Reject an imatrix of another model", ["quantize", "-m", src, "-o", out, "--type", "q4_0",
                                                       "--imatrix", kjv_im], out, ["imatrix"])
        tensors, meta, _ = R.read_safetensors(imf)
        victim = "model.layers.2.mamba.out_proj.weight"
        miss = os.path.join(work, "missing.imatrix")
        R.write_safetensors(miss, {k: v for k, v in tensors.items() if not k.startswith(victim)}, metadata=meta)
        refused("Reject an imatrix missing a matrix", ["quantize", "-m", src, "-o", out, "--type", "q4_k",
                                                       "--imatrix", miss], out, [victim])
        neg = os.path.join(work, "neg.imatrix")
        t2 = dict(tensors)
        t2[victim + ".in_sum2"] = -np.asarray(t2[victim + ".in_sum2"])
        R.write_safetensors(neg, t2, metadata=meta)
        refused("Reject a negative sum", ["quantize", "-m", src, "-o", out, "--type", "q4_0", "--imatrix", neg], out,
                [victim + ".in_sum2"])
        lone = os.path.join(work, "lone.imatrix")
        R.write_safetensors(lone, {k: v for k, v in tensors.items() if k != victim + ".counts"}, metadata=meta)
        refused("Reject an in_sum2 without counts", ["quantize", "-m", src, "-o", out, "--type", "q4_0",
                                                     "--imatrix", lone], out, [victim + ".counts"])
        refused("Reject a missing imatrix file", ["quantize", "-m", src, "-o", out, "--type", "q4_0", "--imatrix",
                                                  os.path.join(work, "nope")], out, ["nope"])
        junk = os.path.join(work, "junk.imatrix")
        open(junk, "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
        refused("Reject a corrupt imatrix file", ["quantize", "-m", src, "-o", out, "--type", "q4_0", "--imatrix",
                                                  junk], out, ["junk.imatrix"])
        refused("Reject --imatrix with q8_0", ["quantize", "-m", src, "-o", out, "--type", "q8_0", "--imatrix", imf],
                out, ["q4_0"])
        refused("Reject imatrix -o a folder", ["imatrix", "-m", src, "--tokens", tokf, "-c", str(ctx), "-o", work],
                None, ["folder"])
        refused("Reject too little calibration text", ["imatrix", "-m", src, "--tokens", tokf, "-c", "4096", "-o",
                                                       os.path.join(work, "x.imatrix")], None, ["fewer than one chunk"])
        RES.check("nothing half-written next to the outputs",
                  not [f for f in os.listdir(work) if ".tmp" in f or f == "x.imatrix"], str(os.listdir(work)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
