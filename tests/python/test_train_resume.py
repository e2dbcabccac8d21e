"""`hymba train`: a run interrupted and resumed gives exactly the losses and weights of an
uninterrupted one; Ctrl-C saves a loadable checkpoint; the outputs (HF checkpoint the engine and
the float64 reference load, metrics.csv, loss.png) are there; --init-from fine-tunes."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import json
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402


def losses(run_dir):
    rows = open(os.path.join(run_dir, "metrics.csv")).read().splitlines()[1:]
    return [(r.split(",")[0], r.split(",")[1], r.split(",")[5]) for r in rows]  # step, loss, val loss


def main():
    R = U.Results()
    work = tempfile.mkdtemp(prefix="hymba-train-")
    try:
        data = U.make_data(work)
        cfg = U.make_config(work)
        common = ["--data", data, "--batch", "2", "--seq-len", "24", "--steps", "12", "--eval-every", "4",
                  "--eval-batches", "2", "--log-every", "1", "--lr", "3e-3", "--threads", "2"]
        a = os.path.join(work, "a")
        r = U.run(["train", "--config", cfg, "--out", a] + common)
        R.check("uninterrupted run", r.returncode == 0, r.stderr.strip()[-300:])
        # A run stopped after step 5 (saves like Ctrl-C), then resumed to the end.
        c = os.path.join(work, "c")
        r = U.run(["train", "--config", cfg, "--out", c, "--stop-after", "5"] + common)
        state = os.path.join(c, "train_state.json")
        step = json.load(open(state))["step"] if os.path.exists(state) else -1
        R.check("stopped run left a step-5 checkpoint", r.returncode == 0 and step == 5, f"step {step}")
        r2 = U.run(["train", "--config", cfg, "--out", c, "--resume"] + common)
        R.check("resume", r2.returncode == 0, r2.stderr.strip()[-300:])
        la, lc = losses(a), losses(c)
        R.check("resumed losses identical to the uninterrupted run", la == lc and len(la) == 12,
                f"{len(la)} vs {len(lc)} rows; first diff: " +
                str(next(((x, y) for x, y in zip(la, lc) if x != y), None)))
        same = open(os.path.join(a, "model.safetensors"), "rb").read() == open(os.path.join(c, "model.safetensors"), "rb").read()
        R.check("resumed weights identical (bytes)", same)

        # Outputs: engine + reference load the checkpoint with matching logits; csv; png.
        ok, detail = U.logits_vs_reference(a, [1, 50, 300, 7, 1000, 42, 9, 3000, 11, 12])
        R.check("trained checkpoint: engine vs float64 reference logits", ok, detail)
        R.check("loss.png written", os.path.getsize(os.path.join(a, "loss.png")) > 1000)
        R.check("validation loss logged", any(v != "-1.000000" for _, _, v in la), str(la[3]))
        R.check("loss decreased", float(la[-1][1]) < float(la[0][1]), f"{la[0][1]} -> {la[-1][1]}")

        # Ctrl-C: SIGINT saves and exits 0 with a loadable checkpoint.
        d = os.path.join(work, "d")
        proc = subprocess.Popen([U.BIN, "train", "--config", cfg, "--out", d, "--data", data, "--batch", "2",
                                 "--seq-len", "24", "--steps", "100000", "--eval-every", "0", "--save-every", "0"],
                                stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        ok = proc.returncode == 0 and os.path.exists(os.path.join(d, "train_state.json"))
        R.check("Ctrl-C saves and exits 0", ok, f"exit {proc.returncode}: {err.strip()[-160:]}")
        if ok:
            ok, detail = U.logits_vs_reference(d, [1, 2, 3])
            R.check("Ctrl-C checkpoint loads (and matches the reference)", ok, detail)

        # Fine-tuning from any HF checkpoint.
        e = os.path.join(work, "e")
        r = U.run(["train", "--init-from", a, "--out", e] + common)
        R.check("--init-from fine-tunes", r.returncode == 0 and losses(e)[0][1] < la[0][1],
                f"first loss {losses(e)[0][1] if r.returncode == 0 else r.stderr.strip()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
