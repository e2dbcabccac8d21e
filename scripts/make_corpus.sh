#!/usr/bin/env bash
# make_corpus.sh OUT_DIR — the King James Bible (Debian's bible-kjv-text, read with the `bible`
# tool of bible-kjv) as plain UTF-8 text, one file per book in canonical order:
#   OUT_DIR/01_Genesis.txt ... OUT_DIR/66_Revelation.txt
# Each file: the book's name, a blank line, then one verse per line (text only, no reference),
# a blank line between chapters. Idempotent: same input -> byte-identical output; stale *.txt in
# OUT_DIR are replaced as a whole (built in a temp folder, then moved in).
set -euo pipefail
die() { echo "make_corpus: error: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: make_corpus.sh OUT_DIR"
OUT=$1
command -v bible >/dev/null 2>&1 || die "'bible' not found: apt-get install bible-kjv bible-kjv-text"
[ -f /usr/lib/bible.data ] || die "/usr/lib/bible.data missing: apt-get install bible-kjv-text"

# Abbreviations as printed by `bible -f` (reference prefix), in book order, with full names.
ABBR=(Ge Exo Lev Num Deu Josh Jdgs Ruth 1Sm 2Sm 1Ki 2Ki 1Chr 2Chr Ezra Neh Est Job Psa Prv Eccl
      SSol Isa Jer Lam Eze Dan Hos Joel Amos Obad Jonah Mic Nahum Hab Zep Hag Zec Mal Mat Mark Luke
      John Acts Rom 1Cor 2Cor Gal Eph Phi Col 1Th 2Th 1Tim 2Tim Titus Phmn Heb Jas 1Pet 2Pet 1Jn
      2Jn 3Jn Jude Rev)
NAMES=(Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth "1 Samuel" "2 Samuel"
       "1 Kings" "2 Kings" "1 Chronicles" "2 Chronicles" Ezra Nehemiah Esther Job Psalms Proverbs
       Ecclesiastes "Song of Solomon" Isaiah Jeremiah Lamentations Ezekiel Daniel Hosea Joel Amos
       Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai Zechariah Malachi Matthew Mark Luke John
       Acts Romans "1 Corinthians" "2 Corinthians" Galatians Ephesians Philippians Colossians
       "1 Thessalonians" "2 Thessalonians" "1 Timothy" "2 Timothy" Titus Philemon Hebrews James
       "1 Peter" "2 Peter" "1 John" "2 John" "3 John" Jude Revelation)

mkdir -p "$OUT" || die "cannot create $OUT"
TMP=$(mktemp -d "$OUT/.make_corpus.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
# -f turns pretty-printing off: one "BookC:V text" line per verse. stdin from /dev/null so the
# tool never waits for interactive input.
bible -f Gen1:1-Rev22:21 </dev/null >"$TMP/all.raw" || die "bible failed"
NV=$(wc -l <"$TMP/all.raw")
[ "$NV" -eq 31102 ] || die "expected 31102 verses from bible, got $NV"

ABBR_LIST="${ABBR[*]}" NAME_LIST=$(printf '%s|' "${NAMES[@]}") awk -v dir="$TMP" '
BEGIN {
  n = split(ENVIRON["ABBR_LIST"], ab, " "); split(ENVIRON["NAME_LIST"], nm, "|")
  for (i = 1; i <= n; i++) idx[ab[i]] = i
  cur = ""
}
{
  if (!match($0, /^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ /)) { print "bad line " NR ": " $0 > "/dev/stderr"; exit 2 }
  ref = substr($0, 1, RLENGTH - 1); text = substr($0, RLENGTH + 1)
  match(ref, /^[0-9]?[A-Za-z]+/); book = substr(ref, 1, RLENGTH); rest = substr(ref, RLENGTH + 1)
  split(rest, cv, ":"); ch = cv[1]
  if (!(book in idx)) { print "unknown book " book > "/dev/stderr"; exit 2 }
  if (book != cur) {
    if (cur != "") close(f)
    i = idx[book]; name = nm[i]; fname = name; gsub(/ /, "_", fname)
    f = sprintf("%s/%02d_%s.txt", dir, i, fname)
    printf "%s\n", name > f
    cur = book; lastch = ""
  }
  if (ch != lastch) { printf "\n" > f; lastch = ch }
  printf "%s\n", text > f
}' "$TMP/all.raw" || die "splitting into books failed"
rm "$TMP/all.raw"
NF=$(ls "$TMP"/*.txt | wc -l)
[ "$NF" -eq 66 ] || die "expected 66 books, got $NF"
# The text is ASCII; check it is valid UTF-8 anyway (iconv fails on bad bytes).
cat "$TMP"/*.txt | iconv -f UTF-8 -t UTF-8 >/dev/null || die "output is not valid UTF-8"

rm -f "$OUT"/[0-9][0-9]_*.txt
mv "$TMP"/*.txt "$OUT"/
BYTES=$(cat "$OUT"/[0-9][0-9]_*.txt | wc -c)
echo "make_corpus: $OUT: 66 books, $NV verses, $BYTES bytes"
