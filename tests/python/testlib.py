"""Shared pieces of the CLI tests: pass/fail bookkeeping, the engine-vs-reference logits check on
a checkpoint folder, and for the training tests a small corpus tokenized with the bundled
tokenizer plus a tiny Hymba config with the matching vocabulary."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.environ.get("HYMBA_SOURCE_DIR") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ["HYMBA_BIN"]
TOKENIZER = os.path.join(SRC, "models", "hymba-kjv")

TEXT = [
    "In the beginning was the word, and the word was with the people of the valley.\n"
    "They sowed the fields in spring and gathered the harvest in the autumn of the year.\n",
    "The river ran past the old mill, and the miller counted the sacks of grain each evening.\n"
    "His daughter kept the books, and her brother drove the cart to the market town.\n",
    "When the snow came, the village gathered in the hall, and the elders told the old stories.\n"
    "The children listened, and the fire burned low, and the night was long and cold.\n",
]


def run(args, **kw):
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=600, **kw)


def reference_logits(model_dir, ids):
    """Float64 reference logits [n, V] of one sequence."""
    sys.path.insert(0, os.path.join(SRC, "reference"))
    import hymba_ref
    ref = hymba_ref.load(model_dir).forward(np.array([ids]))
    return ref.detach().numpy()[0] if hasattr(ref, "detach") else np.asarray(ref)[0]


def logits_vs_reference(model_dir, ids):
    """(ok, detail): `hymba logits` on model_dir equals the reference within 1e-3 * max|logit|."""
    out = os.path.join(tempfile.mkdtemp(prefix="hymba-logits-"), "l.npy")
    r = run(["logits", "-m", model_dir, "--ids", ",".join(map(str, ids)), "-o", out])
    if r.returncode != 0:
        return False, r.stderr.strip()[-200:]
    eng = np.load(out).astype(np.float64)
    ref = reference_logits(model_dir, ids)
    err, bound = np.abs(eng - ref).max(), 1e-3 * max(1.0, np.abs(ref).max())
    return err <= bound, f"max abs err {err:.2e} (bound {bound:.2e})"


def make_data(work, copies=30):
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for i, t in enumerate(TEXT):
        with open(os.path.join(corpus, f"doc{i}.txt"), "w") as f:
            f.write(t * copies)
    data = os.path.join(work, "data")
    r = run(["tokenize", "--tokenizer", TOKENIZER, "--input", corpus, "--out", data, "--val-fraction", "0.34"])
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return data


def make_config(work, name="tiny-hymba.json", **edits):
    cfg = json.load(open(os.path.join(SRC, "tests", "configs", name)))
    cfg["vocab_size"] = 4096  # the bundled tokenizer's
    cfg.update(edits)
    path = os.path.join(work, "config.json")
    json.dump(cfg, open(path, "w"))
    return path


def bf16_gemm():
    """Whether the engine's BF16 matmuls of more than 64 rows run the vdpbf16ps GEMM (rounding their
    activations to bf16): Highway's AVX3_DL target (src/ops/matmul.cpp) plus AVX512-BF16, on AMD
    CPUs or with HYMBA_BF16_GEMM=1 (src/ops/matmul.cpp, bf16_dot_wanted); HYMBA_BF16_GEMM=0 never."""
    need = {"avx512_bf16", "avx512_vnni", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg",
            "avx512_vpopcntdq", "vaes", "vpclmulqdq"}
    mode = os.environ.get("HYMBA_BF16_GEMM")
    if mode == "0":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    amd = any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in lines)
    return need <= set(flags) and (amd or mode == "1")


def close_with_8bit_activations(got, want):
    """Engine logits [n, V] vs the float64 reference when Q8/Q4_0 matmuls quantize their inputs
    (src/ops/quant.h, quantize_act_q8). The engine's float32 activations and the reference's
    float64 ones can round a value lying on a rounding boundary to neighbouring codes; such a flip
    is one step of one activation, but a random model can carry it on through the SSM state and
    global attention. So: every position within 2e-2 * max|logit|, and at least a quarter of the
    positions within the unquantized tolerance 1e-3 * max|logit| (a wrong block scale or a
    matmul fed unquantized inputs breaks both). The share is a property of the summation order:
    the 512-bit q8 GEMV (same integer block sums, float partials added in another order; checked
    against naive double on every target in quant_test.cpp) moved one case of test_lora_files
    from 83% to 39% and two from 100% to 65%, with the max bound still met, so a quarter, not
    half. Returns (ok, message, max error, bound)."""
    import numpy as np
    scale = max(1.0, float(np.abs(want).max()))
    per = np.abs(got - want).reshape(len(want), -1).max(-1)
    tight = float((per <= 1e-3 * scale).mean())
    e, bound = float(per.max()), 2e-2 * scale
    ok = e <= bound and tight >= 0.25
    return ok, f"max abs err {e:.3e} (bound {bound:.3e}), {tight:.0%} of positions within 1e-3 * max|logit|", e, bound


class Results:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, name, ok, detail=""):
        self.passed += bool(ok)
        self.failed += not ok
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return bool(ok)

    def refused(self, name, args):
        """The CLI run with `args` ends with one "hymba: error:" line and exit status 1."""
        r = run(args)
        return self.check(name, r.returncode == 1 and "hymba: error:" in r.stderr, r.stderr.strip()[-200:])

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed or not self.passed else 0
