#!/usr/bin/env bash
# hymba.cpp vs llama.cpp on the same machine in ONE session, repetitions alternating between the
# engines, so both see the same machine state. Peer: llama.cpp's generic hybrid (falcon-h1) with
# Hymba-1.5B's dimensions and random weights; ours: a random Hymba-1.5B checkpoint loaded from disk
# the way `generate` loads it (`hymba bench -m DIR`). Prints one markdown table (min–max over reps).
#
#   LLAMA_BENCH=/path/to/llama-bench scripts/bench_vs_llamacpp.sh GGUF_DIR [HYMBA_MODELS]
#
# GGUF_DIR holds falcon-h1-hymba1.5b-{F16,Q8_0,Q4_0}.gguf (make them with scripts/make_peer_gguf.py and
# llama-quantize; docs/RESULTS.md "hymba.cpp vs llama.cpp"). HYMBA_MODELS (default build/bench-models)
# holds bf16/, q8_0/, q4_0/ checkpoint folders; missing ones are made (`hymba init
# tests/configs/hymba-1.5b.json`, `hymba quantize`). llama.cpp is not a dependency of this project.
# Environment:
#   REPS=3            repetitions per engine and row (alternating; odd reps run llama.cpp first)
#   THREADS=2         threads for both engines
#   PP=512 TG=128     prompt and generated tokens of the main rows (llama-bench -p/-n)
#   TYPES="bf16 q8_0 q4_0"   weight types (llama.cpp: F16, Q8_0, Q4_0)
#   DEPTH=8192        also decode (tg64) after DEPTH tokens of context, bf16/F16 only; 0 = skip
#                     (costs a DEPTH-token prefill per rep and engine: minutes)
#   BATCHES=""        e.g. "4 8": aggregate decode of that many sequences at BATCH_DEPTH context;
#   BATCH_DEPTH=0     llama.cpp side needs LLAMA_BATCHED_BENCH (default: llama-batched-bench next to
#                     LLAMA_BENCH); bf16/F16 only
#   LLAMA_ARGS=""     extra llama-bench arguments, e.g. "-lm none" (read the GGUF into memory, as
#   HYMBA_ARGS=""     hymba does by default, instead of mmap); HYMBA_ARGS e.g. "--mmap"
#   HYMBA=build/hymba LLAMA_BATCHED_BENCH=...  binaries
#   OUT=DIR           keep raw outputs there (default: a temporary folder, removed)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench_vs_llamacpp: $*" >&2; exit 2; }
[ -n "${LLAMA_BENCH:-}" ] || die "LLAMA_BENCH is not set: point it at llama.cpp's llama-bench binary (CPU build, see docs/RESULTS.md)"
[ -x "$LLAMA_BENCH" ] || die "LLAMA_BENCH=$LLAMA_BENCH is not an executable file"
[ $# -ge 1 ] || die "usage: LLAMA_BENCH=... $0 GGUF_DIR [HYMBA_MODELS]"
GGUF_DIR=$1
HYMBA_MODELS=${2:-build/bench-models}
[ -d "$GGUF_DIR" ] || die "GGUF_DIR $GGUF_DIR is not a folder"
HYMBA=${HYMBA:-build/hymba}
[ -x "$HYMBA" ] || die "HYMBA=$HYMBA is not an executable (cmake --build build --target hymba)"
REPS=${REPS:-3} THREADS=${THREADS:-2} PP=${PP:-512} TG=${TG:-128} TYPES=${TYPES:-bf16 q8_0 q4_0}
DEPTH=${DEPTH:-8192} BATCHES=${BATCHES:-} BATCH_DEPTH=${BATCH_DEPTH:-0}
read -r -a LLAMA_EXTRA <<<"${LLAMA_ARGS:-}"
read -r -a HYMBA_EXTRA <<<"${HYMBA_ARGS:-}"
LLAMA_BATCHED_BENCH=${LLAMA_BATCHED_BENCH:-$(dirname "$LLAMA_BENCH")/llama-batched-bench}
CONFIG=tests/configs/hymba-1.5b.json

gguf_of() {  # weight type -> GGUF file
  case $1 in bf16) echo "$GGUF_DIR/falcon-h1-hymba1.5b-F16.gguf" ;; q8_0) echo "$GGUF_DIR/falcon-h1-hymba1.5b-Q8_0.gguf" ;;
    q4_0) echo "$GGUF_DIR/falcon-h1-hymba1.5b-Q4_0.gguf" ;; *) die "unknown type $1 (bf16, q8_0, q4_0)" ;; esac
}
for t in $TYPES; do
  f=$(gguf_of "$t")
  [ -f "$f" ] || die "missing $f (scripts/make_peer_gguf.py writes the F16 file, llama-quantize the others)"
done
if [ -n "$BATCHES" ]; then
  [ -x "$LLAMA_BATCHED_BENCH" ] || die "BATCHES set but LLAMA_BATCHED_BENCH=$LLAMA_BATCHED_BENCH is not an executable"
fi

# Our checkpoints, made once (random weights, the official layout; quantized folders load without conversion).
mkdir -p "$HYMBA_MODELS"
if [ ! -f "$HYMBA_MODELS/bf16/config.json" ]; then
  echo "making $HYMBA_MODELS/bf16 (hymba init $CONFIG)" >&2
  "$HYMBA" init "$CONFIG" -o "$HYMBA_MODELS/bf16" >&2
fi
for t in $TYPES; do
  [ "$t" = bf16 ] || [ -f "$HYMBA_MODELS/$t/config.json" ] || {
    echo "making $HYMBA_MODELS/$t (hymba quantize --type $t)" >&2
    "$HYMBA" quantize -m "$HYMBA_MODELS/bf16" -o "$HYMBA_MODELS/$t" --type "$t" >&2
  }
done

if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; RAW=$OUT; else RAW=$(mktemp -d); trap 'rm -rf "$RAW"' EXIT; fi
RES=$RAW/results.tsv  # engine  row  type  tok/s
: >"$RES"

# llama-bench -o jsonl: one line per test with n_prompt, n_gen, n_depth, avg_ts.
llama_run() {  # type rep
  local t=$1 log=$RAW/llama-$1-$2.jsonl
  "$LLAMA_BENCH" -m "$(gguf_of "$t")" -t "$THREADS" -p "$PP" -n "$TG" -r 1 -o jsonl "${LLAMA_EXTRA[@]}" >"$log" 2>"$log.err" ||
    die "llama-bench failed on $(gguf_of "$t"); see $log.err (set OUT=DIR to keep it)"
  if [ "$t" = bf16 ] && [ "$DEPTH" -gt 0 ]; then
    "$LLAMA_BENCH" -m "$(gguf_of "$t")" -t "$THREADS" -p 0 -n 64 -d "$DEPTH" -r 1 -o jsonl "${LLAMA_EXTRA[@]}" >>"$log" 2>>"$log.err" ||
      die "llama-bench -d $DEPTH failed; see $log.err"
  fi
  /usr/bin/python3 - "$log" "$t" >>"$RES" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    j = json.loads(line)
    p, n, d = j["n_prompt"], j["n_gen"], j.get("n_depth", 0)
    row = f"pp{p}" if n == 0 else (f"tg{n}" if d == 0 else f"tg{n} @ d{d}")
    print(f"llama.cpp\t{row}\t{sys.argv[2]}\t{j['avg_ts']}")
EOF
  if [ "$t" = bf16 ] && [ -n "$BATCHES" ]; then
    local npl maxb=1 b
    npl=$(echo $BATCHES | tr ' ' ',')
    for b in $BATCHES; do if ((b > maxb)); then maxb=$b; fi; done
    "$LLAMA_BATCHED_BENCH" -m "$(gguf_of "$t")" -t "$THREADS" -c $(((BATCH_DEPTH + 65) * maxb + 64)) \
      -npp "$((BATCH_DEPTH > 0 ? BATCH_DEPTH : 1))" -ntg 64 -npl "$npl" --output-format jsonl \
      >"$RAW/llama-batched-$2.jsonl" 2>"$RAW/llama-batched-$2.err" || die "llama-batched-bench failed; see $RAW/llama-batched-$2.err"
    /usr/bin/python3 - "$RAW/llama-batched-$2.jsonl" "$BATCH_DEPTH" >>"$RES" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{") and "speed_tg" in line:
        j = json.loads(line)
        print(f"llama.cpp\ttg64 x{j['pl']} @ d{sys.argv[2]}\tbf16\t{j['speed_tg']}")
EOF
  fi
}

hymba_json() {  # log engine-row-prefix type args...
  local log=$1 t=$2 kind=$3; shift 3
  "$HYMBA" bench -m "$HYMBA_MODELS/$t" -t "$THREADS" --no-peaks --json "${HYMBA_EXTRA[@]}" "$@" >"$log" 2>"$log.err" ||
    die "hymba bench failed on $HYMBA_MODELS/$t; see $log.err (set OUT=DIR to keep it)"
  /usr/bin/python3 - "$log" "$t" "$kind" >>"$RES" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
t, kind = sys.argv[2], sys.argv[3]
for r in j["rows"]:  # hymba bench --json: one row per test
    if r["n_prompt"] > 0:
        print(f"hymba.cpp\tpp{r['n_prompt']}\t{t}\t{r['tok_s']}")
    elif kind == "batch":
        print(f"hymba.cpp\ttg{r['n_gen']} x{r['batch']} @ d{r['depth']}\t{t}\t{r['tok_s']}")
    elif r["depth"] > 0:
        print(f"hymba.cpp\ttg{r['n_gen']} @ d{r['depth']}\t{t}\t{r['tok_s']}")
    else:
        print(f"hymba.cpp\ttg{r['n_gen']}\t{t}\t{r['tok_s']}")
EOF
}

hymba_run() {  # type rep
  local t=$1
  hymba_json "$RAW/hymba-$t-$2.json" "$t" pp -p "$PP" -n "$TG"
  if [ "$t" = bf16 ] && [ "$DEPTH" -gt 0 ]; then
    hymba_json "$RAW/hymba-$t-$2-d.json" "$t" depth -p 0 -n 64 -d "$DEPTH"
  fi
  if [ "$t" = bf16 ]; then
    for b in $BATCHES; do hymba_json "$RAW/hymba-$t-$2-b$b.json" "$t" batch -p 0 -n 64 -b "$b" -d "$BATCH_DEPTH"; done
  fi
}

echo "bench_vs_llamacpp: $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), reps $REPS, threads $THREADS" >&2
for ((r = 1; r <= REPS; r++)); do
  for t in $TYPES; do
    echo "rep $r/$REPS: $t" >&2
    if ((r % 2)); then llama_run "$t" "$r"; hymba_run "$t" "$r"; else hymba_run "$t" "$r"; llama_run "$t" "$r"; fi
  done
done

commit=$(sed -n 's/.*"build_commit": *"\([^"]*\)".*/\1/p' "$RAW"/llama-*.jsonl | head -1)
/usr/bin/python3 - "$RES" "$REPS" "$THREADS" "${commit:-?}" "$(git rev-parse --short HEAD 2>/dev/null || echo ?)" <<'EOF'
import collections, statistics, sys
res, reps, threads, lc, hc = sys.argv[1:6]
d = collections.defaultdict(list)
rows = []
for line in open(res):
    eng, row, t, v = line.rstrip("\n").split("\t")
    if (row, t) not in rows:
        rows.append((row, t))
    d[(eng, row, t)].append(float(v))
names = {"bf16": "bf16 / F16", "q8_0": "q8_0 / Q8_0", "q4_0": "q4_0 / Q4_0"}
def rng(v):
    return "–" if not v else (f"{v[0]:.1f}" if len(v) == 1 else f"{min(v):.1f}–{max(v):.1f}")
print(f"\nhymba.cpp {hc} vs llama.cpp {lc} falcon-h1 (Hymba-1.5B dims), {threads} threads, "
      f"{reps} alternating reps, tok/s min–max\n")
print("| test | weights | hymba.cpp | llama.cpp falcon-h1 | ratio of medians |")
print("|---|---|---|---|---|")
for row, t in sorted(rows, key=lambda x: (list(names).index(x[1]), x[0].startswith("tg"), "@" in x[0], x[0])):
    h, l = d[("hymba.cpp", row, t)], d[("llama.cpp", row, t)]
    ratio = f"{statistics.median(h) / statistics.median(l):.2f}x" if h and l else "–"
    print(f"| {row} | {names[t]} | {rng(h)} | {rng(l)} | {ratio} |")
EOF
