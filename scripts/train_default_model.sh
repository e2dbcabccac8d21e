#!/usr/bin/env bash
# Reproduces the bundled default model models/hymba-kjv (and, with --baselines, the
# attention-only and Mamba-only models of the same size and budget it is compared with):
#   corpus (Debian's bible-kjv-text) -> SentencePiece BPE 4096 -> token files -> hymba train ->
#   bf16 export with the tokenizer.
# Usage: scripts/train_default_model.sh [--baselines] [WORK_DIR]   (needs a built build/hymba)
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINES=0
if [ "${1:-}" = "--baselines" ]; then BASELINES=1; shift; fi
WORK=${1:-build/kjv}
HYMBA=${HYMBA:-build/hymba}
[ -x "$HYMBA" ] || { echo "train_default_model: build first (cmake --build build)" >&2; exit 1; }
STEPS=800 BATCH=8 SEQ=256 LR=2e-3 MIN_LR=1e-4

scripts/make_corpus.sh "$WORK/corpus"
scripts/train_tokenizer.sh "$WORK/corpus" "$WORK/tokenizer" 4096
[ -f "$WORK/data/train.tok" ] || "$HYMBA" tokenize --tokenizer "$WORK/tokenizer" --input "$WORK/corpus" \
  --out "$WORK/data" --val-fraction 0.05

train() {  # name config
  "$HYMBA" train --config "configs/$2" --data "$WORK/data" --out "$WORK/runs/$1" \
    --tokenizer "$WORK/tokenizer" --steps $STEPS --batch $BATCH --seq-len $SEQ --lr $LR \
    --min-lr $MIN_LR --eval-every 100 --eval-batches 16 --save-every 200 --log-every 20 --seed 1
}
train hymba hymba-kjv.json
"$HYMBA" export -m "$WORK/runs/hymba" -o models/hymba-kjv --dtype bf16
if [ $BASELINES = 1 ]; then
  train attention-only kjv-attention-only.json
  train mamba-only kjv-mamba-only.json
  for r in hymba attention-only mamba-only; do
    echo "$r: final val loss $(tail -1 "$WORK/runs/$r/metrics.csv" | cut -d, -f6)"
  done
fi
