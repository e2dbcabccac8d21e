#!/usr/bin/python3
"""`hymba server` reuses kept states at token-prefix granularity (bundled model, f32 K/V cache):
- two chats with the same ~400-token system message and different user turns: the second
  restores the state at the end of the system message (usage cached_tokens >= its tokens) and
  still answers exactly what `hymba generate` answers on the rendered conversation;
- two completions sharing a ~300-token prefix then differing: the second restores the state at
  the last --cache-block boundary inside the shared part and equals `hymba generate`;
- /metrics counts the prefix-cache hits.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib as S  # noqa: E402
import testlib as U  # noqa: E402

RES = U.Results()
SYSTEM = ("You answer from the King James Bible. " +
          "In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
          "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God "
          "said, Let there be light: and there was light. And God saw the light, that it was good: and God divided "
          "the light from the darkness. " * 5)
CHAT_STOPS = ["--stop", "</s>", "--stop", "<extra_id_1>"]


def generate(prompt, n, *extra):
    r = U.run(["generate", "-m", S.MODEL, "-p", prompt, "-n", str(n), "--temp", "0", "--cache-type", "f32",
               "--no-display-prompt", *extra])
    return r.stdout.rstrip("\n")


def main():
    srv = S.Server("--parallel", "2", "--cache-type", "f32", "--cache-block", "64")
    try:
        if not RES.check("server starts", srv.port is not None, srv.first.strip()):
            return RES.finish()
        _, hdr, _ = srv.request("POST", "/tokenize", {"content": "<extra_id_0>System\n" + SYSTEM.strip() + "\n\n"})
        n_sys = len(hdr["tokens"])
        answers = []
        for q in ["Who made the heaven and the earth?", "What moved upon the waters?"]:
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
            st, j, _ = srv.request("POST", "/v1/chat/completions", dict(messages=msgs, max_tokens=16, temperature=0))
            if not RES.check("chat: 200", st == 200, str(j)[:200]):
                return RES.finish()
            rendered = "<extra_id_0>System\n" + SYSTEM.strip() + "\n\n<extra_id_1>User\n" + q + "\n<extra_id_1>Assistant\n"
            answers.append((j["usage"]["prompt_tokens_details"]["cached_tokens"], j["usage"]["prompt_tokens"],
                            j["choices"][0]["message"]["content"], generate(rendered, 16, "--no-bos", *CHAT_STOPS)))
        RES.check("first chat: nothing cached", answers[0][0] == 0, f"{answers[0][0]}")
        RES.check("second chat, same system message: its state is restored",
                  answers[1][0] >= n_sys, f"{answers[1][0]} of {answers[1][1]} prompt tokens cached (system: {n_sys})")
        RES.check("both chats equal `hymba generate` on the rendered conversation",
                  all(a[2] == a[3] for a in answers), str([(a[2], a[3]) for a in answers]))

        prefix = SYSTEM[:1500]
        outs = []
        for tail in [" And the LORD said unto Moses,", " Then the king commanded"]:
            st, j, _ = srv.request("POST", "/v1/completions", dict(prompt=prefix + tail, max_tokens=12, temperature=0))
            if not RES.check("completion: 200", st == 200, str(j)[:200]):
                return RES.finish()
            outs.append((j["usage"]["prompt_tokens_details"]["cached_tokens"], j["choices"][0]["text"],
                         generate(prefix + tail, 12)))
        _, pt, _ = srv.request("POST", "/tokenize", {"content": prefix, "add_special": True})
        shared = len(pt["tokens"]) - 1  # the last token of the prefix may merge with the tail
        RES.check("second completion with the shared prefix: restored at the last 64-token boundary in it",
                  outs[1][0] >= shared // 64 * 64 and outs[1][0] > 0, f"{outs[1][0]} cached, {shared} shared")
        RES.check("both completions equal `hymba generate`", all(o[1] == o[2] for o in outs), str([o[1:] for o in outs]))
        m = S.metrics(srv.port)
        RES.check("/metrics counts prefix-cache hits", m.get("hymba_prefix_cache_hits_total", 0) >= 2,
                  f"{m.get('hymba_prefix_cache_hits_total')} hits of {m.get('hymba_prefix_cache_lookups_total')} lookups")
    finally:
        rc = srv.stop()
        RES.check("SIGTERM: exit 0", rc == 0, f"exit {rc}")
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
