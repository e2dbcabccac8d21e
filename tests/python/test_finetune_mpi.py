"""`mpirun -np 2 hymba finetune` / `hymba dpo` (data parallel, Open MPI as root as CI runs it): on a
tiny random base model, LoRA SFT (with lora_dropout, whose masks are keyed by the global
micro-batch) and LoRA DPO give the same per-step losses and final adapter tensors as one process
with the same global batch (--grad-accum micro-batches per step), within float32 summation-order
tolerance; full fine-tuning too; a run stopped by 2 ranks resumes in 1 process on the same
schedule; --grad-accum smaller than the ranks is refused on every rank and the job ends. Exits 77
(ctest: skipped) when mpirun or an MPI build is missing."""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402
import test_train_mpi as M  # noqa: E402  (mpirun as root on loopback, the same settings)

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref  # noqa: E402

# Each rank sums its micro-batches' gradients, then MPI sums the ranks: float32 summation order,
# carried forward by AdamW. Losses within 1e-4 relative; tensors within 1e-3 * max|tensor| after
# 4 steps. Looser than `hymba train`'s 1e-4 because lora_B starts at zero, so its scale is
# lr * steps, and Adam's normalised step turns a last-bit difference in an element's near-zero
# gradient into a visible share of that scale (observed: 2e-4 on one element of 640, 3e-6 for full
# fine-tuning; docs/SCALING.md).
LOSS_RTOL, W_RTOL = 1e-4, 1e-3


def losses(run_dir):
    if not os.path.exists(os.path.join(run_dir, "metrics.csv")):
        return []
    rows = open(os.path.join(run_dir, "metrics.csv")).read().splitlines()
    return [(int(r.split(",")[0]), float(r.split(",")[1])) for r in rows[1:]]


def tensors(run_dir):
    for f in ("adapter_model.safetensors", "model.safetensors"):
        p = os.path.join(run_dir, f)
        if os.path.exists(p):
            return {k: np.asarray(v, np.float64) for k, v in hymba_ref.read_safetensors(p)[0].items()}
    return {}


def compare(R, name, a, b):
    la, lb = losses(a), losses(b)
    steps_ok = [s for s, _ in la] == [s for s, _ in lb] and len(la) > 0
    err = max((abs(x - y) / max(abs(x), 1e-6) for (_, x), (_, y) in zip(la, lb)), default=float("inf"))
    R.check(f"{name}: same losses (rel err <= {LOSS_RTOL:g})", steps_ok and err <= LOSS_RTOL,
            f"{len(la)} vs {len(lb)} steps, max rel err {err:.2e}")
    ta, tb = tensors(a), tensors(b)
    worst, bad = 0.0, []
    for k in ta:
        if k not in tb or ta[k].shape != tb[k].shape:
            bad.append(k)
            continue
        rel = float(np.abs(ta[k] - tb[k]).max()) / max(float(np.abs(ta[k]).max()), 1e-30)
        worst = max(worst, rel)
        if rel > W_RTOL:
            bad.append(f"{k} rel {rel:.2e}")
    R.check(f"{name}: same final tensors (max abs err <= {W_RTOL:g} * max|tensor|)",
            len(ta) > 0 and ta.keys() == tb.keys() and not bad, f"{len(ta)} tensors, worst rel {worst:.2e} {bad[:3]}")


def main():
    if not M.MPIRUN:
        print("SKIPPED: mpirun not found (scripts/setup.sh installs openmpi-bin)")
        return 77
    R = U.Results()
    work = tempfile.mkdtemp(prefix="hymba-ft-mpi-")
    try:
        base = os.path.join(work, "base")
        r = U.run(["init", U.make_config(work), "-o", base, "--dtype", "f32", "--seed", "4"])
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        for f in ("tokenizer.model", "tokenizer_config.json"):
            shutil.copy(os.path.join(U.TOKENIZER, f), base)
        sft = os.path.join(work, "sft.jsonl")
        with open(sft, "w") as f:
            for i in range(16):
                f.write(json.dumps({"messages": [
                    {"role": "user", "content": f"Say line {i}."},
                    {"role": "assistant", "content": U.TEXT[i % 3].split("\n")[i % 2][: 20 + 3 * i]}]}) + "\n")
        pairs = os.path.join(work, "dpo.jsonl")
        with open(pairs, "w") as f:
            for i in range(8):
                f.write(json.dumps({"prompt": f"Quote line {i}.", "chosen": U.TEXT[i % 3][: 30 + i],
                                    "rejected": U.TEXT[(i + 1) % 3][: 24 + 2 * i]}) + "\n")
        common = ["-m", base, "--seq-len", "128", "--max-steps", "4", "--grad-accum", "4", "--warmup-steps", "1",
                  "--seed", "3", "-t", "1"]
        cases = [("lora", ["finetune", "--data", sft, "--no-packing", "--method", "lora", "--rank", "4",
                           "--dropout", "0.1", "--lr", "3e-3"] + common),
                 ("dpo lora", ["dpo", "--data", pairs, "--method", "lora", "--rank", "4", "--lr", "3e-3", "--epochs", "2"] + common),
                 ("full", ["finetune", "--data", sft, "--no-packing", "--method", "full", "--lr", "1e-3",
                           "--val-fraction", "0.2"] + common)]
        for name, args in cases:
            one, two = os.path.join(work, name + "-np1"), os.path.join(work, name + "-np2")
            r = U.run(args + ["--out", one])
            if not R.check(f"{name}: one process", r.returncode == 0, r.stderr.strip()[-300:]):
                continue
            r = M.mpirun(2, args + ["--out", two])
            if r.returncode != 0 and "built without MPI" in r.stderr:
                print("SKIPPED: this hymba was built without MPI (install libopenmpi-dev and rebuild)")
                return 77
            R.check(f"{name}: mpirun -np 2", r.returncode == 0 and "data parallel over 2 MPI ranks: 2 micro-batches" in r.stderr
                    and r.stderr.count("step 4/4") == 1, r.stderr.strip()[-400:])
            compare(R, f"{name}: np 2 vs np 1", one, two)
            if name == "dpo lora":
                head = open(os.path.join(two, "metrics.csv")).readline()
                a = [l.split(",")[6:] for l in open(os.path.join(one, "metrics.csv")).read().split()[1:]]
                b = [l.split(",")[6:] for l in open(os.path.join(two, "metrics.csv")).read().split()[1:]]
                err = max(abs(float(x) - float(y)) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
                R.check("dpo lora: np 2's TRL metrics (rewards, accuracies, logps) = np 1's",
                        "rewards/accuracies" in head and len(a) == len(b) == 4 and err <= 1e-3, f"max abs diff {err:.2e}")

        # Stopped at step 2 by 2 ranks, resumed by 1 process: the same run.
        name, args = cases[0]
        c = os.path.join(work, "2then1")
        r1 = M.mpirun(2, args + ["--out", c, "--stop-after", "2"])
        r2 = U.run(args + ["--out", c, "--resume"])
        R.check("lora: np 2 to step 2, resumed with np 1", r1.returncode == 0 and r2.returncode == 0,
                (r1.stderr + r2.stderr).strip()[-300:])
        compare(R, "lora: 2 then 1 vs np 1", os.path.join(work, "lora-np1"), c)

        # More ranks than micro-batches: refused on every rank, no hang.
        bad = list(cases[0][1])
        bad[bad.index("--grad-accum") + 1] = "1"
        r = M.mpirun(2, bad + ["--out", os.path.join(work, "bad")], timeout=120)
        R.check("--grad-accum 1 on 2 ranks refused, job ends",
                r.returncode != 0 and "smaller than the 2 MPI ranks" in r.stderr, f"exit {r.returncode}: {r.stderr.strip()[-200:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
