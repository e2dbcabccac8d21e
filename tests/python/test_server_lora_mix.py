#!/usr/bin/python3
"""llama-server's adapter surface on `hymba server` (bundled model, f32 K/V cache): adapters loaded
with --lora get ids in load order; GET /lora-adapters lists id, path, scale; POST /lora-adapters
sets the global scales; a completion's "lora": [{"id", "scale"}, ...] applies one or several
adapters at once. Random PEFT adapters (tests/python/lora_ref.py) A, B (LoRA) and C (DoRA):
- a mix of A and B at given scales gives the prompt log-probabilities of the float64 reference
  with W + uA·sA·BA·AA + uB·sB·BB·AB (the sum of the deltas), and differs from A alone;
- {"id": A, "scale": its load scale} is exactly "model": "A"; scale 0 is off; [] is the base;
- kept prompt states are not shared between mixes (cached_tokens 0), but are within one;
- POST /lora-adapters makes its mix the default of requests that pick nothing;
- an unknown id, a non-list "lora", "lora" with an adapter's "model", a DoRA adapter mixed with
  another are 400s; DoRA alone at another scale works.
"""
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_ref  # noqa: E402
import serverlib as S  # noqa: E402
import testlib as U  # noqa: E402
from lora_ref import hymba_ref  # noqa: E402

RES = U.Results()
ALL = ["in_proj", "x_proj.0", "dt_proj.0", "out_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8.0


def ref_logprobs(model, mix, ids):
    """Reference log p(ids[t] | ids[:t]), t >= 1, with Σ u·s·B·A added to each adapted weight."""
    params = dict(model.params)
    s = lora_ref.scale(RANK, ALPHA)
    for adapter, u in mix:
        for k, A in adapter.items():
            if not k.endswith(".lora_A.weight"):
                continue
            wname = "model.layers." + k[len(lora_ref.PREFIX):-len(".lora_A.weight")] + ".weight"
            B = adapter[k.replace("lora_A", "lora_B")]
            params[wname] = params[wname] + u * s * (torch.tensor(B, dtype=torch.float64) @
                                                     torch.tensor(A, dtype=torch.float64))
    ref = hymba_ref.HymbaReference(model.config, params)
    ref.cfg = model.cfg
    with torch.no_grad():
        lg = ref.forward(np.array([ids]))[0].numpy().astype(np.float64)
    lp = lg - (lg.max(1, keepdims=True) + np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)))
    return np.array([lp[t - 1, ids[t]] for t in range(1, len(ids))])


def server_logprobs(srv, ids, **extra):
    st, j, _ = srv.request("POST", "/v1/completions", dict(prompt=ids, max_tokens=1, temperature=0, echo=True,
                                                           logprobs=0, **extra))
    if st != 200:
        return None, f"{st}: {str(j)[:200]}"
    lp = j["choices"][0]["logprobs"]["token_logprobs"][1:len(ids)]
    return np.array(lp, np.float64), ""


def complete(srv, prompt, **extra):
    st, j, _ = srv.request("POST", "/v1/completions", dict(prompt=prompt, max_tokens=4, temperature=0, **extra))
    if st != 200:
        return st, None, -1, j
    return st, j["choices"][0]["text"], j["usage"]["prompt_tokens_details"]["cached_tokens"], j


def main():
    work = tempfile.mkdtemp(prefix="hymba-srv-lora-mix-")
    try:
        return run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work):
    model = hymba_ref.load(S.MODEL)
    ad, dirs = {}, {}
    for name, dora, seed in (("A", False, 3), ("B", False, 4), ("C", True, 5)):
        ad[name] = lora_ref.random_adapter(model, ALL, RANK, ALPHA, dora, seed)
        dirs[name] = os.path.join(work, name)
        lora_ref.write_peft(dirs[name], ad[name], RANK, ALPHA, dora, ALL)
    ids = [int(x) for x in np.random.default_rng(2).integers(3, model.config["vocab_size"], size=20)]

    srv = S.Server("--parallel", "2", "--cache-type", "f32", "--cache-block", "8",
                   "--lora", f"A={dirs['A']}", "--lora", f"B={dirs['B']}:0.5", "--lora", f"C={dirs['C']}")
    try:
        if not RES.check("server with three adapters starts", srv.port is not None, srv.first.strip()):
            return RES.finish()
        st, j, _ = srv.request("GET", "/lora-adapters")
        RES.check("GET /lora-adapters: ids in load order, paths, global scales (named ones 0 until picked)",
                  st == 200 and [(x["id"], x["path"], x["scale"], x["name"]) for x in j] ==
                  [(0, dirs["A"], 0.0, "A"), (1, dirs["B"], 0.0, "B"), (2, dirs["C"], 0.0, "C")], str(j)[:300])

        mix = [{"id": 0, "scale": 0.7}, {"id": 1, "scale": -0.4}]
        got, err = server_logprobs(srv, ids, lora=mix)
        want = ref_logprobs(model, [(ad["A"], 0.7), (ad["B"], -0.4)], ids)
        only_a = ref_logprobs(model, [(ad["A"], 0.7)], ids)
        RES.check("the mix matters (A+B differs from A alone in the reference)", np.abs(want - only_a).max() > 1e-2,
                  f"{np.abs(want - only_a).max():.2e}")
        if RES.check("\"lora\": [A 0.7, B -0.4] runs", got is not None, err):
            e = np.abs(got - want).max()
            RES.check("A 0.7 + B -0.4 == the float64 reference with the summed deltas (log-probs, 2e-3)",
                      e <= 2e-3, f"max abs err {e:.2e}")
        one, _ = server_logprobs(srv, ids, lora=[{"id": 0, "scale": 1.0}])
        named, _ = server_logprobs(srv, ids, model="A")
        RES.check("\"lora\": [A at its load scale 1] == \"model\": \"A\", exactly",
                  one is not None and named is not None and np.array_equal(one, named), "")
        b_off, _ = server_logprobs(srv, ids, lora=[{"id": 0, "scale": 0}, {"id": 1, "scale": 0.5}])
        b_named, _ = server_logprobs(srv, ids, model="B")
        RES.check("scale 0 is off: [A 0, B 0.5] == \"model\": \"B\" (loaded at 0.5), exactly",
                  b_off is not None and b_named is not None and np.array_equal(b_off, b_named), "")
        base, _ = server_logprobs(srv, ids)
        empty, _ = server_logprobs(srv, ids, lora=[])
        RES.check("\"lora\": [] == no adapter, exactly", base is not None and empty is not None and
                  np.array_equal(base, empty), "")
        if base is not None:
            e = np.abs(base - ref_logprobs(model, [], ids)).max()
            RES.check("no adapter == the reference base", e <= 2e-3, f"max abs err {e:.2e}")
        c_half, err = server_logprobs(srv, ids, lora=[{"id": 2, "scale": 0.5}])
        RES.check("DoRA alone at another scale (0.5) runs and differs from scale 1",
                  c_half is not None and np.abs(c_half - server_logprobs(srv, ids, model="C")[0]).max() > 1e-3, err)

        # Kept states: per mix.
        p = ("And the LORD said unto Moses, Stretch out thine hand over the sea, that the waters may come "
             "again upon the Egyptians")
        _, t1, c1, _ = complete(srv, p, lora=mix)
        _, t2, c2, _ = complete(srv, p, lora=[{"id": 0, "scale": 0.7}, {"id": 1, "scale": -0.3}])
        _, t3, c3, _ = complete(srv, p, lora=mix)
        RES.check("prefix cache: a prompt kept under one mix is not reused under another scale", c1 == 0 and c2 == 0,
                  f"cached {c1}, {c2}")
        RES.check("prefix cache: and is reused under the same mix, with the same answer", c3 > 0 and t3 == t1,
                  f"cached {c3}; {t1!r} {t3!r}")

        # Global scales.
        st, j, _ = srv.request("POST", "/lora-adapters", mix)
        st2, g, _ = srv.request("GET", "/lora-adapters")
        RES.check("POST /lora-adapters: 200, GET shows the scales (unlisted 0)",
                  st == 200 and st2 == 200 and [x["scale"] for x in g] == [0.7, -0.4, 0.0],
                  f"{st} {j} {str(g)[:200]}")
        dflt, _ = server_logprobs(srv, ids)
        RES.check("after POST: a request that picks nothing gets the global mix, exactly",
                  dflt is not None and got is not None and np.array_equal(dflt, got), "")
        named2, _ = server_logprobs(srv, ids, model="A")
        RES.check("after POST: \"model\": \"A\" is still A alone", named2 is not None and np.array_equal(named2, named), "")
        st, j, _ = srv.request("POST", "/lora-adapters", [{"id": 9, "scale": 1}])
        st2, g, _ = srv.request("GET", "/lora-adapters")
        RES.check("Bad POST /lora-adapters with an unknown id: 400, scales unchanged",
                  st == 400 and [x["scale"] for x in g] == [0.7, -0.4, 0.0], f"{st} {str(j)[:160]}")
        srv.request("POST", "/lora-adapters", [])
        back, _ = server_logprobs(srv, ids)
        RES.check("POST [] turns every adapter off: the base again", back is not None and np.array_equal(back, base), "")

        for body, words, what in (
                (dict(lora=[{"id": 7, "scale": 1}]), "invalid adapter id", "an unknown id"),
                (dict(lora={"id": 0, "scale": 1}), "array", "a non-list \"lora\""),
                (dict(lora=[3]), "'id'", "a non-object entry"),
                (dict(lora=[{"id": 0, "scale": 1}], model="A"), "not both", "\"lora\" with an adapter's \"model\""),
                (dict(lora=[{"id": 0, "scale": 1}, {"id": 2, "scale": 1}]), "DoRA", "DoRA mixed with LoRA")):
            st, _, _, j = complete(srv, "x", **body)
            msg = j.get("error", {}).get("message", "") if isinstance(j, dict) else str(j)
            RES.check(f"Bad request: {what}: 400 naming the problem", st == 400 and words in msg, f"{st} {msg[:160]}")
    finally:
        rc = srv.stop()
        RES.check("SIGTERM: exit 0", rc == 0, f"exit {rc}")
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
