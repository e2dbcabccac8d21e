#!/usr/bin/python3
"""What per-request adapters cost in `hymba server`: bursts of concurrent greedy completions that all
name the base, all name one adapter, or name the base and every adapter in turn (the scheduler
then runs one batched forward per adapter in each step). Whole bursts as a client sees them,
alternating the three kinds each repetition; prints median/min/max seconds and tokens/s.

  scripts/server_lora_bench.py --lora A=run-a --lora B=run-b      # adapters from `hymba finetune`
"""
import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
os.environ.setdefault("HYMBA_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "hymba"))
import serverlib as S  # noqa: E402

PROMPTS = ["And God said", "In the beginning", "Say verse 3.", "The LORD is my shepherd", "Blessed are the meek",
           "And it came to pass"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=S.MODEL)
    ap.add_argument("--lora", action="append", required=True, help="NAME=DIR[:scale], repeatable")
    ap.add_argument("--requests", type=int, default=6, help="concurrent requests per burst (default 6)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    names = [x.split("=", 1)[0] for x in args.lora]
    base = os.path.basename(os.path.normpath(args.model))
    flags = ["-t", str(args.threads), "--parallel", str(args.requests), "--cache-prompts", "0"]
    for x in args.lora:
        flags += ["--lora", x]
    srv = S.Server(*flags, model=args.model)
    if srv.port is None:
        sys.exit("server did not start: " + srv.first)
    kinds = {"all base": [base], f"all {names[0]}": [names[0]], "base + " + " + ".join(names) + " in turn": [base] + names}
    times = {k: [] for k in kinds}
    tokens = set()

    pool = ThreadPoolExecutor(args.requests)

    def burst(models):
        bodies = [dict(model=models[i % len(models)], prompt=PROMPTS[i % len(PROMPTS)], max_tokens=args.max_tokens,
                       temperature=0) for i in range(args.requests)]
        t0 = time.time()
        out = list(pool.map(lambda b: srv.request("POST", "/v1/completions", b), bodies))
        dt = time.time() - t0
        for st, j, _ in out:
            if st != 200:
                sys.exit(f"request failed: {st} {j}")
            tokens.add(j["usage"]["completion_tokens"])
        return dt
    try:
        burst([base])  # warm-up
        for _ in range(args.repeats):
            for k, models in kinds.items():
                times[k].append(burst(models))
    finally:
        pool.shutdown()
        srv.stop()
    n = args.requests * max(tokens)
    print(f"{args.requests} concurrent requests x {sorted(tokens)} tokens, --parallel {args.requests}, -t {args.threads}")
    ref = statistics.median(times["all base"])
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:32s} median {med:.3f} s (min {min(v):.3f}, max {max(v):.3f})  {n / med:7.0f} tok/s  "
              f"x{med / ref:.2f} of all base")


if __name__ == "__main__":
    main()
