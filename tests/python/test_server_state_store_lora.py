#!/usr/bin/python3
"""Shared sequence states (`--state-store redis://...`) with per-request LoRA mixes: two replicas
with the same adapters share one redis-server (started by the test on a free loopback port;
without Debian's redis-server, which scripts/setup.sh installs, the test fails). A state is stored under the adapter mix
that computed it, so:
- a prompt processed on replica A under mix M is restored on replica B under M (cached_tokens > 0,
  B's store hits raised) with the same greedy answer as a replica without a store;
- under another scale, another adapter or no adapter, B restores nothing from A's entry
  (cached_tokens 0) and answers what the store-less replica answers for that mix.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_ref  # noqa: E402
import serverlib as S  # noqa: E402
import testlib as U  # noqa: E402
from lora_ref import hymba_ref  # noqa: E402

RES = U.Results()
TARGETS = ["in_proj", "out_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = ("And the LORD said unto Moses, Stretch out thine hand over the sea, that the waters may come "
          "again upon the Egyptians, upon their chariots, and upon their horsemen.")


def complete(srv, **extra):
    st, j, _ = srv.request("POST", "/v1/completions", dict(prompt=PROMPT, max_tokens=6, temperature=0, **extra))
    if st != 200:
        return None, -1
    return j["choices"][0]["text"], j["usage"]["prompt_tokens_details"]["cached_tokens"]


def main():
    redis = S.start_redis(RES)
    if redis is None:
        return RES.finish()
    work = tempfile.mkdtemp(prefix="hymba-store-lora-")
    servers = []
    with redis:
        try:
            model = hymba_ref.load(S.MODEL)
            dirs = {}
            for name, seed in (("A", 3), ("B", 4)):
                dirs[name] = os.path.join(work, name)
                lora_ref.write_peft(dirs[name], lora_ref.random_adapter(model, TARGETS, 4, 8.0, False, seed),
                                    4, 8.0, False, TARGETS)
            common = ["--cache-type", "f32", "--parallel", "1", "--lora", f"A={dirs['A']}", "--lora", f"B={dirs['B']}"]
            a = S.Server("--state-store", redis.url, *common)
            b = S.Server("--state-store", redis.url, *common)
            ref = S.Server(*common)
            servers += [a, b, ref]
            if not RES.check("replicas start", a.port and b.port and ref.port, a.first + b.first + ref.first):
                return RES.finish()

            mix = [{"id": 0, "scale": 0.8}, {"id": 1, "scale": -0.5}]
            got_a, _ = complete(a, lora=mix)
            RES.check("replica A answers under the mix", got_a is not None)
            others = [("another scale", dict(lora=[{"id": 0, "scale": 0.8}, {"id": 1, "scale": -0.4}])),
                      ("adapter A alone", dict(lora=[{"id": 0, "scale": 0.8}])),
                      ("another adapter by name", dict(model="B")),
                      ("no adapter", dict())]
            for what, extra in others:
                got, cached = complete(b, **extra)
                want, _ = complete(ref, **extra)
                RES.check(f"{what} on B: nothing restored from A's entry, the store-less answer",
                          got is not None and cached == 0 and got == want, f"cached {cached}; {got!r} vs {want!r}")
            hits0 = S.metrics(b.port).get("hymba_state_store_hits_total", 0)
            got, cached = complete(b, lora=mix)
            want, _ = complete(ref, lora=mix)
            hits1 = S.metrics(b.port).get("hymba_state_store_hits_total", 0)
            RES.check("the same mix on B: A's state restored from Redis, the same answer",
                      cached > 0 and hits1 > hits0 and got == want == got_a,
                      f"cached {cached}, hits {hits0} -> {hits1}; {got!r} / {want!r} / {got_a!r}")
            RES.check("Redis holds entries", len(S.resp(redis.port, "KEYS", "hymba:*") or []) > 0)
        finally:
            for s in servers:
                s.stop()
            shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
