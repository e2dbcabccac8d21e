#!/usr/bin/python3
"""Restore from --state-store vs re-prefill, per context length (default 512, 2048, 8192 tokens).

Starts a redis-server and two replicas (build/hymba server, bundled model unless --model, loopback
ports). For each length: replica A processes a prompt of that many tokens (max_tokens 1) and keeps
its state in Redis; replica B, which has never seen it, gets the same prompt and restores it. The
times are whole requests as a client sees them; the state size is that of the Redis entry.
"""
import argparse
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
os.environ.setdefault("HYMBA_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "hymba"))
import serverlib as S  # noqa: E402
from serverlib import free_port, resp  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=S.MODEL)
    ap.add_argument("--lengths", default="512,2048,8192")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = []
    try:
        for _ in range(100):
            try:
                if resp(rport, "PING") == "PONG":
                    break
            except OSError:
                time.sleep(0.1)
        flags = ["--state-store", f"redis://127.0.0.1:{rport}", "--ctx-size", str(max(lengths) + 16),
                 "--cache-block", "0", "--parallel", "1"]
        for _ in range(2):
            servers.append(S.Server(*flags, model=args.model))
        a, b = servers
        print(f"{'tokens':>7} {'prefill ms':>11} {'restore ms':>11} {'ratio':>6} {'state MiB':>10}")
        for n in lengths:
            pre, res = [], []
            for r in range(args.repeats):
                ids = [1] + [(7 * i + 13 * r + n) % 3000 + 100 for i in range(n - 1)]  # a new prompt each time
                t0 = time.time()
                st, j, _ = a.request("POST", "/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0}, timeout=600)
                pre.append(time.time() - t0)
                t0 = time.time()
                st2, j2, _ = b.request("POST", "/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0}, timeout=600)
                res.append(time.time() - t0)
                if st != 200 or st2 != 200 or j2["usage"]["prompt_tokens_details"]["cached_tokens"] != n - 1:
                    print("unexpected:", st, st2, str(j2)[:200])
                    return 1
            size = max(resp(rport, "STRLEN", k) for k in resp(rport, "KEYS", f"hymba:*:{n - 1}:*"))
            p, q = sorted(pre)[len(pre) // 2], sorted(res)[len(res) // 2]
            print(f"{n:7d} {p * 1e3:11.1f} {q * 1e3:11.1f} {p / q:6.1f} {size / 2**20:10.2f}", flush=True)
    finally:
        for s in servers:
            s.stop()
        redis.terminate()
        redis.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
