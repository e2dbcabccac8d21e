#!/usr/bin/python3
"""`hymba server` (OpenAI-compatible HTTP, continuous batching) on the bundled model, on a free
loopback port, with an f32 K/V cache so that its numbers can be compared exactly:
- a greedy completion equals `hymba generate` with the same prompt;
- several requests of different lengths sent at once (decoded together) each equal their
  result when sent alone;
- streaming (SSE) delivers the same text, then a finish_reason and [DONE];
- `logprobs` + `echo` equal log-softmax of the float64 reference over prompt + completion
  (within 2e-4), and the top-logprobs list holds the best tokens;
- a chat completion equals the completion of the rendered chat template with the chat stop
  strings; the next turn (the whole conversation resent) reuses the kept state of the first
  (usage.prompt_tokens_details.cached_tokens) and still equals `hymba generate` on the rendered
  conversation;
- max_tokens 0 with echo + logprobs scores the prompt only (what evaluation harnesses send);
- bad requests (malformed JSON, missing or empty prompt, bad parameters, ids out of range, bad
  messages) get HTTP 400 with an error object, a client that leaves mid-stream is dropped, and
  the server keeps answering; SIGTERM stops it with exit status 0.
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

sys.path.insert(0, os.path.join(U.SRC, "reference"))
import hymba_ref as R  # noqa: E402

RES = U.Results()
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")
PORT = None


def request(method, path, body=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read().decode()
    c.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw


def complete(prompt, n, **kw):
    st, j = request("POST", "/v1/completions", dict(prompt=prompt, max_tokens=n, temperature=0, **kw))
    return j["choices"][0]["text"] if st == 200 else None, j


def stream(body):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    events = [line[6:] for line in r.read().decode().split("\n") if line.startswith("data: ")]
    c.close()
    return events


def main():
    global PORT
    proc = subprocess.Popen([U.BIN, "server", "-m", MODEL, "--port", "0", "--parallel", "3", "--cache-type", "f32"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not RES.check("server starts and prints its port", m is not None, line.strip()):
            return RES.finish()
        PORT = int(m.group(1))
        threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
        st, j = request("GET", "/health")
        RES.check("/health", st == 200 and j.get("status") == "ok", str(j))

        prompts = ["And God said", "In the beginning God created", "The LORD is my shepherd", "And it came to pass"]
        lens = [24, 7, 15, 31]
        gen = U.run(["generate", "-m", MODEL, "-p", prompts[0], "-n", str(lens[0]), "--temp", "0",
                     "--no-display-prompt", "--cache-type", "f32"])
        text, _ = complete(prompts[0], lens[0])
        RES.check("completion equals `hymba generate`", text is not None and text == gen.stdout.rstrip("\n"),
                  f"{text!r} vs {gen.stdout.rstrip(chr(10))!r}")

        alone = [complete(p, n)[0] for p, n in zip(prompts, lens)]
        together = [None] * len(prompts)

        def worker(i):
            together[i] = complete(prompts[i], lens[i])[0]
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        RES.check("concurrent requests (batched) equal each alone", together == alone and None not in alone,
                  f"{sum(a == b for a, b in zip(alone, together))}/{len(prompts)} equal")

        evs = stream(dict(prompt=prompts[1], max_tokens=lens[1], temperature=0))
        chunks = [json.loads(e) for e in evs if e != "[DONE]"]
        st_text = "".join(c["choices"][0]["text"] for c in chunks)
        RES.check("stream: same text, finish_reason, [DONE]", st_text == alone[1] and evs[-1] == "[DONE]"
                  and chunks[-1]["choices"][0]["finish_reason"] == "length", f"{st_text!r}")

        st, j = request("POST", "/v1/completions", dict(prompt=prompts[2], max_tokens=6, temperature=0, logprobs=3, echo=True))
        ok = st == 200
        if RES.check("logprobs + echo: 200", ok, str(j)[:200]):
            lp = j["choices"][0]["logprobs"]
            _, tj = request("POST", "/tokenize", dict(content=prompts[2], add_special=True))
            ptoks = tj["tokens"]
            n_gen = j["usage"]["completion_tokens"]
            RES.check("logprobs: one entry per prompt + completion token",
                      len(lp["token_logprobs"]) == len(ptoks) + n_gen and lp["token_logprobs"][0] is None,
                      f"{len(lp['token_logprobs'])} vs {len(ptoks)} + {n_gen}")
            # The completion's ids, from the same greedy run in `hymba generate`.
            g = U.run(["generate", "-m", MODEL, "-p", prompts[2], "-n", "6", "--temp", "0", "--cache-type", "f32",
                       "--print-token-ids"])
            m2 = re.search(r"generated ids: ([0-9,]*)", g.stderr)
            gen_ids = [int(x) for x in m2.group(1).split(",")] if m2 else []
            ids = ptoks + gen_ids
            ref = R.load(MODEL)
            with torch.no_grad():
                logp = torch.log_softmax(ref.forward(np.array([ids], dtype=np.int64))[0], dim=-1).numpy()
            want = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
            got = lp["token_logprobs"][1:len(ids)]
            err = max(abs(a - b) for a, b in zip(got, want))
            RES.check("logprobs equal the float64 reference", err <= 2e-4, f"max abs err {err:.2e} over {len(want)} tokens")
            tops_ok = all(abs(max(t.values()) - float(logp[i - 1].max())) <= 2e-4
                          for i, t in enumerate(lp["top_logprobs"][1:len(ids)], start=1))
            RES.check("top_logprobs hold the best token", tops_ok)
            RES.check("greedy tokens are the top-1 of each step",
                      all(max(t, key=t.get) == lp["tokens"][i] for i, t in enumerate(lp["top_logprobs"]) if i >= len(ptoks)))

        msgs = [{"role": "user", "content": "Who made the heaven and the earth?"}]
        st, j = request("POST", "/v1/chat/completions", dict(messages=msgs, max_tokens=20, temperature=0))
        if RES.check("chat completion: 200", st == 200, str(j)[:200]):
            rendered = "<extra_id_0>System\n\n<extra_id_1>User\n" + msgs[0]["content"] + "\n<extra_id_1>Assistant\n"
            _, tj = request("POST", "/tokenize", dict(content=rendered, add_special=False))
            want, _ = complete(tj["tokens"], 20, stop=["</s>", "<extra_id_1>"])
            msg = j["choices"][0]["message"]
            RES.check("chat = completion of the rendered template", msg["role"] == "assistant" and msg["content"] == want,
                      f"{msg['content']!r} vs {want!r}")

            # Turn two: the conversation so far plus a new question.
            msgs2 = msgs + [{"role": "assistant", "content": msg["content"]},
                            {"role": "user", "content": "And the sea?"}]
            st, j2 = request("POST", "/v1/chat/completions", dict(messages=msgs2, max_tokens=16, temperature=0))
            if RES.check("chat turn two: 200", st == 200, str(j2)[:200]):
                cached = j2["usage"]["prompt_tokens_details"]["cached_tokens"]
                RES.check("turn two reuses the first turn's state", cached >= len(tj["tokens"]) - 1,
                          f"{cached} of {j2['usage']['prompt_tokens']} prompt tokens cached")
                r2 = ("<extra_id_0>System\n\n<extra_id_1>User\n" + msgs[0]["content"] + "\n<extra_id_1>Assistant\n" +
                      msg["content"].strip() + "\n<extra_id_1>User\nAnd the sea?\n<extra_id_1>Assistant\n")
                g2 = U.run(["generate", "-m", MODEL, "-p", r2, "--no-bos", "-n", "16", "--temp", "0", "--cache-type", "f32",
                            "--no-display-prompt", "--stop", "</s>", "--stop", "<extra_id_1>"])
                RES.check("turn two equals `hymba generate` on the rendered conversation",
                          j2["choices"][0]["message"]["content"] == g2.stdout.rstrip("\n"),
                          f"{j2['choices'][0]['message']['content']!r} vs {g2.stdout.rstrip(chr(10))!r}")

        st, j = request("POST", "/v1/completions", dict(prompt=prompts[3], max_tokens=0, echo=True, logprobs=1))
        RES.check("max_tokens 0 + echo + logprobs: prompt scored, nothing generated",
                  st == 200 and j["usage"]["completion_tokens"] == 0 and j["choices"][0]["text"] == prompts[3]
                  and len(j["choices"][0]["logprobs"]["token_logprobs"]) == j["usage"]["prompt_tokens"],
                  str(j)[:200])

        bad = [("malformed JSON", "/v1/completions", '{"prompt": '),
               ("missing prompt", "/v1/completions", {"max_tokens": 3}),
               ("empty prompt", "/v1/completions", {"prompt": ""}),
               ("negative temperature", "/v1/completions", {"prompt": "x", "temperature": -1}),
               ("wrong type", "/v1/completions", {"prompt": "x", "max_tokens": "many"}),
               ("id out of range", "/v1/completions", {"prompt": [1, 999999]}),
               ("bad role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}),
               ("no messages", "/v1/chat/completions", {"messages": []})]
        for label, path, body in bad:
            st, j = request("POST", path, body)
            RES.check(f"bad request ({label}): 400 + error", st == 400 and isinstance(j, dict) and "error" in j,
                      f"{st} {str(j)[:120]}")

        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        c.request("POST", "/v1/completions", body=json.dumps(dict(prompt="And", max_tokens=100000, ignore_eos=True,
                                                                  temperature=0, stream=True)))
        r = c.getresponse()
        r.fp.readline()
        c.close()  # leave mid-stream
        t0 = time.time()
        text, _ = complete(prompts[0], lens[0])
        RES.check("after a client left mid-stream the server still answers", text == alone[0],
                  f"{time.time() - t0:.1f} s")
        st, j = request("GET", "/health")
        RES.check("still healthy", st == 200)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        RES.check("SIGTERM stops the server (exit 0)", rc == 0, f"exit {rc}")
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
