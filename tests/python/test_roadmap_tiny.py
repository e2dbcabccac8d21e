#!/usr/bin/python3
"""scripts/reproduce_roadmap.sh --tiny end to end (CI's pipeline check; the full run is not in CI):
data (text + MQAR mixed into one token stream), three architectures trained a few steps, each
measured (perplexity, MQAR, needle, state bytes, decode speed), roadmap.json + ROADMAP.md written
with a row per architecture (small sizes through the HIDDEN/META overrides) and the three comparisons with the paper's direction; docs/ROADMAP.md
is left alone by the tiny run."""
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
        RES.check("the tiny run leaves docs/ROADMAP.md alone",
                  (open(docs).read() if os.path.exists(docs) else None) == before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
