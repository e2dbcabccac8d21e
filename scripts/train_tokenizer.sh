#!/usr/bin/env bash
# train_tokenizer.sh CORPUS_DIR OUT_DIR VOCAB — trains a SentencePiece BPE tokenizer on every
# *.txt under CORPUS_DIR (recursively) with Llama/Hymba conventions: ids 0/1/2 = <unk>/<s>/</s>,
# no pad, byte fallback (any UTF-8 text encodes, incl. "\n"), digits split, identity
# normalisation, whitespace kept as is. Writes OUT_DIR/tokenizer.model (+ tokenizer.vocab) and
# OUT_DIR/tokenizer_config.json (add_bos_token true, add_eos_token false, like Hymba's).
# Deterministic: one thread, fixed seed, no sentence sampling (whole corpus), sorted inputs.
set -euo pipefail
die() { echo "train_tokenizer: error: $*" >&2; exit 1; }
[ $# -eq 3 ] || die "usage: train_tokenizer.sh CORPUS_DIR OUT_DIR VOCAB"
CORPUS=$1 OUT=$2 VOCAB=$3
command -v spm_train >/dev/null 2>&1 || die "spm_train not found: apt-get install sentencepiece"
[ -d "$CORPUS" ] || die "corpus folder not found: $CORPUS"
[[ "$VOCAB" =~ ^[0-9]+$ ]] && [ "$VOCAB" -ge 300 ] || die "VOCAB must be an integer >= 300 (259 ids are specials + bytes), got '$VOCAB'"
CORPUS=$(realpath "$CORPUS")
mapfile -t FILES < <(find "$CORPUS" -type f -name '*.txt' | LC_ALL=C sort)
[ ${#FILES[@]} -gt 0 ] || die "no *.txt files under $CORPUS"
for f in "${FILES[@]}"; do [[ "$f" != *,* ]] || die "file name contains a comma (spm_train splits on commas): $f"; done
INPUT=$(IFS=,; echo "${FILES[*]}")

mkdir -p "$OUT" || die "cannot create $OUT"
TMP=$(mktemp -d "$OUT/.train_tokenizer.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
# The model records its trainer flags; run inside TMP with a relative prefix so the random temp
# name does not end up in (and change) the bytes of tokenizer.model.
(cd "$TMP" && spm_train --input="$INPUT" --model_prefix=tokenizer --vocab_size="$VOCAB" \
  --model_type=bpe --byte_fallback=true --character_coverage=1.0 --split_digits=true \
  --normalization_rule_name=identity --remove_extra_whitespaces=false \
  --allow_whitespace_only_pieces=true --add_dummy_prefix=true \
  --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --num_threads=1 --random_seed=1234 --input_sentence_size=0 --shuffle_input_sentence=false \
  --minloglevel=1 >spm_train.log 2>&1) \
  || { tail -20 "$TMP/spm_train.log" >&2; die "spm_train failed (vocab $VOCAB too large for the corpus?)"; }

cat >"$TMP/tokenizer_config.json" <<JSON
{
  "add_bos_token": true,
  "add_eos_token": false,
  "bos_token": "<s>",
  "eos_token": "</s>",
  "unk_token": "<unk>",
  "pad_token": null,
  "model_max_length": 8192,
  "tokenizer_class": "LlamaTokenizer",
  "legacy": true,
  "clean_up_tokenization_spaces": false
}
JSON
mv "$TMP/tokenizer.model" "$TMP/tokenizer.vocab" "$TMP/tokenizer_config.json" "$OUT"/
echo "train_tokenizer: $OUT/tokenizer.model (BPE, vocab $VOCAB, from ${#FILES[@]} files)"
