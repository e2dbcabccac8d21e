#!/usr/bin/python3
"""`hymba generate --prompt-cache FILE` on the bundled model (greedy, so outputs are comparable):
- a first run writes the file and generates what a run without the cache generates;
- the same prompt again reuses all but the last prompt token and generates the same tokens;
- a longer prompt that starts with the cached one reuses it, same tokens as without a cache;
- a prompt that does not start with the cached tokens, a damaged file, and a file written with
  other weights (--quantize q8 here) are not used (a note on stderr), the output is still right
  and the file is replaced by a valid one;
- an unwritable cache path is a clear error (exit 1, "hymba: error:");
- a path that is not a prompt cache of ours (model weights, any other file) or lies inside the
  model folder is refused before any work, and the file is untouched (issue 11.2).
"""
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

RES = U.Results()
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")
P1 = "And God said unto Moses, Go down, and speak unto the people, that they"
P2 = P1 + " go out of the land"


def gen(prompt, cache=None, extra=(), model=MODEL):
    args = ["generate", "-m", model, "-p", prompt, "-n", "12", "--temp", "0", "--print-token-ids"]
    if cache:
        args += ["--prompt-cache", cache]
    r = U.run(args + list(extra))
    m = re.search(r"generated ids: ([0-9,]*)", r.stderr)
    return r.returncode, (m.group(1) if m else None), r.stderr


def reused(stderr):
    m = re.search(r"reused (\d+) of (\d+) prompt tokens", stderr)
    return (int(m.group(1)), int(m.group(2))) if m else None


def main():
    work = tempfile.mkdtemp(prefix="hymba-pc-")
    try:
        cache = os.path.join(work, "p.cache")
        base = {p: gen(p)[1] for p in (P1, P2, "In the beginning")}
        RES.check("baseline runs", all(base.values()), str(base))

        rc, ids, err = gen(P1, cache)
        RES.check("first run: writes the cache, same tokens", rc == 0 and ids == base[P1] and os.path.isfile(cache)
                  and "not used: no such file" in err, err.strip()[-200:])
        rc, ids, err = gen(P1, cache)
        u = reused(err)
        RES.check("same prompt: all but the last token reused, same tokens",
                  rc == 0 and ids == base[P1] and u is not None and u[0] == u[1] - 1, f"reused {u}")
        rc, ids, err = gen(P2, cache)
        u = reused(err)
        RES.check("longer prompt: cached prefix reused, same tokens",
                  rc == 0 and ids == base[P2] and u is not None and 0 < u[0] < u[1] - 1, f"reused {u}")
        rc, ids, err = gen("In the beginning", cache)
        RES.check("other prompt: not used, same tokens", rc == 0 and ids == base["In the beginning"]
                  and "not a prefix" in err, err.strip()[-200:])

        with open(cache, "r+b") as f:  # damage it
            f.truncate(os.path.getsize(cache) // 2)
        rc, ids, err = gen(P1, cache)
        RES.check("damaged file: not used, same tokens", rc == 0 and ids == base[P1] and "not used" in err,
                  err.strip().splitlines()[0] if err.strip() else "")
        rc, ids, err = gen(P1, cache)
        RES.check("... and replaced by a valid one", rc == 0 and reused(err) is not None, f"reused {reused(err)}")

        rc, ids, err = gen(P1, cache, ["--quantize", "q8"])
        RES.check("other weights (q8): not used", rc == 0 and "another model" in err, err.strip()[-200:])

        rc, ids, err = gen(P1, os.path.join(work, "missing-dir", "p.cache"))
        RES.check("unwritable cache path: clear error", rc == 1 and "hymba: error:" in err, err.strip()[-200:])

        copy = os.path.join(work, "copy")
        shutil.copytree(MODEL, copy)
        weights = os.path.join(copy, "model.safetensors")
        before = open(weights, "rb").read()
        rc, ids, err = gen(P1, weights, model=copy)
        RES.check("model weights as the cache path: refused", rc == 1 and "hymba: error:" in err, err.strip()[-200:])
        RES.check("... and the model is untouched", open(weights, "rb").read() == before)
        rc, ids, err = gen(P1, os.path.join(copy, "new.cache"), model=copy)
        RES.check("a new file inside the model folder: refused", rc == 1 and "inside the model folder" in err
                  and not os.path.exists(os.path.join(copy, "new.cache")), err.strip()[-200:])
        notes = os.path.join(work, "notes.txt")
        open(notes, "w").write("my notes\n" * 10)
        rc, ids, err = gen(P1, notes)
        RES.check("any other existing file: refused, untouched", rc == 1 and "not a hymba prompt cache" in err
                  and open(notes).read() == "my notes\n" * 10, err.strip()[-200:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
