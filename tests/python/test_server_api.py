#!/usr/bin/python3
"""OpenAI / lm-eval compatibility of `hymba server` on the bundled model (f32 K/V cache, greedy):
- token ids are range-checked before narrowing (4294967746 is not 450), as are integer fields;
- echo + logprobs: text_offset indexes the returned text exactly (characters, <s> adds nothing);
- lists of prompts (token-id lists or strings, as lm-eval's local-completions sends) give one
  choice per prompt with its index, each equal to the prompt sent alone (also streamed);
- stream_options.include_usage sends a final usage chunk; n > 1 gives n choices (different
  samples when sampling); logit_bias changes the sampled tokens; unsupported parameters
  (presence_penalty, best_of, suffix) are refused, never ignored;
- chat content as a list of {"type": "text"} parts equals the same text as a string;
- 404 and 413 replies carry an OpenAI-style error body.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib as S  # noqa: E402
import testlib as U  # noqa: E402

RES = U.Results()


def main():
    srv = S.Server("--parallel", "4", "--cache-type", "f32", "--max-body", "4096")
    try:
        if not RES.check("server starts", srv.port is not None, srv.first.strip()):
            return RES.finish()

        def comp(**body):
            st, j, _ = srv.request("POST", "/v1/completions", dict(dict(temperature=0), **body))
            return st, j

        # Item 6: ids range-checked before narrowing.
        for label, body in [("id 2^32+450", {"prompt": [1, 4294967746]}), ("negative id", {"prompt": [1, -3]}),
                            ("fractional id", {"prompt": [1, 450.5]}), ("id list in a list", {"prompt": [[1, 2**40]]}),
                            ("top_k beyond int32", {"prompt": "x", "top_k": 4294967297}),
                            ("logit_bias id out of range", {"prompt": "x", "logit_bias": {"4294967746": 5}})]:
            st, j = comp(max_tokens=2, **body)
            RES.check(f"Reject {label}: 400 + error", st == 400 and "error" in j, f"{st} {str(j)[:120]}")
        st, j, _ = srv.request("POST", "/detokenize", {"tokens": [1, 4294967746]})
        RES.check("Reject detokenize id 2^32+450: 400", st == 400 and "error" in j, f"{st} {str(j)[:100]}")

        # Item 8: text_offset indexes the returned text.
        st, j = comp(prompt="And God said, Let there be light", max_tokens=8, echo=True, logprobs=1)
        if RES.check("echo + logprobs: 200", st == 200, str(j)[:200]):
            ch = j["choices"][0]
            text, lp = ch["text"], ch["logprobs"]
            offs, toks = lp["text_offset"], lp["tokens"]
            mono = all(0 <= a <= b <= len(text) for a, b in zip(offs, offs[1:] + [len(text)]))
            # Every token after the first text piece (whose dummy-prefix space is dropped) is the
            # text at its offset; <s> adds nothing.
            at = all(text[offs[i]:offs[i] + len(toks[i])] == toks[i] for i in range(2, len(toks)))
            RES.check("text_offset: <s> at 0 adds nothing, offsets index the text exactly",
                      toks[0] == "<s>" and offs[:2] == [0, 0] and mono and at and text.startswith("And God said"),
                      f"offsets {offs[:6]}... tokens {toks[:4]}")
            n_prompt = j["usage"]["prompt_tokens"]
            st2, j2 = comp(prompt="And God said, Let there be light", max_tokens=8)
            RES.check("the completion starts at the offset of its first token",
                      st2 == 200 and offs[n_prompt] == len("And God said, Let there be light")
                      and text[offs[n_prompt]:] == j2["choices"][0]["text"], f"{offs[n_prompt]}")

        # Item 7: lists of prompts.
        _, tk, _ = srv.request("POST", "/tokenize", {"content": "In the beginning", "add_special": True})
        ids = tk["tokens"]
        single = [comp(prompt=ids, max_tokens=6)[1], comp(prompt="The LORD is", max_tokens=6)[1]]
        st, j = comp(prompt=[ids, [1, 450, 1000, 20]], max_tokens=6)
        RES.check("prompt as a list of token-id lists: one choice per prompt, index set",
                  st == 200 and [c["index"] for c in j["choices"]] == [0, 1]
                  and j["choices"][0]["text"] == single[0]["choices"][0]["text"], str(j)[:200])
        st, j = comp(prompt=["In the beginning", "The LORD is"], max_tokens=6)
        RES.check("prompt as a list of strings: each equals its prompt alone",
                  st == 200 and [c["text"] for c in j["choices"]] == [s["choices"][0]["text"] for s in single]
                  and j["usage"]["prompt_tokens"] == sum(s["usage"]["prompt_tokens"] for s in single), str(j)[:200])
        st, j = comp(prompt=[ids, ids[:3]], max_tokens=0, echo=True, logprobs=0)  # lm-eval loglikelihood
        alone = comp(prompt=ids[:3], max_tokens=0, echo=True, logprobs=0)[1]
        RES.check("batched scoring (max_tokens 0, echo, logprobs) equals each alone",
                  st == 200 and j["choices"][1]["logprobs"]["token_logprobs"] == alone["choices"][0]["logprobs"]["token_logprobs"],
                  str(j)[:200])
        evs = S.sse(srv.port, "/v1/completions", dict(prompt=["In the beginning", "The LORD is"], max_tokens=6, temperature=0))
        chunks = [json.loads(e) for e in evs if e != "[DONE]"]
        texts = ["".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in (0, 1)]
        RES.check("streamed list of prompts: each index's text equals its prompt alone",
                  texts == [s["choices"][0]["text"] for s in single] and evs[-1] == "[DONE]", str(texts))

        # Item 9: include_usage, n, logit_bias, refusals, content parts, error bodies.
        evs = S.sse(srv.port, "/v1/completions", dict(prompt="In the beginning", max_tokens=6, temperature=0,
                                                      stream_options={"include_usage": True}))
        chunks = [json.loads(e) for e in evs if e != "[DONE]"]
        last = chunks[-1] if chunks else {}
        RES.check("stream_options.include_usage: a final chunk with usage and no choices",
                  last.get("choices") == [] and last.get("usage", {}).get("completion_tokens") == 6
                  and all("usage" in c and c["usage"] is None for c in chunks[:-1]), str(last)[:200])
        st, j = comp(prompt="In the beginning", max_tokens=8, n=3, temperature=1.0, seed=7)
        texts = [c["text"] for c in j.get("choices", [])]
        RES.check("n=3 (sampling): three choices, indexes 0..2, not all equal",
                  st == 200 and [c["index"] for c in j["choices"]] == [0, 1, 2] and len(set(texts)) > 1
                  and j["usage"]["completion_tokens"] == 24, str(texts))
        st, j = comp(prompt="In the beginning", max_tokens=4, n=2)
        RES.check("n=2 greedy: two equal choices", st == 200 and len(j["choices"]) == 2
                  and j["choices"][0]["text"] == j["choices"][1]["text"] == single[0]["choices"][0]["text"][:len(j["choices"][0]["text"])])
        st, j = comp(prompt="In the beginning", max_tokens=6, logprobs=0)
        greedy = j["choices"][0]["logprobs"]["tokens"]
        _, tk2, _ = srv.request("POST", "/tokenize", {"content": "LORD", "add_special": False})
        forced = tk2["tokens"][-1]
        st, j = comp(prompt="In the beginning", max_tokens=4, logit_bias={str(forced): 100}, ignore_eos=True, logprobs=0)
        RES.check("logit_bias +100 forces a token", st == 200 and
                  set(j["choices"][0]["logprobs"]["tokens"]) == {" LORD"}, str(j["choices"][0]["logprobs"]["tokens"]))
        _, tk3, _ = srv.request("POST", "/tokenize", {"content": "x" + greedy[0], "add_special": False})
        st, j = comp(prompt="In the beginning", max_tokens=6, logprobs=0, logit_bias={str(tk3["tokens"][-1]): -100})
        RES.check("logit_bias -100 bans the greedy token", st == 200 and j["choices"][0]["logprobs"]["tokens"][0] != greedy[0],
                  f"{greedy[0]!r} -> {j['choices'][0]['logprobs']['tokens'][0]!r}")
        for label, extra in [("presence_penalty", {"presence_penalty": 0.5}), ("best_of", {"best_of": 3}),
                             ("suffix", {"suffix": "x"}), ("n too large", {"n": 1000})]:
            st, j = comp(prompt="x", max_tokens=2, **extra)
            RES.check(f"Reject unsupported {label}: 400", st == 400 and "error" in j, f"{st} {str(j)[:100]}")
        msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who made the sea?"}]
        parts = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                 {"role": "user", "content": [{"type": "text", "text": "Who made "}, {"type": "text", "text": "the sea?"}]}]
        a = srv.request("POST", "/v1/chat/completions", dict(messages=msgs, max_tokens=8, temperature=0))
        b = srv.request("POST", "/v1/chat/completions", dict(messages=parts, max_tokens=8, temperature=0))
        RES.check("chat content as text parts equals the string content",
                  a[0] == b[0] == 200 and a[1]["choices"][0]["message"] == b[1]["choices"][0]["message"], f"{b[0]} {str(b[1])[:150]}")
        st, j, _ = srv.request("POST", "/v1/chat/completions",
                               dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]))
        RES.check("Reject non-text content parts: 400", st == 400 and "error" in j, f"{st} {str(j)[:100]}")
        st, j, _ = srv.request("GET", "/v1/nothing")
        RES.check("404 has an OpenAI-style error body", st == 404 and isinstance(j, dict) and j["error"]["type"] == "not_found_error",
                  f"{st} {str(j)[:100]}")
        st, j, _ = srv.request("POST", "/v1/completions", {"prompt": "x" * 5000})
        RES.check("413 has an OpenAI-style error body", st == 413 and isinstance(j, dict) and "error" in j, f"{st} {str(j)[:100]}")
        st, j, _ = srv.request("GET", "/health")
        RES.check("still healthy", st == 200)
    finally:
        rc = srv.stop()
        RES.check("SIGTERM stops the server (exit 0)", rc == 0, f"exit {rc}")
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
