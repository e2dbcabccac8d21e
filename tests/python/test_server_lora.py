#!/usr/bin/python3
"""`hymba server --lora NAME=DIR[:scale]`: several PEFT adapters over one base, picked per request
by "model" (bundled model, f32 K/V cache, greedy). Two small adapters are trained here with
`hymba finetune` (a LoRA and a DoRA one, on different answers, so the three models disagree):
- /v1/models lists the base and both adapters;
- a completion through each adapter equals `hymba generate --lora DIR[:scale]`, the base name (or
  no "model") equals `hymba generate` without adapters, token for token;
- concurrent requests with different adapters in flight together still equal those;
- a prompt kept under adapter A is not reused for adapter B (usage cached_tokens 0, and B's answer
  is B's), while A reuses it;
- with --state-store, a state stored under A by one replica is restored under A by another, never
  under B (Debian's redis-server, which setup.sh installs);
- an unknown model name is a 404 naming the served models; bad --lora values are refused at start;
- a plain `--lora DIR` (no name) still applies to every request.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib as S  # noqa: E402
import testlib as U  # noqa: E402

RES = U.Results()
LONG = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. And God said") 
PROMPTS = ["And God said", "Say verse 3.", LONG]


def make_adapter(work, name, method, answer, seed):
    data = os.path.join(work, name + ".jsonl")
    with open(data, "w") as f:
        for i in range(8):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Say verse {i}."},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    out = os.path.join(work, name)
    r = U.run(["finetune", "-m", S.MODEL, "--data", data, "--out", out, "--method", method, "--rank", "4",
               "--max-steps", "6", "--lr", "1e-2", "--seq-len", "96", "-t", "1", "--warmup-steps", "1",
               "--seed", str(seed)])
    RES.check(f"finetune {method} adapter {name}", r.returncode == 0, r.stderr.strip()[-200:])
    return out


def generate(prompt, n, *extra):
    r = U.run(["generate", "-m", S.MODEL, "-p", prompt, "-n", str(n), "--temp", "0", "--cache-type", "f32",
               "--no-display-prompt", *extra])
    return r.stdout.rstrip("\n") if r.returncode == 0 else f"<generate failed: {r.stderr.strip()[-200:]}>"


def complete(srv, prompt, model, n=12):
    body = dict(prompt=prompt, max_tokens=n, temperature=0)
    if model is not None:
        body["model"] = model
    st, j, _ = srv.request("POST", "/v1/completions", body)
    if st != 200:
        return st, f"<{st}: {str(j)[:200]}>", -1, None
    return st, j["choices"][0]["text"], j["usage"]["prompt_tokens_details"]["cached_tokens"], j["model"]


def state_store(a, b):
    """Two replicas with the same adapters sharing --state-store: a state stored under A by one is
    restored under A by the other, never under B."""
    redis = S.start_redis(RES)
    if redis is None:
        return
    servers = []
    with redis:
        try:
            flags = ["--cache-type", "f32", "--cache-block", "16", "--state-store", redis.url,
                     "--lora", f"A={a}", "--lora", f"B={b}:0.5"]
            servers = [S.Server(*flags), S.Server(*flags)]
            if not RES.check("two replicas with adapters and --state-store start", all(x.port for x in servers),
                             "".join(x.first for x in servers)[-200:]):
                return
            p = ("The sons of Ham; Cush, and Mizraim, and Phut, and Canaan. And the sons of Cush; Seba, and Havilah, "
                 "and Sabtah, and Raamah, and Sabtechah: and the sons of Raamah")
            _, t1, c1, _ = complete(servers[0], p, "A")
            _, t2, c2, _ = complete(servers[1], p, "B")
            h2 = S.metrics(servers[1].port).get("hymba_state_store_hits_total", -1)
            _, t3, c3, _ = complete(servers[1], p, "A")
            h3 = S.metrics(servers[1].port).get("hymba_state_store_hits_total", -1)
            RES.check("--state-store: A's stored states are not restored under B on the other replica",
                      c1 == 0 and c2 == 0 and h2 == 0 and t2 == generate(p, 12, "--lora", b + ":0.5"),
                      f"cached {c1}, {c2}; store hits {h2}; {t2!r}")
            RES.check("--state-store: and are restored under A there, with A's answer",
                      c3 > 0 and h3 == 1 and t3 == t1 == generate(p, 12, "--lora", a), f"cached {c3}; hits {h3}; {t1!r} {t3!r}")
        finally:
            for x in servers:
                x.stop()

def main():
    work = tempfile.mkdtemp(prefix="hymba-srv-lora-")
    try:
        return run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work):
    a = make_adapter(work, "a", "lora", "Amen, amen, I say unto thee.", 3)
    b = make_adapter(work, "b", "dora", "Behold the Lamb of God.", 5)
    if RES.failed:
        return RES.finish()
    # What each model answers, from the CLI (the oracle for the server).
    want = {}
    for p in PROMPTS:
        want[(None, p)] = generate(p, 12)
        want[("A", p)] = generate(p, 12, "--lora", a)
        want[("B", p)] = generate(p, 12, "--lora", b + ":0.5")
    answers = {m: tuple(want[(m, p)] for p in PROMPTS) for m in (None, "A", "B")}
    RES.check("the three models answer differently (else the test proves nothing)",
              len(set(answers.values())) == 3, str(answers)[:300])

    srv = S.Server("--parallel", "4", "--cache-type", "f32", "--cache-block", "16",
                   "--lora", f"A={a}", "--lora", f"B={b}:0.5")
    try:
        if not RES.check("server with two named adapters starts", srv.port is not None, srv.first.strip()):
            return RES.finish()
        st, j, _ = srv.request("GET", "/v1/models")
        ids = [m["id"] for m in j.get("data", [])] if st == 200 else []
        RES.check("/v1/models lists the base and both adapters", ids == ["hymba-kjv", "A", "B"] and
                  j["data"][1].get("parent") == "hymba-kjv", str(ids))

        # Sequential, each model in turn; the response names the model that answered.
        got, names = {}, {}
        for p in PROMPTS:
            for m in ("hymba-kjv", "A", "B"):
                _, got[(m, p)], _, names[(m, p)] = complete(srv, p, m)
        key = lambda m: None if m == "hymba-kjv" else m  # noqa: E731
        for m in ("hymba-kjv", "A", "B"):
            bad = [(p, got[(m, p)], want[(key(m), p)]) for p in PROMPTS if got[(m, p)] != want[(key(m), p)]]
            RES.check(f"model {m}: equals `hymba generate`{'' if m == 'hymba-kjv' else ' --lora'} token for token",
                      not bad, str(bad)[:300])
        RES.check("responses name the model that answered",
                  all(names[(m, p)] == m for m in ("hymba-kjv", "A", "B") for p in PROMPTS), str(set(names.values())))
        _, t, _, _ = complete(srv, PROMPTS[0], None)
        RES.check("no \"model\": the base", t == want[(None, PROMPTS[0])], t)

        # Concurrent: the three models' requests in flight together (4 parallel slots, 9 requests).
        jobs = [(m, p) for p in PROMPTS for m in ("B", "hymba-kjv", "A")]
        out = {}

        def one(i, m, p):
            out[i] = complete(srv, p, m, 12)[1]
        ts = [threading.Thread(target=one, args=(i, m, p)) for i, (m, p) in enumerate(jobs)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=300)
        bad = [(m, p, out.get(i), want[(key(m), p)]) for i, (m, p) in enumerate(jobs) if out.get(i) != want[(key(m), p)]]
        RES.check("9 concurrent requests over 3 models: each equals its model's `hymba generate`", not bad, str(bad)[:300])

        # Prefix cache: a fresh long prompt kept under A must not serve B, and must serve A again.
        fresh = ("Now these are the generations of the sons of Noah, Shem, Ham, and Japheth: and unto them were "
                 "sons born after the flood. The sons of Japheth; Gomer, and Magog, and Madai, and Javan, and")
        before = S.metrics(srv.port).get("hymba_prefix_cache_hits_total", 0)
        _, ta, ca, _ = complete(srv, fresh, "A")
        _, tb, cb, _ = complete(srv, fresh, "B")
        _, ta2, ca2, _ = complete(srv, fresh, "A")
        hits = S.metrics(srv.port).get("hymba_prefix_cache_hits_total", 0) - before
        RES.check("a prompt first seen under A: nothing cached", ca == 0, f"cached {ca}")
        RES.check("the same prompt under B: A's kept states are not reused", cb == 0, f"cached {cb}")
        RES.check("the same prompt under A again: reused", ca2 > 0, f"cached {ca2}")
        RES.check("/metrics: one prefix-cache hit among the three", hits == 1, f"{hits} hits")
        m = S.metrics(srv.port)
        per = {k: m.get(f'hymba_model_requests_total{{model="{k}"}}', 0) for k in ("hymba-kjv", "A", "B")}
        RES.check("/metrics counts completions per model", per == {"hymba-kjv": 7, "A": 8, "B": 7}, str(per))
        RES.check("under B it answers as B, under A as A",
                  tb == generate(fresh, 12, "--lora", b + ":0.5") and ta == ta2 == generate(fresh, 12, "--lora", a),
                  str([ta, tb, ta2]))

        # Chat goes through the same selection.
        st, j, _ = srv.request("POST", "/v1/chat/completions", dict(
            model="A", messages=[{"role": "user", "content": "Say verse 2."}], max_tokens=10, temperature=0))
        rendered = "<extra_id_1>User\nSay verse 2.\n<extra_id_1>Assistant\n"
        RES.check("chat with model A equals `generate --lora` on the rendered conversation",
                  st == 200 and j["choices"][0]["message"]["content"] ==
                  generate(rendered, 10, "--lora", a, "--no-bos", "--stop", "</s>", "--stop", "<extra_id_1>"),
                  str(j)[:200])

        st, j, _ = srv.request("POST", "/v1/completions", dict(prompt="x", max_tokens=2, model="C"))
        msg = j.get("error", {}).get("message", "") if isinstance(j, dict) else str(j)
        RES.check("unknown model: 404 naming the served models", st == 404 and "'C'" in msg and "A, B" in msg, f"{st} {msg}")
        st, j, _ = srv.request("POST", "/v1/completions", dict(prompt="x", max_tokens=2, model=7))
        RES.check("a non-string model: 400", st == 400 and "'model'" in str(j), f"{st} {str(j)[:120]}")
    finally:
        rc = srv.stop()
        RES.check("SIGTERM: exit 0", rc == 0, f"exit {rc}")

    # A plain --lora (no name) still applies to every request, whatever "model" says.
    srv = S.Server("--cache-type", "f32", "--lora", a)
    try:
        ok = srv.port is not None
        t1 = complete(srv, PROMPTS[0], "anything")[1] if ok else None
        RES.check("plain --lora DIR: applied to every request (any model name)",
                  ok and t1 == want[("A", PROMPTS[0])], f"{t1!r} vs {want[('A', PROMPTS[0])]!r}")
    finally:
        srv.stop()

    state_store(a, b)

    for args, words in [(["--lora", f"A={work}/missing"], "adapter_config.json"),
                        (["--lora", f"A={a}", "--lora", f"A={b}"], "given twice"),
                        (["--lora", a, "--lora", b], "at most one adapter without a name"),
                        (["--lora", f"hymba-kjv={a}"], "base model")]:
        try:  # a server that starts anyway would never exit by itself
            r = subprocess.run([U.BIN, "server", "-m", S.MODEL, "--port", "0", *args], capture_output=True,
                               text=True, timeout=60)
            ok, err = r.returncode != 0 and words in r.stderr, r.stderr.strip()[-160:]
        except subprocess.TimeoutExpired:
            ok, err = False, "it started"
        RES.check(f"bad --lora {' '.join(args)[-40:]}: refused at start", ok, err)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
