"""Bad input to `hymba tokenize` / `hymba train` gives one clear error line and a non-zero exit
before any work is lost (an existing checkpoint is left untouched)."""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402


def one_error(r):
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("step ")]
    return 0 < r.returncode < 128 and len(lines) >= 1 and lines[-1].startswith("hymba: error:")


def main():
    R = U.Results()
    work = tempfile.mkdtemp(prefix="hymba-train-bad-")
    try:
        data = U.make_data(work, copies=10)
        cfg = U.make_config(work)
        base = ["--data", data, "--batch", "2", "--seq-len", "16", "--steps", "2", "--eval-every", "0"]

        empty = os.path.join(work, "empty")
        os.makedirs(empty)
        open(os.path.join(empty, "a.txt"), "w").close()
        r = U.run(["tokenize", "--tokenizer", U.TOKENIZER, "--input", empty, "--out", os.path.join(work, "t1")])
        R.check("tokenize: empty corpus", one_error(r), r.stderr.strip()[-200:])

        bad = os.path.join(work, "bad")
        os.makedirs(bad)
        with open(os.path.join(bad, "latin1.txt"), "wb") as f:
            f.write(b"caf\xe9 au lait\n")
        r = U.run(["tokenize", "--tokenizer", U.TOKENIZER, "--input", bad, "--out", os.path.join(work, "t2")])
        R.check("tokenize: non-UTF-8 file named", one_error(r) and "latin1.txt" in r.stderr, r.stderr.strip()[-200:])

        c = json.load(open(cfg))
        c["num_key_value_heads"] = 3  # does not divide the heads: the engine refuses it
        badcfg = os.path.join(work, "bad-config.json")
        json.dump(c, open(badcfg, "w"))
        r = U.run(["train", "--config", badcfg, "--out", os.path.join(work, "o1")] + base)
        R.check("train: config the engine refuses", one_error(r) and "num_key_value_heads" in r.stderr,
                r.stderr.strip()[-200:])

        blocker = os.path.join(work, "a-file")
        open(blocker, "w").write("x")
        r = U.run(["train", "--config", cfg, "--out", os.path.join(blocker, "out")] + base)
        R.check("train: unwritable output folder", one_error(r), r.stderr.strip()[-200:])

        # A finished run, then --resume against it with another config: refused, nothing changed.
        good = os.path.join(work, "good")
        r = U.run(["train", "--config", cfg, "--out", good] + base)
        R.check("train: a good run", r.returncode == 0, r.stderr.strip()[-200:])
        before = open(os.path.join(good, "model.safetensors"), "rb").read()
        c2 = json.load(open(cfg))
        c2["sliding_window"] = 5
        other = os.path.join(work, "other.json")
        json.dump(c2, open(other, "w"))
        r = U.run(["train", "--config", other, "--out", good, "--resume"] + base)
        R.check("train: --resume with another config", one_error(r) and "another config" in r.stderr,
                r.stderr.strip()[-200:])
        R.check("train: refused resume leaves the checkpoint untouched",
                open(os.path.join(good, "model.safetensors"), "rb").read() == before)

        r = U.run(["train", "--config", cfg, "--out", os.path.join(work, "nothing"), "--resume"] + base)
        R.check("train: --resume without a checkpoint", one_error(r), r.stderr.strip()[-200:])

        r = U.run(["train", "--config", cfg, "--out", os.path.join(work, "o2"), "--data", os.path.join(work, "nope"),
                   "--steps", "2"])
        R.check("train: missing data", one_error(r), r.stderr.strip()[-200:])

        # Pre-tokenized rows (completion-only loss): a malformed row is named with its line.
        rows = os.path.join(work, "rows.jsonl")
        with open(rows, "w") as f:
            f.write('{"input_ids": [1, 5, 6], "completion_mask": [0, 0, 1]}\n{"input_ids": [1, 5, 6], "completion_mask": [0, 1]}\n')
        r = U.run(["train", "--config", cfg, "--out", os.path.join(work, "o3"), "--data", rows, "--steps", "2"])
        R.check("train: malformed .jsonl row named with FILE:ROW", one_error(r) and "rows.jsonl:2:" in r.stderr
                and "completion_mask" in r.stderr, r.stderr.strip()[-200:])
        shutil.copy(rows, os.path.join(data, "train.jsonl"))
        r = U.run(["train", "--config", cfg, "--out", os.path.join(work, "o4"), "--data", data, "--steps", "2"])
        R.check("train: a folder with both train.tok and train.jsonl", one_error(r) and "both" in r.stderr,
                r.stderr.strip()[-200:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
