#!/usr/bin/python3
"""`hymba bench` sweeps like llama-bench: comma lists for -p/-n/-d/-b, -r repetitions, one row per
test with the limit it is held to, as a markdown table or --json. Checks the rows exist with the
right shape and sane values on the bundled model (speed itself is not asserted: benchmarks, not
timed tests), and that bad lists are refused."""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

R = U.Results()


def main():
    r = U.run(["bench", "-p", "16,8", "-n", "4", "-d", "0,12", "-b", "1,3", "-r", "2", "--json"])
    if R.check("bench sweep exits 0", r.returncode == 0, r.stderr.strip()[-300:]):
        j = json.loads(r.stdout)
        tests = [x["test"] for x in j["rows"]]
        R.check("one row per test, llama-bench names", tests == ["pp16", "pp8", "tg4", "tg4 x3", "tg4 @ d12", "tg4 @ d12 x3"],
                str(tests))
        R.check("each row has its repetitions", all(len(x["samples_tok_s"]) == 2 and x["tok_s"] > 0 for x in j["rows"]),
                str([x["samples_tok_s"] for x in j["rows"]]))
        R.check("limits measured in the run", j["machine_read_gb_s"] > 0 and j["machine_sgemm_gflop_s"] > 0
                and all(x["fraction_of_limit"] > 0 for x in j["rows"]),
                f"{j['machine_read_gb_s']:.1f} GB/s, {j['machine_sgemm_gflop_s']:.1f} GFLOP/s")
        dec = [x for x in j["rows"] if x["n_gen"]]
        R.check("decode rows: weight bytes per step x steps/s", all(x["decode_weight_gb_s"] > 0 for x in dec), "")
        R.check("peak RSS reported", all(x["peak_rss_mib"] > 0 for x in j["rows"]), "")
    t = U.run(["bench", "-p", "8", "-n", "2", "-b", "1,2", "--no-peaks"])
    R.check("markdown table", t.returncode == 0 and "| test | t/s |" in t.stdout and "| tg2 x2 |" in t.stdout,
            t.stdout[-300:])
    # The CLI runs with short OpenMP spin waits unless the user chose (apps/main.cpp): the table
    # header and the JSON say which setting a figure was measured with.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    d = U.run(["bench", "-p", "0", "-n", "1", "--no-peaks", "--json"], env=env)
    R.check("default OpenMP waiting: short spins", d.returncode == 0 and
            json.loads(d.stdout).get("openmp_waiting") == "GOMP_SPINCOUNT=3000", (d.stdout + d.stderr)[-200:])
    # Nor does it run on OpenBLAS's SSE3 fallback kernels on a CPU with AVX2 that OpenBLAS does not
    # know (blas_core_override, src/ops/threads.h); a user's OPENBLAS_CORETYPE wins.
    env = {k: v for k, v in env.items() if k != "OPENBLAS_CORETYPE"}
    c = U.run(["bench", "-p", "0", "-n", "1", "--no-peaks", "--json"], env=env)
    with open("/proc/cpuinfo") as f:
        avx2 = " avx2 " in f.read()
    core = json.loads(c.stdout).get("blas_core") if c.returncode == 0 else None
    R.check("OpenBLAS kernels not the SSE3 fallback on an AVX2 CPU", c.returncode == 0 and core and
            (core != "Prescott" or not avx2), f"{core}, avx2 {avx2}")
    p = U.run(["bench", "-p", "0", "-n", "1", "--no-peaks", "--json"], env={**env, "OPENBLAS_CORETYPE": "Prescott"})
    R.check("the user's OPENBLAS_CORETYPE wins", p.returncode == 0 and json.loads(p.stdout).get("blas_core") == "Prescott",
            (p.stdout + p.stderr)[-200:])
    u = U.run(["bench", "-p", "0", "-n", "1", "--no-peaks"], env={**env, "OMP_WAIT_POLICY": "passive"})
    R.check("the user's OMP_WAIT_POLICY wins", u.returncode == 0 and "threads (OMP_WAIT_POLICY=passive)" in u.stdout,
            u.stdout[:300])
    # --prompt-cache: the depth's context is written once, then reused (same rows, no prefill).
    with tempfile.TemporaryDirectory() as tmp:
        stem = os.path.join(tmp, "ctx")
        runs = [U.run(["bench", "-p", "0", "-n", "2", "-d", "12", "--no-peaks", "--prompt-cache", stem, "--json"])
                for _ in range(2)]
        R.check("--prompt-cache writes PATH.d12, then reuses it",
                all(x.returncode == 0 for x in runs) and os.path.isfile(stem + ".d12")
                and [y["test"] for y in json.loads(runs[1].stdout)["rows"]] == ["tg2 @ d12"],
                (runs[0].stderr + runs[1].stderr).strip()[-300:])
        other = os.path.join(tmp, "notes")
        with open(other + ".d12", "w") as f:
            f.write("not a prompt cache")
        b = U.run(["bench", "-p", "0", "-n", "1", "-d", "12", "--no-peaks", "--prompt-cache", other])
        R.check("Reject --prompt-cache over a file that is not one", b.returncode == 1 and
                b.stderr.startswith("hymba: error:") and open(other + ".d12").read() == "not a prompt cache",
                b.stderr.strip()[-200:])
    for bad in (["-b", "0"], ["-p", "-1"], ["-r", "0"], ["-d", "1,-2"]):
        b = U.run(["bench", "--no-peaks", *bad])
        R.check(f"Reject {' '.join(bad)}", b.returncode == 1 and b.stderr.startswith("hymba: error:"),
                b.stderr.strip()[-200:])
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
