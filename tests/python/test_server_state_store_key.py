#!/usr/bin/python3
"""`hymba server --state-store redis://... --state-store-key FILE`: entries carry an HMAC-SHA256
over all their bytes (a redis-server started by the test on a free loopback port; without
Debian's redis-server, which scripts/setup.sh installs, the test fails).
- two replicas with the same key share states: a chat whose turns alternate between them gives
  the same replies as one replica without a store and the second turn reports cached tokens;
- entries the keyed replicas cannot trust are not restored: one with a single flipped byte, one
  written by a replica without a key (a valid unkeyed entry: right checksum, no MAC), one written
  with another key. Each time a fresh keyed replica answers the same tokens as the one-replica
  reference, reports nothing cached and counts the refusals (hymba_state_store_rejected_total);
- bad use is refused: a missing key file, a key shorter than 16 bytes, a key without a store.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib as S  # noqa: E402
import testlib as U  # noqa: E402

RES = U.Results()


def chat(srv, msgs):
    st, j, _ = srv.request("POST", "/v1/chat/completions", dict(messages=msgs, max_tokens=8, temperature=0))
    return (j["choices"][0]["message"]["content"], j["usage"]["prompt_tokens_details"]["cached_tokens"]) if st == 200 else (None, str(j)[:200])


def conversation(system):
    return [{"role": "system", "content": system}, {"role": "user", "content": "Who made the heaven and the earth?"}]


def main():
    redis = S.start_redis(RES)
    if redis is None:
        return RES.finish()
    work = tempfile.mkdtemp(prefix="hymba-key-")
    k1, k2, short = (os.path.join(work, n) for n in ("k1", "k2", "short"))
    open(k1, "w").write("6f1c0e5b2a9d47c3b8e1f0a2d4c6b8e0\n")
    open(k2, "w").write("0b7e3a9c5d1f4e2a8c6b0d9e7f1a3c5b\n")
    open(short, "w").write("tooshort\n")
    servers = []
    with redis:
        try:
            url, rport = redis.url, redis.port
            common = ["--cache-type", "f32", "--parallel", "1"]
            a = S.Server("--state-store", url, "--state-store-key", k1, *common)
            b = S.Server("--state-store", url, "--state-store-key", k1, *common)
            ref = S.Server(*common)
            servers += [a, b, ref]
            if not RES.check("replicas start", a.port and b.port and ref.port, a.first + b.first + ref.first):
                return RES.finish()
            for name, args, why in [
                    ("a missing key file", ["--state-store", url, "--state-store-key", os.path.join(work, "none")], "--state-store-key"),
                    ("a key shorter than 16 bytes", ["--state-store", url, "--state-store-key", short], "at least 16"),
                    ("a key without --state-store", ["--state-store-key", k1], "needs --state-store")]:
                r = subprocess.run([U.BIN, "server", "--port", "0"] + args, capture_output=True, text=True, timeout=60)
                RES.check(f"Reject {name}: clear error, non-zero exit", r.returncode != 0 and why in r.stderr,
                          r.stderr.strip()[-150:])

            # Same key: turn 1 on A, turn 2 on B restores A's state.
            msgs = conversation("You answer from the King James Bible, briefly.")
            got1, _ = chat(a, msgs)
            want1, _ = chat(ref, msgs)
            msgs += [{"role": "assistant", "content": got1 or ""}, {"role": "user", "content": "And what moved upon the waters?"}]
            got2, cached = chat(b, msgs)
            want2, _ = chat(ref, msgs)
            hits = S.metrics(b.port).get("hymba_state_store_hits_total", 0)
            RES.check("same key: B continues A's chat from Redis with the same replies",
                      got1 == want1 and got2 == want2 and cached > 0 and hits >= 1,
                      f"cached {cached}, hits {hits}: {got1!r}/{want1!r}, {got2!r}/{want2!r}")

            def refused(name, msgs, damage=None):
                if damage:
                    damage()
                d = S.Server("--state-store", url, "--state-store-key", k1, *common)
                servers.append(d)
                got, cached = chat(d, msgs)
                want, _ = chat(ref, msgs)
                m = S.metrics(d.port)
                RES.check(f"{name}: not restored, same reply as one replica",
                          got is not None and got == want and cached == 0 and m.get("hymba_state_store_hits_total", 1) == 0
                          and m.get("hymba_state_store_rejected_total", 0) >= 1,
                          f"cached {cached}, rejected {m.get('hymba_state_store_rejected_total')}: {got!r} vs {want!r}")
                d.stop()

            def flip_one_byte():
                for k in S.resp(rport, "KEYS", "hymba:*") or []:
                    v = bytearray(S.resp(rport, "GET", k))
                    v[len(v) // 2] ^= 0x01  # in the state bytes: the MAC, not the checksum's domain, catches it
                    S.resp(rport, "SET", k, bytes(v))
            refused("an entry with one flipped byte", msgs, flip_one_byte)

            # Entries written by a replica without a key, and by one with another key.
            for name, args in [("an entry written without the key", []), ("an entry written with another key", ["--state-store-key", k2])]:
                S.resp(rport, "FLUSHALL")
                w = S.Server("--state-store", url, *args, *common)
                servers.append(w)
                m2 = conversation("You answer briefly. " + name)
                first, _ = chat(w, m2)
                w.stop()
                n = len(S.resp(rport, "KEYS", "hymba:*") or [])
                m2 += [{"role": "assistant", "content": first or ""}, {"role": "user", "content": "And then?"}]
                if RES.check(f"{name}: the writer stored entries", n > 0, f"{n} keys"):
                    refused(name, m2)
        finally:
            for s in servers:
                s.stop()
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
