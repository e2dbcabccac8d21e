"""Independent Python version of what lm-evaluation-harness v0.4.x computes for the tasks of
`hymba eval`: prompts from the Hugging Face rows (the tasks' YAML/Jinja templates and utils.py
functions written out in Python), HFLM's scoring of token ids (loglikelihood, greedy flag,
rolling windows, greedy generation) on the float64 reference model, the per-document metrics
(process_results) and the aggregations with their standard errors (mean_stderr, the seeded
bootstrap of perplexity, the pooled stderr of the mmlu group).

Only the stdlib, numpy and torch (Debian packages). Tokenization is not redone here: there is no
SentencePiece for Python in Debian's set this project uses, so the token ids come from the
engine's --log-samples and the checks are on everything computed from them.
"""
import math
import random
import re

import numpy as np
import torch

VERSIONS = {"arc_easy": 1, "arc_challenge": 1, "piqa": 1, "hellaswag": 1, "winogrande": 1,
            "openbookqa": 1, "mmlu": 1, "lambada_openai": 1, "wikitext": 2,
            "squad_completion": 0, "swde": 0}
METRICS = {"arc_easy": ["acc", "acc_norm"], "arc_challenge": ["acc", "acc_norm"],
           "piqa": ["acc", "acc_norm"], "hellaswag": ["acc", "acc_norm"], "winogrande": ["acc"],
           "openbookqa": ["acc", "acc_norm"], "mmlu": ["acc"], "lambada_openai": ["perplexity", "acc"],
           "wikitext": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
           "squad_completion": ["contains"], "swde": ["contains"]}
HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "contains": True, "perplexity": False,
                    "word_perplexity": False, "byte_perplexity": False, "bits_per_byte": False}


# ---- prompts (lm_eval/tasks/*) ------------------------------------------------------------

def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def wikitext_detokenizer(doc):
    string = doc["page"]
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def mmlu_text(doc):
    c = doc["choices"]
    return f"{doc['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def requests(task, doc, dev=None, k=0):
    """(arguments, choices, gold/target) as the harness builds them: arguments is the list of
    (context, continuation) pairs; for generate tasks (context, generation kwargs)."""
    if task in ("arc_easy", "arc_challenge"):
        ctx = f"Question: {doc['question']}\nAnswer:"
        choices = doc["choices"]["text"]
        gold = doc["choices"]["label"].index(doc["answerKey"])
    elif task == "openbookqa":
        ctx = doc["question_stem"]
        choices = doc["choices"]["text"]
        gold = doc["choices"]["label"].index(doc["answerKey"].lstrip())
    elif task == "piqa":
        ctx = f"Question: {doc['goal']}\nAnswer:"
        choices = [doc["sol1"], doc["sol2"]]
        gold = doc["label"]
    elif task == "hellaswag":
        c = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        ctx = hellaswag_preprocess(doc["activity_label"] + ": " + c)
        choices = [hellaswag_preprocess(e) for e in doc["endings"]]
        gold = int(doc["label"])
    elif task == "winogrande":
        idx = doc["sentence"].index("_")
        choices = [doc["sentence"][:idx] + o for o in (doc["option1"], doc["option2"])]
        target = doc["sentence"][idx + 1:].strip()
        gold = {"1": 0, "2": 1}[doc["answer"]]
        # multiple_inputs: fewshot_context is "" (zero-shot), the choices are the contexts
        return [(c, " " + target) for c in choices], choices, gold
    elif task == "mmlu":
        subject = doc["subject"]
        ctx = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots = [d for d in (dev or []) if d["subject"] == subject][:k]  # first_n sampler
        for s in shots:
            ctx += mmlu_text(s) + " " + ["A", "B", "C", "D"][s["answer"]] + "\n\n"
        ctx += mmlu_text(doc)
        choices = ["A", "B", "C", "D"]
        gold = doc["answer"]
    elif task == "lambada_openai":
        ctx = " ".join(doc["text"].split(" ")[:-1])
        target = " " + doc["text"].split(" ")[-1]
        return [(ctx, target)], None, target
    elif task == "wikitext":
        return [(wikitext_detokenizer(doc),)], None, wikitext_detokenizer(doc)
    elif task == "squad_completion":
        return [(doc["text"], {"until": ["\n"], "max_gen_toks": 48})], None, doc["value"]
    elif task == "swde":
        return [(doc["text"].strip(), {"until": ["\n"], "max_gen_toks": 48})], None, doc["value"]
    else:
        raise ValueError(task)
    return [(ctx, " " + c) for c in choices], choices, gold


# ---- HFLM scoring on token ids ------------------------------------------------------------

def _log_probs(model, ids):
    with torch.no_grad():
        out = model.forward(np.array([ids], dtype=np.int64))
    return torch.log_softmax(torch.as_tensor(out)[0].double(), dim=-1)


def loglikelihood(model, ctx_ids, cont_ids, max_length):
    """(sum of log p of the continuation, is_greedy, smallest top-1 margin) of HFLM's
    _loglikelihood_tokens."""
    inp = (list(ctx_ids) + list(cont_ids))[-(max_length + 1):][:-1]
    lp = _log_probs(model, inp)[len(inp) - len(cont_ids):]
    cont = torch.tensor(cont_ids)
    ll = float(lp.gather(1, cont[:, None]).sum())
    greedy = bool((lp.argmax(dim=-1) == cont).all())
    top2 = lp.topk(2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    return ll, greedy, margin


def get_rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (token_list[window_end - max_seq_len - 1: window_end - 1],
               token_list[window_end - window_pred_len: window_end])
        predicted += window_pred_len


def make_disjoint_window(pair):
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def loglikelihood_rolling(model, ids, bos, max_length):
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(list(ids), bos, max_length, 1)]
    return sum(loglikelihood(model, a, b, max_length)[0] for a, b in windows), len(windows)


def greedy_generate(model, ctx_ids, max_gen, eos):
    """Greedy ids (HF generate, do_sample=False) until EOS or max_gen; the caller cuts at the stop
    string. Returns the ids and the smallest top-1 margin seen."""
    ids, out, margin = list(ctx_ids), [], float("inf")
    for _ in range(max_gen):
        lp = _log_probs(model, ids)[-1]
        top2 = lp.topk(2).values
        margin = min(margin, float(top2[0] - top2[1]))
        t = int(lp.argmax())
        if t == eos:
            break
        out.append(t)
        ids.append(t)
        yield list(out), margin


# ---- process_results and aggregation ------------------------------------------------------

def process_results(task, doc, choices, gold, resps, generated=None):
    if task in ("lambada_openai",):
        ll, greedy = resps[0]
        return {"perplexity": ll, "acc": int(greedy)}
    if task == "wikitext":
        ll = resps[0]
        words = len(re.split(r"\s+", doc["page"]))
        nbytes = len(doc["page"].encode("utf-8"))
        return {"word_perplexity": (ll, words), "byte_perplexity": (ll, nbytes), "bits_per_byte": (ll, nbytes)}
    if task in ("squad_completion", "swde"):
        return {"contains": max(int(bool(re.search(re.compile(re.escape(label), re.IGNORECASE), generated)))
                                for label in [doc["value"]])}
    lls = np.array([r[0] for r in resps])
    completion_len = np.array([float(len(c)) for c in choices])
    out = {"acc": 1.0 if int(np.argmax(lls)) == gold else 0.0}
    if "acc_norm" in METRICS[task]:
        out["acc_norm"] = 1.0 if int(np.argmax(lls / completion_len)) == gold else 0.0
    return out


def mean(arr):
    return sum(arr) / len(arr)


def sample_stddev(arr):
    mu = mean(arr)
    return math.sqrt(sum([(x - mu) ** 2 for x in arr]) / (len(arr) - 1))


def mean_stderr(arr):
    return sample_stddev(arr) / math.sqrt(len(arr))


def perplexity(items):
    return math.exp(-mean(items))


def weighted_mean(items):
    a, b = zip(*items)
    return sum(a) / sum(b)


def weighted_perplexity(items):
    return math.exp(-weighted_mean(items))


def bits_per_byte(items):
    return -weighted_mean(items) / math.log(2)


def bootstrap_stderr(f, xs, iters):
    """lm_eval.api.metrics.bootstrap_stderr without the process pool (same seeds, same order)."""
    res = []
    chunk_size = min(1000, iters)
    for i in range(iters // chunk_size):
        rnd = random.Random()
        rnd.seed(i)
        for _ in range(chunk_size):
            res.append(f(rnd.choices(xs, k=len(xs))))
    return sample_stddev(res)


def aggregate(task, per_doc, bootstrap_iters):
    """{metric: (value, stderr or "N/A")} from the list of process_results dicts."""
    out = {}
    for m in METRICS[task]:
        items = [d[m] for d in per_doc]
        if m == "perplexity":
            v = perplexity(items)
            se = bootstrap_stderr(perplexity, items, bootstrap_iters) if bootstrap_iters > 0 and len(items) > 1 else "N/A"
        elif m in ("word_perplexity", "byte_perplexity"):
            v, se = weighted_perplexity(items), "N/A"
        elif m == "bits_per_byte":
            v, se = bits_per_byte(items), "N/A"
        else:
            v = mean(items)
            se = mean_stderr(items) if len(items) > 1 else "N/A"
        out[m] = (v, se)
    return out


def pooled_sample_stderr(stderrs, sizes):
    pooled_sample_var = (sum([(size - 1) * stderr ** 2 * size for size, stderr in zip(sizes, stderrs)])) / (sum(sizes) - len(sizes))
    return np.sqrt(pooled_sample_var / sum(sizes))


def mmlu_group(subject_results):
    """subject_results: {subject: (n, {metric: (value, stderr)})} -> the group's {metric: (value, stderr)}
    (aggregate_subtask_metrics with weight_by_size, pooled stderr)."""
    sizes = [n for n, _ in subject_results.values()]
    out = {}
    for m in METRICS["mmlu"]:
        vals = [r[m][0] for _, r in subject_results.values()]
        ses = [r[m][1] if r[m][1] != "N/A" else 0.0 for _, r in subject_results.values()]
        out[m] = (sum(v * n for v, n in zip(vals, sizes)) / sum(sizes), float(pooled_sample_stderr(ses, sizes)))
    return out


# ---- lm_eval --model local-completions (lm_eval/models/openai_completions.py) --------------

def local_completions_payload(messages, generate=False, max_gen_toks=256, until=None, eos=None, seed=1234, model="hymba"):
    """LocalCompletionsAPI._create_payload with tokenized requests (messages: token-id lists)."""
    if generate:
        stop = list(until or [])
        if eos and eos not in stop:  # handle_stop_sequences
            stop.append(eos)
        return {"prompt": messages, "model": model, "max_tokens": max_gen_toks, "temperature": 0, "stop": stop, "seed": seed}
    return {"model": model, "prompt": messages, "temperature": 0, "max_tokens": 1, "logprobs": 1, "seed": seed, "echo": True}


def parse_logprobs(out, ctxlens):
    """LocalCompletionsAPI.parse_logprobs: (sum of the continuation's logprobs, is_greedy) per choice."""
    res = []
    for choice, ctxlen in zip(sorted(out["choices"], key=lambda c: c["index"]), ctxlens):
        assert ctxlen > 0, "Context length must be greater than 0"
        logprobs = sum(choice["logprobs"]["token_logprobs"][ctxlen:-1])
        tokens_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        top_logprobs = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        is_greedy = True
        for tok, top in zip(tokens_logprobs, top_logprobs):
            if tok != max(top.values()):
                is_greedy = False
                break
        res.append((logprobs, is_greedy))
    return res


def parse_generations(out):
    return [c["text"] for c in sorted(out["choices"], key=lambda c: c["index"])]
