#!/usr/bin/python3
"""`hymba train` on pre-tokenized rows with a completion-only loss (train.jsonl / a .jsonl file):
the first step's loss equals the float64 reference model's mean cross-entropy over the completion
positions only (completion_mask, and transformers-style labels with -100), computed here
independently; `hymba eval --task mqar --make-data --data-format jsonl` writes one sample per row
with the mask on the answers only; bad rows are refused with FILE:ROW and the reason. With
--grad-accum the loss is the mean over the step's targets: 2 micro-batches of 2 rows train as one
batch of the same 4 rows, though the rows hold different numbers of targets."""
import csv
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

RES = U.Results()
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")


def ref_loss(model_dir, ids, counted):
    """Mean -log p(ids[i+1] | ids[:i+1]) over the positions i+1 in `counted`, in float64."""
    lg = np.asarray(U.reference_logits(model_dir, ids), dtype=np.float64)
    lse = np.log(np.exp(lg - lg.max(axis=1, keepdims=True)).sum(axis=1)) + lg.max(axis=1)
    return float(np.mean([lse[i - 1] - lg[i - 1, ids[i]] for i in counted]))


def losses(run):
    return [float(r["loss"]) for r in csv.DictReader(open(os.path.join(run, "metrics.csv")))]


def first_loss(run):
    rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
    return float(rows[0]["loss"])


def main():
    work = tempfile.mkdtemp(prefix="hymba-completion-loss-")
    try:
        cfg = U.make_config(work)
        ids = [1, 17, 250, 3011, 17, 250, 98, 1201, 4000, 98, 1201, 2]
        mask = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
        labels = [-100, -100, -100, 3011, -100, 250, 98, -100, -100, -100, 1201, -100]
        for name, row, counted in (("completion_mask", {"input_ids": ids, "completion_mask": mask}, [5, 10]),
                                   ("labels", {"input_ids": ids, "labels": labels}, [3, 5, 6, 10])):
            data = os.path.join(work, f"{name}.jsonl")
            with open(data, "w") as f:
                f.write(json.dumps(row) + "\n")
            run = os.path.join(work, f"run-{name}")
            # lr 0: the saved model is the one the first step's loss was computed with (the bundled
            # trained model, whose per-position losses differ far more than a random init's)
            r = U.run(["train", "--init-from", MODEL, "--data", data, "--out", run, "--steps", "1", "--batch", "2",
                       "--seq-len", "16", "--lr", "0", "--eval-every", "0", "--save-every", "0", "-t", "1"])
            if not RES.check(f"{name}: trains on one .jsonl file", r.returncode == 0, r.stderr.strip()[-300:]):
                continue
            got, want = first_loss(run), ref_loss(run, ids, counted)
            every = ref_loss(run, ids, range(1, len(ids)))
            RES.check(f"{name}: loss = float64 reference mean over the completion positions only",
                      abs(got - want) < 1e-4 and abs(every - want) > 1e-2, f"{got} vs {want} (all tokens: {every})")
        # Rows with 1 to 9 targets: as 2 micro-batches of 2 (drawn in the order of one batch of 4), the
        # step's loss and gradient are the mean over all 4 rows' targets, not the mean of 2 means.
        data = os.path.join(work, "varied.jsonl")
        with open(data, "w") as f:
            for i in range(12):
                n = 4 + (7 * i) % 9
                k = 1 + (5 * i) % (n - 1)
                f.write(json.dumps({"input_ids": [1] + [(97 * i + 31 * j) % 4000 + 3 for j in range(n - 1)],
                                    "completion_mask": [0] * (n - k) + [1] * k}) + "\n")
        runs = {}
        for batch, accum in ((4, 1), (2, 2)):
            run = os.path.join(work, f"run-b{batch}x{accum}")
            r = U.run(["train", "--config", cfg, "--data", data, "--out", run, "--steps", "3", "--batch", str(batch),
                       "--grad-accum", str(accum), "--seq-len", "16", "--lr", "3e-3", "--eval-every", "0",
                       "--save-every", "0", "-t", "1"])
            runs[accum] = losses(run) if RES.check(f"rows, --batch {batch} --grad-accum {accum}: trains",
                                                   r.returncode == 0, r.stderr.strip()[-300:]) else []
        a, b = runs[1], runs[2]
        # float32 summation order only (as test_train_mpi.py): 1e-4 relative
        RES.check("rows: --batch 2 --grad-accum 2 = --batch 4 (loss per step)",
                  len(a) == len(b) == 3 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a, b)), f"{a} vs {b}")

        # MQAR rows: one sample per row, the mask on the answers only; a folder with train.jsonl trains.
        data = os.path.join(work, "mq")
        r = U.run(["eval", "-m", MODEL, "--task", "mqar", "--make-data", data, "--data-format", "jsonl",
                   "--mqar-pairs", "3", "--mqar-vocab", "20", "--train-samples", "40", "--val-samples", "4"])
        if RES.check("mqar --data-format jsonl: runs", r.returncode == 0, r.stderr.strip()[-300:]):
            rows = [json.loads(x) for x in open(os.path.join(data, "train.jsonl"))]
            ok = len(rows) == 40 and len(open(os.path.join(data, "val.jsonl")).readlines()) == 4
            for row in rows:
                t, m = row["input_ids"], row["completion_mask"]
                keys, vals = t[1:7:2], t[2:7:2]
                ok &= len(t) == len(m) == 14 and t[0] == 1 and t[-1] == 2
                # the mask is 1 exactly on the value after each query key, which is that key's value
                ok &= [i for i, x in enumerate(m) if x] == [8, 10, 12]
                ok &= all(t[i] == vals[keys.index(t[i - 1])] for i in (8, 10, 12))
            RES.check("mqar --data-format jsonl: one sample per row, mask on the answers only", ok)
            run = os.path.join(work, "run-mq")
            r = U.run(["train", "--config", cfg, "--data", data, "--out", run, "--steps", "3", "--batch", "4",
                       "--seq-len", "13", "--eval-every", "3", "--save-every", "0", "-t", "1"])
            RES.check("mqar rows: `hymba train --data DIR` trains and validates on val.jsonl",
                      r.returncode == 0 and "| val " in r.stderr, r.stderr.strip()[-300:])
            RES.refused("mqar rows: a sample longer than --seq-len is refused",
                        ["train", "--config", cfg, "--data", data, "--out", os.path.join(work, "r2"), "--steps", "1",
                         "--seq-len", "12"])
            RES.refused("mqar: unknown --data-format",
                        ["eval", "-m", MODEL, "--task", "mqar", "--make-data", os.path.join(work, "x"), "--data-format", "csv"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
