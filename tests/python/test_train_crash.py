"""Crash safety of `hymba train`: SIGKILL at random moments, many inside checkpoint writes, then
--resume, again and again. Every resume must start from the last complete checkpoint and the
final losses and weights must equal an uninterrupted run's (issue 11.1: a kill during a later
save used to leave a model that no longer matched train_state.json, and the run was lost)."""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

STEPS = 24


def rows(run_dir):
    return open(os.path.join(run_dir, "metrics.csv")).read().splitlines()[1:]


def losses(run_dir):
    return [(r.split(",")[0], r.split(",")[1], r.split(",")[5]) for r in rows(run_dir)]


def saving(run_dir):
    """A checkpoint is being written: its staging folder, or a temp file of an atomic write."""
    return os.path.isdir(run_dir) and any(n.startswith(".checkpoint-") or (".tmp." in n and "write-test" not in n)
                                           for n in os.listdir(run_dir))


def main():
    R = U.Results()
    work = tempfile.mkdtemp(prefix="hymba-crash-")
    rng = random.Random(int(os.environ.get("HYMBA_CRASH_SEED", "11")))
    try:
        data = U.make_data(work)
        cfg = U.make_config(work)
        common = ["--config", cfg, "--data", data, "--batch", "2", "--seq-len", "24", "--steps", str(STEPS),
                  "--eval-every", "5", "--eval-batches", "1", "--log-every", "1", "--lr", "3e-3",
                  "--threads", "1", "--save-every", "1", "--tokenizer", U.TOKENIZER]
        a = os.path.join(work, "a")
        t0 = time.time()
        r = U.run(["train", "--out", a] + common)
        R.check("uninterrupted run", r.returncode == 0, r.stderr.strip()[-300:])
        full = time.time() - t0

        b = os.path.join(work, "b")
        kills = in_save = resumes = 0
        done = False
        for attempt in range(80):  # bounded: each attempt is one process, killed or finished
            enough = kills >= 12 and in_save >= 4
            started = os.path.exists(os.path.join(b, "latest")) or os.path.exists(os.path.join(b, "train_state.json"))
            args = ["train", "--out", b] + common + (["--resume"] if started else [])
            p = subprocess.Popen([U.BIN] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # Half the kills aim at a checkpoint write (kill a moment after its staging folder
            # appears), half at a random moment.
            aim_save = attempt % 2 == 0
            deadline = time.time() + (600 if enough else 30 if aim_save else rng.uniform(0.05, 0.6))
            killed = False
            while p.poll() is None and time.time() < deadline:
                if not enough and aim_save and saving(b):
                    time.sleep(rng.uniform(0, 0.01))
                    break
                time.sleep(0.001)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                killed = True
            _, err = p.communicate()
            if killed and p.returncode == -signal.SIGKILL:
                kills += 1
                if saving(b):
                    in_save += 1  # killed while a checkpoint was being written
                continue
            if started:
                resumes += 1
            if p.returncode != 0:
                R.check("every resume after a kill succeeds", False, f"attempt {attempt}: {err.strip()[-300:]}")
                break
            done = True
            break
        R.check("the killed run reached the end", done, f"{kills} kills, {resumes} resumes")
        R.check("kills landed inside checkpoint writes", in_save >= 4, f"{in_save} of {kills} kills")
        if done:
            la, lb = losses(a), losses(b)
            R.check("losses equal the uninterrupted run", la == lb and len(la) == STEPS,
                    f"{len(la)} vs {len(lb)} rows; first diff: " +
                    str(next(((x, y) for x, y in zip(la, lb) if x != y), None)))
            same = open(os.path.join(a, "model.safetensors"), "rb").read() == \
                open(os.path.join(b, "model.safetensors"), "rb").read()
            R.check("final weights equal (bytes)", same)
            left = [n for n in os.listdir(b) if ".tmp" in n or n.startswith(".checkpoint-")]
            R.check("no temporaries left behind", not left, str(left))
            cks = [n for n in os.listdir(b) if n.startswith("checkpoint-")]
            R.check("one complete checkpoint kept (default --save-total-limit 1)", cks == [f"checkpoint-{STEPS}"],
                    str(cks))
            r = U.run(["generate", "-m", b, "-p", "And", "-n", "3", "--temp", "0"])
            R.check("the run folder loads as a model", r.returncode == 0, r.stderr.strip()[-200:])
        print(f"# {kills} kills ({in_save} inside a checkpoint write), {resumes} resumes")

        # A run written before checkpoint folders (files directly in OUT) still resumes, and its
        # first new save moves it to the new layout without losing anything.
        c = os.path.join(work, "c")
        r = U.run(["train", "--out", c, "--stop-after", "4"] + common)
        legacy = os.path.join(work, "legacy")
        os.mkdir(legacy)
        for n in os.listdir(c):
            if os.path.isfile(os.path.join(c, n)):
                shutil.copy(os.path.join(c, n), os.path.join(legacy, n))  # follows the links
        r = U.run(["train", "--out", legacy, "--resume"] + common)
        R.check("a run in the old layout resumes", r.returncode == 0, r.stderr.strip()[-300:])
        if r.returncode == 0:
            R.check("... to the same losses", losses(legacy) == losses(a), "")

        # A new run into a folder that holds one is refused (it would replace the user's run).
        before = open(os.path.join(a, "model.safetensors"), "rb").read()
        r = U.run(["train", "--out", a] + common)
        R.check("train without --resume into an existing run is refused",
                r.returncode != 0 and "--resume" in r.stderr, r.stderr.strip()[-200:])
        R.check("... and the run is untouched", open(os.path.join(a, "model.safetensors"), "rb").read() == before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
