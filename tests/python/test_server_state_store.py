#!/usr/bin/python3
"""`hymba server --state-store redis://...`: two replicas share sequence states through a
redis-server the test starts on a free loopback port (Debian's redis-server, which
scripts/setup.sh installs: without it the test fails).
- a three-turn chat whose turns alternate between replicas A and B gives the same replies as one
  replica without a store (f32 K/V cache, greedy), and B's turn reports cached prompt tokens that
  only A can have processed (restored from Redis; /metrics hymba_state_store_hits_total);
- entries damaged in Redis (every value overwritten) are not used: a fresh replica answers the
  same and reports nothing cached.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib as S  # noqa: E402
import testlib as U  # noqa: E402

RES = U.Results()


def chat(srv, msgs):
    st, j, _ = srv.request("POST", "/v1/chat/completions", dict(messages=msgs, max_tokens=12, temperature=0))
    return (j["choices"][0]["message"]["content"], j["usage"]["prompt_tokens_details"]["cached_tokens"]) if st == 200 else (None, str(j)[:200])


def main():
    redis = S.start_redis(RES)
    if redis is None:
        return RES.finish()
    servers = []
    with redis:
        try:
            url, rport = redis.url, redis.port
            common = ["--cache-type", "f32", "--parallel", "2"]
            a = S.Server("--state-store", url, *common)
            b = S.Server("--state-store", url, *common)
            c = S.Server(*common)
            servers += [a, b, c]
            if not RES.check("replicas start", a.port and b.port and c.port, a.first + b.first + c.first):
                return RES.finish()
            bad = subprocess.run([U.BIN, "server", "--port", "0", "--state-store", f"redis://127.0.0.1:{S.free_port()}"],
                                 capture_output=True, text=True, timeout=60)
            RES.check("Reject an unreachable --state-store: clear error, non-zero exit",
                      bad.returncode != 0 and "cannot connect to redis" in bad.stderr, bad.stderr.strip()[-150:])

            msgs = [{"role": "system", "content": "You answer from the King James Bible, briefly."}]
            qs = ["Who made the heaven and the earth?", "And what moved upon the waters?", "What did God call the light?"]
            same, cached_b = True, 0
            for t, q in enumerate(qs):
                msgs.append({"role": "user", "content": q})
                rep = a if t % 2 == 0 else b
                got, cached = chat(rep, msgs)
                want, _ = chat(c, msgs)
                same &= got is not None and got == want
                if t == 1:
                    cached_b = cached
                print(f"  turn {t + 1} on {'AB'[t % 2]}: cached {cached}: {got!r} (one replica: {want!r})")
                msgs.append({"role": "assistant", "content": got or ""})
            RES.check("chat alternating between replicas equals one replica", same)
            hits = S.metrics(b.port).get("hymba_state_store_hits_total", 0)
            RES.check("turn two on B restores A's state from Redis (cached_tokens > 0)", cached_b > 0 and hits >= 1,
                      f"cached {cached_b}, B's store hits {hits}")

            keys = S.resp(rport, "KEYS", "hymba:*") or []
            for k in keys:
                v = S.resp(rport, "GET", k)
                S.resp(rport, "SET", k, v[:-7] + b"garbage" if v else b"garbage")
            d = S.Server("--state-store", url, *common)
            servers.append(d)
            got, cached = chat(d, msgs[:4])
            want, _ = chat(c, msgs[:4])
            m = S.metrics(d.port)
            RES.check("damaged entries are not used: same reply, nothing cached",
                      got == want and cached == 0 and m.get("hymba_state_store_hits_total", 1) == 0,
                      f"{len(keys)} entries damaged; cached {cached}; {got!r} vs {want!r}")
        finally:
            for s in servers:
                s.stop()
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
