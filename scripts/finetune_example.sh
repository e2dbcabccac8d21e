#!/usr/bin/env bash
# finetune_example.sh [WORK] — the paper's recipe in miniature on the bundled model: SFT with a
# LoRA adapter on instruction pairs made from the KJV text ("Quote Genesis 1:3" -> the verse),
# merge, then DPO with a new LoRA preferring the exact verse over a corrupted one. Prints the
# held-out numbers before/after each stage and a few sample answers. Minutes on 2 cores.
# Needs: build/hymba, `bible` (apt: bible-kjv bible-kjv-text), /usr/bin/python3.
set -euo pipefail
WORK=${1:-build/finetune-example}
HYMBA=${HYMBA:-build/hymba}
BASE=${BASE:-models/hymba-kjv}
die() { echo "finetune_example: error: $*" >&2; exit 1; }
command -v bible >/dev/null || die "'bible' not found: apt-get install bible-kjv bible-kjv-text"
[ -x "$HYMBA" ] || die "$HYMBA not built"
rm -rf "$WORK" && mkdir -p "$WORK"

# Genesis 1-3 as verse references; every 8th verse held out (validation), the rest trains.
bible -f Ge1:1-Ge3:24 </dev/null >"$WORK/verses.txt"
/usr/bin/python3 - "$WORK" <<'PY'
import json, random, re, sys
work = sys.argv[1]
rng = random.Random(7)
verses = []
for line in open(f"{work}/verses.txt"):
    m = re.match(r"Ge(\d+):(\d+) (.*)", line.strip())
    if m:
        verses.append((int(m[1]), int(m[2]), m[3]))
def corrupt(text):
    w = text.split()
    i = rng.randrange(len(w))
    j = (i + 1 + rng.randrange(len(w) - 1)) % len(w) if len(w) > 1 else i
    w[i], w[j] = w[j], w[i]
    w[rng.randrange(len(w))] = rng.choice(["sea", "king", "gold", "night", "city", "bread"])
    return " ".join(w)
sft, dpo, held = [], [], []
for k, (c, v, t) in enumerate(verses):
    q = f"Quote Genesis {c}:{v}"
    (held if k % 8 == 0 else sft).append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": t}]})
    dpo.append({"prompt": q, "chosen": t, "rejected": corrupt(t)})
def dump(name, rows):
    with open(f"{work}/{name}", "w") as f:
        for r in rows: f.write(json.dumps(r) + "\n")
dump("sft.jsonl", sft); dump("heldout.jsonl", held); dump("dpo.jsonl", dpo)
print(f"{len(verses)} verses: {len(sft)} SFT rows, {len(held)} held out, {len(dpo)} DPO pairs")
PY

# Held-out loss of the assistant tokens = "step 0 | val" of a zero-lr run on the held-out rows.
heldout_loss() {  # MODEL [--lora DIR]
  local out="$WORK/eval-$RANDOM"
  "$HYMBA" finetune -m "$1" --data "$WORK/heldout.jsonl" --out "$out" --val-fraction 0.99 --max-steps 1 \
      --lr 0 --seq-len 256 --seed 1 2>&1 | awk '/^step 0 \| val/ {print $5}'
  rm -rf "$out"
}
samples() {  # MODEL [extra flags]
  local m=$1; shift
  for q in "Quote Genesis 1:3" "Quote Genesis 2:7" "Quote Genesis 3:9"; do
    printf '  %s -> ' "$q"
    "$HYMBA" generate -m "$m" "$@" -n 40 --temp 0 --no-display-prompt --stop "<extra_id_1>" \
        -p $'<extra_id_0>System\n\n<extra_id_1>User\n'"$q"$'\n<extra_id_1>Assistant\n' 2>/dev/null | head -1
  done
}

echo "== base model"; samples "$BASE"
T0=$(date +%s)
"$HYMBA" finetune -m "$BASE" --data "$WORK/sft.jsonl" --out "$WORK/sft" --method lora --rank 16 --alpha 32 \
    --target all --seq-len 256 --epochs 4 --lr 2e-3 --warmup-ratio 0.05 --val-fraction 0.1 --log-every 20
T1=$(date +%s)
"$HYMBA" merge -m "$BASE" --lora "$WORK/sft" -o "$WORK/sft-merged"
echo "== after SFT (LoRA)"; samples "$WORK/sft-merged"
"$HYMBA" dpo -m "$WORK/sft-merged" --data "$WORK/dpo.jsonl" --out "$WORK/dpo" --method lora --rank 8 --alpha 16 \
    --target all --seq-len 256 --lr 5e-4 --beta 0.1 --warmup-ratio 0.05 --val-fraction 0.15 --log-every 20
T2=$(date +%s)
echo "== after DPO (LoRA on the merged SFT model)"; samples "$WORK/sft-merged" --lora "$WORK/dpo"
echo "== held-out assistant-token loss (verses never trained on)"
echo "  base:      $(heldout_loss "$BASE")"
echo "  after SFT: $(heldout_loss "$WORK/sft-merged")"
echo "== DPO metrics (first and last step; validation pairs at start and end)"
head -2 "$WORK/dpo/metrics.csv" | tail -1; tail -1 "$WORK/dpo/metrics.csv"
echo "SFT: $((T1 - T0)) s, DPO: $((T2 - T1)) s"
