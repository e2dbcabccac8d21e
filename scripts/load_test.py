#!/usr/bin/python3
"""Bounded load test of `hymba server` on loopback: for each client count (default 8, 32, 64),
every client sends --requests completions over its own keep-alive connection; prints p50/p99
latency, throughput, failures (anything but 200 and the documented 503 + Retry-After), and the
server's RSS after a warm-up and at the end. Stops at --max-seconds whatever is left.

  scripts/load_test.py --start                       # starts build/hymba server on the bundled model
  scripts/load_test.py --port 8080 --pid $(pidof hymba) --clients 64 --requests 1000

Exit status 1 if any request failed. Only 127.0.0.1 is ever contacted.
"""
import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

PROMPTS = ["And God said", "In the beginning God created", "The LORD is my shepherd", "And it came to pass",
           "Blessed are the", "Now the serpent was", "Thou shalt not", "And Moses said unto the LORD"]


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return float("nan")


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Client(threading.Thread):
    def __init__(self, port, headers, n, max_tokens, seed, deadline):
        super().__init__(daemon=True)
        self.port, self.headers, self.n, self.max_tokens, self.seed, self.deadline = port, headers, n, max_tokens, seed, deadline
        self.lat, self.failures, self.busy, self.tokens, self.errors = [], 0, 0, 0, []

    def run(self):
        conn = None
        i = 0
        while i < self.n and time.time() < self.deadline:
            body = json.dumps({"prompt": PROMPTS[(self.seed + i) % len(PROMPTS)], "max_tokens": self.max_tokens,
                               "temperature": 0.8, "seed": self.seed * 100003 + i})
            t0 = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                conn.request("POST", "/v1/completions", body=body, headers=self.headers)
                r = conn.getresponse()
                data = r.read()
                if r.status == 200:
                    self.lat.append(time.time() - t0)
                    self.tokens += json.loads(data)["usage"]["completion_tokens"]
                    i += 1
                elif r.status == 503 and r.getheader("Retry-After"):
                    self.busy += 1  # documented: the queue is full; retry later
                    time.sleep(min(float(r.getheader("Retry-After")), 1.0))
                else:
                    self.failures += 1
                    self.errors.append(f"{r.status} {data[:100]!r}")
                    i += 1
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as e:
                self.failures += 1
                self.errors.append(repr(e)[:100])
                i += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


def run_level(args, headers, clients, pid, deadline):
    # Warm-up: one request per client, not measured.
    warm = [Client(args.port, headers, 1, args.max_tokens, 10**6 + k, deadline) for k in range(clients)]
    for c in warm:
        c.start()
    for c in warm:
        c.join()
    rss0 = rss_mib(pid) if pid else float("nan")
    cs = [Client(args.port, headers, args.requests, args.max_tokens, k, deadline) for k in range(clients)]
    t0 = time.time()
    for c in cs:
        c.start()
    for c in cs:
        c.join()
    wall = time.time() - t0
    rss1 = rss_mib(pid) if pid else float("nan")
    lat = [x for c in cs for x in c.lat]
    fails = sum(c.failures for c in cs) + sum(c.failures for c in warm)
    busy = sum(c.busy for c in cs)
    toks = sum(c.tokens for c in cs)
    skipped = clients * args.requests - len(lat) - sum(c.failures for c in cs)
    print(f"clients {clients:3d}: requests {len(lat) + fails} ok {len(lat)} failures {fails} 503s {busy} "
          f"not sent (time limit) {skipped} | latency p50 {pct(lat, 50) * 1e3:.1f} ms p99 {pct(lat, 99) * 1e3:.1f} ms | "
          f"{len(lat) / wall:.1f} req/s {toks / wall:.0f} tok/s in {wall:.1f} s | "
          f"RSS after warm-up {rss0:.1f} MiB, at end {rss1:.1f} MiB", flush=True)
    for e in sorted(set(e for c in cs + warm for e in c.errors))[:5]:
        print("  failure:", e)
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, help="a running server on 127.0.0.1")
    ap.add_argument("--pid", type=int, help="its process id, for RSS")
    ap.add_argument("--start", action="store_true", help="start `hymba server` (build/hymba, bundled model, --port 0)")
    ap.add_argument("--bin", default=os.environ.get("HYMBA_BIN", os.path.join(os.path.dirname(__file__), "..", "build", "hymba")))
    ap.add_argument("--server-args", default="", help="extra flags for --start")
    ap.add_argument("--clients", default="8,32,64")
    ap.add_argument("--requests", type=int, default=100, help="per client (bounded)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long, in total")
    ap.add_argument("--api-key")
    args = ap.parse_args()
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = "Bearer " + args.api_key
    proc = None
    if args.start:
        proc = subprocess.Popen([args.bin, "server", "--port", "0", *args.server_args.split()], stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not m:
            print("server did not start:", line, file=sys.stderr)
            proc.kill()
            return 2
        args.port, args.pid = int(m.group(1)), proc.pid
        threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
        print(line.strip())
    if not args.port:
        ap.error("--port or --start")
    deadline = time.time() + args.max_seconds
    fails = 0
    try:
        print(f"RSS at start {rss_mib(args.pid) if args.pid else float('nan'):.1f} MiB")
        for n in [int(x) for x in args.clients.split(",")]:
            fails += run_level(args, headers, n, args.pid, deadline)
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"total failures {fails}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
