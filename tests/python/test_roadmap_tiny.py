#!/usr/bin/python3
"""scripts/reproduce_roadmap.sh --tiny end to end (CI's pipeline check; the full run is not in CI):
data (text + MQAR mixed into one token stream), three architectures trained a few steps, each
measured (perplexity, MQAR, needle, state bytes, decode speed), roadmap.json + ROADMAP.md written
with a row per architecture (small sizes through the HIDDEN/META overrides) and the three comparisons with the paper's direction; then
MQ_ONLY=1 SEED=2 on one config (MQAR-only training data, one sample per row with the loss on the
answers); docs/ROADMAP.md is left alone."""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

RES = U.Results()


def main():
    work = tempfile.mkdtemp(prefix="hymba-roadmap-")
    docs = os.path.join(U.SRC, "docs", "ROADMAP.md")
    before = open(docs).read() if os.path.exists(docs) else None
    try:
        out = os.path.join(work, "run")
        r = subprocess.run(["bash", os.path.join(U.SRC, "scripts", "reproduce_roadmap.sh"), "--tiny", out],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, HYMBA=U.BIN))
        if not RES.check("reproduce_roadmap.sh --tiny runs", r.returncode == 0, r.stderr.strip()[-400:]):
            return RES.finish()
        j = json.load(open(os.path.join(out, "roadmap.json")))
        names = ["1-attention-only", "2-mamba-only", "7-hymba"]
        RES.check("a row per architecture", sorted(j["runs"]) == names, str(sorted(j["runs"])))
        finite = all(math.isfinite(v) for r_ in j["runs"].values() for v in r_.values())
        RES.check("every measurement present and finite", finite and all(len(r_) == 9 for r_ in j["runs"].values()),
                  json.dumps(j["runs"]["7-hymba"]))
        RES.check("the size overrides (HIDDEN=64 META=8 in --tiny) applied and recorded",
                  j["size_overrides"] == {"HIDDEN": 64, "META": 8} and all(r_["parameters"] < 2_000_000 for r_ in j["runs"].values()),
                  json.dumps(j["size_overrides"]) + " " + str([r_["parameters"] for r_ in j["runs"].values()]))
        st = {n: j["runs"][n]["state_mib_512"] / j["runs"][n]["state_mib_256"] for n in names}
        RES.check("state grows with context for attention, not for Mamba", st["1-attention-only"] > 1.9 and abs(st["2-mamba-only"] - 1) < 1e-9,
                  str(st))
        md = open(os.path.join(out, "ROADMAP.md")).read()
        RES.check("ROADMAP.md: table and the three comparisons", all(n in md for n in names) and md.count("(paper:") == 3)
        # MQ_ONLY=1 (recall trained on MQAR samples alone) and SEED, on one config
        out2 = os.path.join(work, "mq")
        r = subprocess.run(["bash", os.path.join(U.SRC, "scripts", "reproduce_roadmap.sh"), "--tiny", out2],
                           capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, HYMBA=U.BIN, MQ_ONLY="1", SEED="2", CONFIGS="2-mamba-only"))
        if RES.check("MQ_ONLY=1 SEED=2 runs", r.returncode == 0, r.stderr.strip()[-400:]):
            j2 = json.load(open(os.path.join(out2, "roadmap.json")))
            RES.check("MQ_ONLY: MQAR-only data, the answers-only loss (its default) and the seed recorded",
                      j2["train_data"] == "mqar" and j2["seed"] == 2 and j["train_data"] == "text+mqar" and j["seed"] == 1
                      and j2["loss"] == "answers" and j["loss"] == "all tokens" and j2["seq_len"] == 17,
                      json.dumps({k: j2[k] for k in ("train_data", "seed", "loss", "seq_len")}))
            RES.check("MQ_ONLY: trained on one sample per row (train.jsonl with the answers masked)",
                      "x 17 (one MQAR sample, loss on the answers)" in r.stderr
                      and os.path.exists(os.path.join(out2, "mqar-rows", "train.jsonl")), r.stderr.strip()[-300:])
            RES.check("MQ_ONLY: no text in the training stream (only MQAR ids), validation on MQAR samples",
                      "roadmap data: 0 text + " in r.stderr and math.isfinite(j2["runs"]["2-mamba-only"]["val_ppl"]),
                      r.stderr.strip()[-300:])
            md2 = open(os.path.join(out2, "ROADMAP.md")).read()
            RES.check("MQ_ONLY: the table says the perplexity is on MQAR samples",
                      "val ppl (MQAR)" in md2 and "SEED=2 MQ_ONLY=1 MQ_ANSWER_LOSS=1" in md2 and "val ppl (MQAR)" not in md)
        r = subprocess.run(["bash", os.path.join(U.SRC, "scripts", "reproduce_roadmap.sh"), "--tiny", os.path.join(work, "bad")],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, HYMBA=U.BIN, MQ_ANSWER_LOSS="1"))
        RES.check("MQ_ANSWER_LOSS=1 without MQ_ONLY=1 is refused", r.returncode != 0 and "needs MQ_ONLY=1" in r.stderr,
                  r.stderr.strip()[-200:])
        RES.check("the tiny runs leave docs/ROADMAP.md alone",
                  (open(docs).read() if os.path.exists(docs) else None) == before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
