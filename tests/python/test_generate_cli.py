"""`hymba generate` / `hymba chat` on the bundled default model (models/hymba-kjv).

- the bundled model loads in the engine and in the float64 reference with matching logits;
- greedy generation is deterministic and equals the argmax chain of `hymba logits` over
  prompt + generated tokens (the decode path agrees with whole-sequence prefill);
- sampling with a seed is reproducible, and different seeds differ;
- --stop cuts the text before the stop string; -n bounds the length; the speed line is printed;
- chat answers several turns from stdin and exits cleanly;
- bad input (empty prompt, bad sampling parameter) is refused with one error line.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.environ.get("HYMBA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ["HYMBA_BIN"]
MODEL = os.path.join(SRC, "models", "hymba-kjv")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

R = U.Results()
check = R.check


def run(args, stdin=None):
    r = subprocess.run([BIN] + args, capture_output=True, text=True, input=stdin, timeout=300)
    return r.returncode, r.stdout, r.stderr


def main():
    tmp = tempfile.mkdtemp(prefix="hymba-gen-")
    prompt = "And God said"

    # Engine vs float64 reference on the shipped weights (bf16 in the file).
    ok, detail = U.logits_vs_reference(MODEL, [1, 400, 30, 2000, 17, 5, 900, 13, 77, 3000] * 3)
    check("bundled model: engine logits vs float64 reference", ok, detail)
    out = os.path.join(tmp, "l.npy")

    # Greedy is deterministic and matches the logits argmax chain.
    n = 24
    args = ["generate", "-m", MODEL, "-p", prompt, "-n", str(n), "--temp", "0", "--no-display-prompt",
            "--cache-type", "f32"]
    rc1, out1, err1 = run(args)
    rc2, out2, _ = run(args)
    check("greedy generate runs", rc1 == 0, err1.strip()[-200:])
    check("greedy generate is deterministic", out1 == out2 and len(out1.strip()) > 0, repr(out1[:80]))
    check("speed line on stderr", "tok/s" in err1, err1.strip()[-200:])
    # The decode path agrees with whole-sequence prefill: each greedy token is the argmax of the
    # logits of prompt + the tokens before it, in the engine and in the float64 reference.
    rc, so, se = run(args + ["--print-token-ids"])
    lines = dict(l.split(": ", 1) for l in se.splitlines() if l.startswith(("prompt ids", "generated ids")))
    p_ids = [int(x) for x in lines.get("prompt ids", "").split(",") if x]
    g_ids = [int(x) for x in lines.get("generated ids", "").split(",") if x]
    check("token ids printed", rc == 0 and p_ids and len(g_ids) == n, f"{len(p_ids)} prompt, {len(g_ids)} generated")
    if p_ids and g_ids:
        seq = p_ids + g_ids[:-1]
        run(["logits", "-m", MODEL, "--ids", ",".join(map(str, seq)), "-o", out])
        eng = np.load(out)
        chain = [int(np.argmax(eng[len(p_ids) - 1 + k])) for k in range(len(g_ids))]
        check("greedy tokens = argmax chain of engine logits", chain == g_ids, f"{chain[:8]} vs {g_ids[:8]}")
        ref = U.reference_logits(MODEL, seq)
        agree = sum(int(np.argmax(ref[len(p_ids) - 1 + k])) == g_ids[k] for k in range(len(g_ids)))
        check("greedy tokens = argmax chain of the float64 reference", agree >= len(g_ids) - 1,
              f"{agree}/{len(g_ids)} agree (one near-tie allowed)")

    # Seeds.
    s = ["generate", "-m", MODEL, "-p", prompt, "-n", "20", "--temp", "1.0", "--no-display-prompt"]
    a = run(s + ["--seed", "7"])[1]
    b = run(s + ["--seed", "7"])[1]
    c = run(s + ["--seed", "8"])[1]
    check("same seed, same text", a == b, repr(a[:60]))
    check("different seed, different text", a != c, repr(c[:60]))

    # Stop strings and length.
    words = out1.split()
    if len(words) >= 3:
        stop = words[2]
        rc, so, se = run(args + ["--stop", stop])
        check("--stop cuts before the stop string", rc == 0 and stop not in so and out1.startswith(so.rstrip("\n")),
              f"stop {stop!r}: {so!r}")
        check("stop reason reported", "stop: stop" in se, se.strip()[-120:])
    rc, so, se = run(["generate", "-m", MODEL, "-p", prompt, "-n", "3", "--temp", "0"])
    check("-n 3 generates 3 tokens", rc == 0 and "generated: 3 tokens" in se, se.strip()[-160:])

    # Chat: two turns from stdin, then EOF.
    rc, so, se = run(["chat", "-m", MODEL, "--temp", "0", "-n", "12"], stdin="Who made the heaven?\nAnd the earth?\n")
    check("chat answers two turns and exits 0", rc == 0 and so.count("> ") >= 2 and se.count("generated") == 2,
          f"exit {rc}, stdout {so[:120]!r}")

    # Bad input.
    for label, a2 in (("empty prompt", ["generate", "-m", MODEL, "-p", ""]),
                      ("negative temperature", ["generate", "-m", MODEL, "-p", "x", "--temp", "-1"]),
                      ("top-p > 1", ["generate", "-m", MODEL, "-p", "x", "--top-p", "2"]),
                      ("bad cache type", ["generate", "-m", MODEL, "-p", "x", "--cache-type", "q3"])):
        rc, so, se = run(a2)
        lines = [x for x in se.splitlines() if x.strip()]
        check(f"bad input: {label}", 0 < rc < 128 and len(lines) == 1 and lines[0].startswith("hymba: error:"),
              f"exit {rc}, {se.strip()[:160]!r}")

    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
