#!/usr/bin/python3
"""The other way to evaluate: `lm_eval --model local-completions` against `hymba server`.

Sends the exact payloads lm-evaluation-harness v0.4.x's LocalCompletionsAPI sends (tokenized
requests: a batch of token-id lists with echo, logprobs 1, max_tokens 1, temperature 0, seed;
generation with max_tokens, stop = until + EOS text), parses the responses with the harness's
parse_logprobs / parse_generations (in reference/lm_eval_ref.py), and compares them with what
`hymba eval` computed for the same requests (its --log-samples): loglikelihoods within 1e-4,
the same greedy flags, the same generated text.
"""
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import lm_eval_ref as L  # noqa: E402

RES = U.Results()
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")
DATA = os.path.join(U.SRC, "tests", "data", "eval")


def post(port, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read().decode()
    c.close()
    return r.status, json.loads(raw)


def samples(task):
    out = os.path.join(tempfile.mkdtemp(prefix="hymba-evsrv-"), "s.jsonl")
    r = U.run(["eval", "-m", MODEL, "--task", task, "--data", os.path.join(DATA, task + ".jsonl"), "--log-samples", out])
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-300:])
    return [json.loads(x) for x in open(out)]


def main():
    proc = subprocess.Popen([U.BIN, "server", "-m", MODEL, "--port", "0", "--parallel", "4", "--cache-type", "f32"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not RES.check("server starts", m is not None, line.strip()):
            return RES.finish()
        port = int(m.group(1))
        threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
        for task in ("hellaswag", "lambada_openai"):
            worst, greedy_bad, shape_ok, n = 0.0, 0, True, 0
            for s in samples(task):
                reqs = [c + k for c, k in s["tokens"]]
                ctxlens = [len(c) for c, _ in s["tokens"]]
                st, out = post(port, L.local_completions_payload(reqs))
                shape_ok &= st == 200 and len(out.get("choices", [])) == len(reqs)
                if st != 200:
                    break
                for (ll, greedy), (want_ll, want_greedy) in zip(L.parse_logprobs(out, ctxlens), s["resps"]):
                    worst = max(worst, abs(ll - want_ll) / max(1.0, abs(want_ll)))
                    greedy_bad += greedy != want_greedy
                    n += 1
            RES.check(f"{task}: batched token-id prompts with echo + logprobs answered per prompt", shape_ok)
            RES.check(f"{task}: server loglikelihoods (parse_logprobs) = hymba eval", worst <= 1e-4 and n > 0,
                      f"{n} requests, max rel diff {worst:.1e}")
            RES.check(f"{task}: greedy flags from top_logprobs = hymba eval", greedy_bad == 0, f"{greedy_bad} differ")
        got_ok, n = True, 0
        for s in samples("swde"):
            ctx = s["tokens"][0][0]
            st, out = post(port, L.local_completions_payload([ctx], generate=True, max_gen_toks=48, until=["\n"], eos="</s>"))
            text = L.parse_generations(out)[0] if st == 200 else None
            got_ok &= text is not None and text.lstrip(" ") == s["resps"][0][0].lstrip(" ")
            n += 1
        RES.check("swde: generate_until through the server = hymba eval's greedy continuation", got_ok and n > 0, f"{n} documents")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
