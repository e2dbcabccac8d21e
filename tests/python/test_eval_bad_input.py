#!/usr/bin/python3
"""`hymba eval` on bad input: one "hymba: error:" line naming the file, row and field, exit 1,
never a crash (also run under ASan+UBSan by scripts/test.sh)."""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib as U  # noqa: E402

RES = U.Results()
DATA = os.path.join(U.SRC, "tests", "data", "eval")
MODEL = os.path.join(U.SRC, "models", "hymba-kjv")


def main():
    work = tempfile.mkdtemp(prefix="hymba-eval-bad-")
    try:
        def write(name, lines):
            p = os.path.join(work, name)
            with open(p, "w") as f:
                f.write("".join(x if isinstance(x, str) else json.dumps(x) + "\n" for x in lines))
            return p

        arc = [json.loads(x) for x in open(os.path.join(DATA, "arc_easy.jsonl"))]
        no_question = dict(arc[1])
        del no_question["question"]
        bad_key = dict(arc[0], answerKey="E")
        piqa = json.loads(open(os.path.join(DATA, "piqa.jsonl")).readline())
        wino = json.loads(open(os.path.join(DATA, "winogrande.jsonl")).readline())
        hs = json.loads(open(os.path.join(DATA, "hellaswag.jsonl")).readline())
        mmlu = os.path.join(DATA, "mmlu.jsonl")
        cases = [
            ("missing field", ["--task", "arc_easy", "--data", write("a.jsonl", [arc[0], no_question])],
             ["a.jsonl:2", "'question'", "missing"]),
            ("answerKey not a label", ["--task", "arc_easy", "--data", write("b.jsonl", [bad_key])],
             ["b.jsonl:1", "answerKey"]),
            ("label out of range", ["--task", "piqa", "--data", write("c.jsonl", [piqa, dict(piqa, label=2)])],
             ["c.jsonl:2", "'label'", "outside"]),
            ("negative hellaswag label", ["--task", "hellaswag", "--data", write("d.jsonl", [dict(hs, label="-1")])],
             ["d.jsonl:1", "'label'"]),
            ("label too big for any integer", ["--task", "piqa", "--data", write("e2.jsonl", [dict(piqa, label=1e30)])],
             ["e2.jsonl:1", "'label'"]),
            ("label past int64", ["--task", "piqa", "--data", write("e3.jsonl", ['{"goal": "g", "sol1": "a", "sol2": "b", "label": 18446744073709551615}\n'])],
             ["e3.jsonl:1", "'label'"]),
            ("label of the wrong type", ["--task", "piqa", "--data", write("e.jsonl", [dict(piqa, label=[1])])],
             ["e.jsonl:1", "'label'", "integer"]),
            ("winogrande answer 3", ["--task", "winogrande", "--data", write("f.jsonl", [dict(wino, answer="3")])],
             ["f.jsonl:1", "'answer'"]),
            ("winogrande without blank", ["--task", "winogrande", "--data", write("g.jsonl", [dict(wino, sentence="no blank")])],
             ["g.jsonl:1", "'sentence'"]),
            ("choices not a list", ["--task", "hellaswag", "--data", write("h.jsonl", [dict(hs, endings="x")])],
             ["h.jsonl:1", "'endings'"]),
            ("empty file", ["--task", "piqa", "--data", write("empty.jsonl", [])], ["empty.jsonl", "empty"]),
            ("blank lines only", ["--task", "piqa", "--data", write("blank.jsonl", ["\n \n"])], ["blank.jsonl", "empty"]),
            ("not JSON", ["--task", "piqa", "--data", write("i.jsonl", [piqa, "{oops\n"])], ["i.jsonl:2", "JSON"]),
            ("not an object", ["--task", "piqa", "--data", write("j.jsonl", ["[1, 2]\n"])], ["j.jsonl:1", "object"]),
            ("missing file", ["--task", "piqa", "--data", os.path.join(work, "nope.jsonl")], ["nope.jsonl"]),
            ("unknown task", ["--task", "arc_hard", "--data", mmlu], ["unknown task 'arc_hard'", "arc_easy"]),
            ("no --data", ["--task", "piqa"], ["--data"]),
            ("few-shot without dev file", ["--task", "mmlu", "--data", mmlu, "--num-fewshot", "1"], ["--fewshot-data"]),
            ("too few dev rows", ["--task", "mmlu", "--data", mmlu, "--num-fewshot", "3",
                                  "--fewshot-data", os.path.join(DATA, "mmlu_dev.jsonl")], ["mmlu.jsonl:1", "abstract_algebra"]),
            ("few-shot on a zero-shot task", ["--task", "piqa", "--data", os.path.join(DATA, "piqa.jsonl"),
                                              "--num-fewshot", "2"], ["--num-fewshot"]),
            ("mmlu answer out of range", ["--task", "mmlu", "--data", write("k.jsonl", [{"question": "q", "subject": "s",
                                          "choices": ["a", "b", "c", "d"], "answer": 4}])], ["k.jsonl:1", "'answer'"]),
            ("lambada one word", ["--task", "lambada_openai", "--data", write("l.jsonl", [{"text": "word"}])],
             ["l.jsonl:1", "'text'"]),
            ("wikitext page not a string", ["--task", "wikitext", "--data", write("m.jsonl", [{"page": 3}])],
             ["m.jsonl:1", "'page'"]),
            ("swde empty text", ["--task", "swde", "--data", write("n.jsonl", [{"text": "  ", "value": "x"}])],
             ["n.jsonl:1", "'text'"]),
            ("benchmark of a generation task", ["--task", "swde", "--data", os.path.join(DATA, "swde.jsonl"), "--limit", "1",
                                                "--benchmark"], ["--benchmark"]),
        ]
        for label, args, needles in cases:
            r = U.run(["eval", "-m", MODEL] + args)
            err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
            RES.check(f"bad input: {label}", r.returncode != 0 and r.returncode < 128 and "error" in err.lower()
                      and all(n in err for n in needles), f"exit {r.returncode}: {err[-200:]}")
        # --json to an unwritable place: an error, and nothing half-written.
        out = os.path.join(work, "no-such-dir", "r.json")
        r = U.run(["eval", "-m", MODEL, "--task", "piqa", "--data", os.path.join(DATA, "piqa.jsonl"), "--limit", "1",
                   "--json", out])
        RES.check("bad input: unwritable --json", r.returncode == 1 and not os.path.exists(out), r.stderr.strip()[-200:])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RES.finish()


if __name__ == "__main__":
    sys.exit(main())
