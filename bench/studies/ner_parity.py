"""NER peer parity and speed: our sliding-window tagger vs Hugging Face's token-classification pipeline.

One fine-tuned model (MiniLM fine-tuned on news_silver by the NER task's own training
path with sliding windows, exported with ``save_pretrained`` as an
``AutoModelForTokenClassification``, cached) tags the same long news_silver test
articles twice, side by side in one process:

- ours: ``ctxbench.tasks.ner.tag_documents`` with ``sliding(window=W, step=W-overlap, pool=max)``
  (max-context stitching), length-sorted batches;
- theirs: ``pipeline("token-classification", stride=overlap, aggregation_strategy="first")``
  on the same word lists (``is_split_into_words=True``) with ``tokenizer.model_max_length =
  W + special tokens``, so each chunk holds W context tokens and consecutive chunks share
  ``overlap`` tokens (Hugging Face's ``stride`` is the overlap; the step is W - overlap).

Both are scored against the silver labels (seqeval, strict IOB2 and lenient conlleval-style),
timed as the median of interleaved repeats after a warm-up, and compared.
Writes ``results/ner/parity.md`` and ``parity.json``.

    python -m ctxbench.bench.studies.ner_parity   # about 5 minutes on 2 CPU cores (less once the model is cached)
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ctxbench.bench.studies.ner_parity", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--dataset", default="news_silver", help="NER data set (built in, or a local folder of "
                   "train/validation/test JSON lines with tokens and ner_tags, e.g. the GPU check's bundle)")
    p.add_argument("--window", type=int, default=128, help="context tokens per window (W)")
    p.add_argument("--overlap", type=int, default=32, help="tokens shared by consecutive windows (HF stride)")
    p.add_argument("--docs", type=int, default=40, help="long test articles tagged by both")
    p.add_argument("--train-docs", type=int, default=150)
    p.add_argument("--val-docs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--max-windows-train", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32, help="our inference windows per batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results/ner")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (both taggers run on it)")
    return p.parse_args(argv)


def train_spec(args: argparse.Namespace):
    from ctxbench.bench.config import Limits, RunSpec, StrategySpec, Train

    strategy = StrategySpec("sliding", tuple(sorted({"window": args.window, "step": args.window - args.overlap,
                                                     "pool": "max"}.items())))
    return RunSpec(task="ner", dataset=getattr(args, "dataset", "news_silver"), model=args.model, mode="finetune",
                   strategy=strategy,
                   budget=args.window, seed=args.seed,
                   limits=Limits(train=args.train_docs, val=args.val_docs, test=None),
                   train=Train(lr=args.lr, epochs=args.epochs, batch_size=16, patience=args.epochs,
                               max_windows_train=args.max_windows_train),
                   batch_size=args.batch_size, device="cpu")


def fine_tuned(args: argparse.Namespace, ctx) -> tuple[str, Any, dict[str, Any]]:
    """The exported model folder (trained now, or reused from the cache), the prepared data, train info."""
    from ctxbench.tasks.model.encoder import seed_everything
    from ctxbench.tasks.cache import cache_dir, content_hash
    from ctxbench.tasks.ner import NER, TokenHead, export_token_classifier

    task = NER()
    spec = train_spec(args)
    p = task.prepare(spec, ctx)
    path = cache_dir("ner_models") / content_hash(spec.to_dict(), task.version, p.data.key)
    info_path = path / "ctxbench_train.json"
    if info_path.exists():
        return str(path), p, {**json.loads(info_path.read_text()), "cached": True}
    seed_everything(spec.seed)
    head = TokenHead(p.enc.model.config.hidden_size, len(p.data.labels), None, spec.pooler, spec.train.dropout)
    model, info = task.train(spec, ctx, p, None, task._finetune_item(p), head)
    special = p.enc.tokenizer.num_special_tokens_to_add(pair=False)
    export_token_classifier(model, p.data.labels, p.enc.tokenizer, path, max_length=args.window + special)
    info_path.write_text(json.dumps(info, indent=1))
    return str(path), p, {**info, "cached": False}


def entities_to_tags(entities: list[dict], words: list[str]) -> list[str]:
    """Pipeline entity groups (character spans in ``" ".join(words)``) -> one BIO tag per word:
    every word the span overlaps, B- on the first, I- after; a word keeps its first tag."""
    from ctxbench.tasks.data.ner_data import word_starts
    from ctxbench.tasks.stitch import entity_tags

    starts = word_starts(words)
    def touched(e: dict) -> list[int]:
        return [k for k, s in enumerate(starts) if s < e["end"] and e["start"] < s + max(1, len(words[k]))]

    hits = [(e["entity_group"], touched(e)) for e in sorted(entities, key=lambda e: e["start"])]
    return entity_tags(hits, len(words))


def scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    out = {}
    for name, kw in (("strict", {"mode": "strict", "scheme": IOB2}), ("lenient", {})):
        out[f"f1_{name}"] = float(f1_score(gold, pred, zero_division=0, **kw))
        out[f"precision_{name}"] = float(precision_score(gold, pred, zero_division=0, **kw))
        out[f"recall_{name}"] = float(recall_score(gold, pred, zero_division=0, **kw))
    return out


def orphans(tags: list[list[str]]) -> int:
    """I- tags that follow neither B- nor I- of the same type (not entities under strict IOB2)."""
    n = 0
    for doc in tags:
        prev = "O"
        for t in doc:
            n += t.startswith("I-") and prev[2:] != t[2:]
            prev = t
    return n


def overlap_words(tokenizer, words: list[str], strategy, budget: int) -> set[int]:
    """Words whose first sub-token lies in more than one of the strategy's windows (where stitching rules
    differ)."""
    from ctxbench.tasks.data.ner_data import align

    al = align(tokenizer, words)
    cover = [0] * len(al.ids)
    for w in strategy.windows(len(al.ids), budget):
        for s, e in w:
            for k in range(s, e):
                cover[k] += 1
    first, out = set(), set()
    for k, wid in enumerate(al.word_ids):
        if wid not in first:
            first.add(wid)
            if cover[k] > 1:
                out.add(wid)
    return out


def main(argv: list[str] | None = None) -> int:
    import transformers
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    import ctxbench.strategies as strategies
    from ctxbench.tasks.model.measure import environment
    from ctxbench.tasks.model.encoder import pick_device
    from ctxbench.tasks.cache import atomic_write_text
    from ctxbench.tasks import Context
    from ctxbench.tasks.ner import from_token_classifier, tag_documents

    args = parse_args(argv)
    if not 0 <= args.overlap < args.window:
        print("ner_parity: need 0 <= overlap < window", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    threads = torch.get_num_threads()
    ctx = Context(device=device, progress=True)
    t0 = time.perf_counter()
    path, p, train_info = fine_tuned(args, ctx)
    train_wall = time.perf_counter() - t0
    print(f"model: {path} ({'cached' if train_info['cached'] else f'fine-tuned in {train_wall:.0f}s'}; "
          f"best val F1 {train_info['best_val_f1']:.3f})")

    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForTokenClassification.from_pretrained(path, attn_implementation="sdpa").eval().to(device)
    special = tokenizer.num_special_tokens_to_add(pair=False)
    assert tokenizer.model_max_length == args.window + special, tokenizer.model_max_length
    labels = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    strategy = strategies.build("sliding", window=args.window, step=args.window - args.overlap, pool="max")
    # the pipeline's windows (the last one short) and its entity rule: the like-for-like configuration
    hf_like = strategies.build("sliding", window=args.window, overlap=args.overlap, last="short", pool="max")

    # the long documents: test articles longer than one window, in a fixed order
    test = [d for d, ids in zip(p.data.docs["test"], p.data.ids["test"]) if len(ids) > args.window]
    docs = test[: args.docs]
    words = [d.words for d in docs]
    gold = [d.tags for d in docs]
    n_words = sum(len(w) for w in words)
    n_tokens = sum(len(p.data.ids["test"][p.data.docs["test"].index(d)]) for d in docs)

    hf16 = copy.deepcopy(hf).to(torch.bfloat16)  # the pipeline's half-precision twin: weights cast to bf16

    def pipe(model, batch_size: int = 1):
        return pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first",
                        stride=args.overlap, device=device, batch_size=batch_size)

    def ours(strat, rule: str, precision: str, empty_words: str):
        model = from_token_classifier(hf, device, tokenizer.pad_token_id, precision)
        return lambda ws: tag_documents(model, tokenizer, ws, strat, args.window, labels, args.batch_size, device,
                                        stitch_rule=rule, empty_words=empty_words)

    def theirs(pl):
        return lambda ws: [entities_to_tags(ents, w) for ents, w in zip(pl(ws, is_split_into_words=True), ws)]

    taggers = {
        OURS_EQ: ours(hf_like, "longest_entity", "float32", "drop"),
        REF: theirs(pipe(hf)),
        f"pipeline (batch_size={args.batch_size})": theirs(pipe(hf, args.batch_size)),
        OURS_DEFAULT: ours(strategy, "auto", "float32", "unk"),
        OURS_EQ16: ours(hf_like, "longest_entity", "bfloat16", "drop"),
        REF16: theirs(pipe(hf16)),
    }
    # warm-up on two documents, then interleaved timed repeats
    for tag in taggers.values():
        tag(words[:2])
    times: dict[str, list[float]] = {k: [] for k in taggers}
    outputs: dict[str, list[list[str]]] = {}
    with torch.inference_mode():
        for r in range(args.repeats):
            for name, tag in taggers.items():
                t = time.perf_counter()
                outputs[name] = tag(words)
                times[name].append(time.perf_counter() - t)
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()))

    med = {k: statistics.median(v) for k, v in times.items()}
    sc = {k: scores(gold, outputs[k]) for k in outputs}
    # our default tags repaired the way the pipeline groups them (an orphan I-X starts an entity)
    sc["ours, ctxbench defaults, orphan I- read as entity starts"] = scores(
        gold, [repair_orphans(t) for t in outputs[OURS_DEFAULT]])

    overlaps = [overlap_words(tokenizer, w, hf_like, args.window) for w in words]  # once per document

    def n_diff(a: str, b: str, only_overlaps: bool = False) -> int:
        return sum(1 for x, y, ov in zip(outputs[a], outputs[b], overlaps)
                   for k, (u, v) in enumerate(zip(x, y)) if u != v and (not only_overlaps or k in ov))

    def listing(a: str, b: str, limit: int = 40) -> list[dict[str, Any]]:
        """Every word the two tag differently (up to ``limit``), with its neighbours and the gold tag."""
        rows = []
        for d, d_words, x, y, g, ov in zip(docs, words, outputs[a], outputs[b], gold, overlaps):
            empty = [k for k, w in enumerate(d_words) if not tokenizer(w, add_special_tokens=False)["input_ids"]]
            for k, (u, v) in enumerate(zip(x, y)):
                if u != v:
                    rows.append({"doc": d.id, "word": k, "text": " ".join(d_words[max(0, k - 2): k + 3]),
                                 "this word": d_words[k], "ours": u, "pipeline": v, "gold": g[k],
                                 "in overlap": k in ov, "after an empty word": bool(empty and empty[0] < k)})
        return rows[:limit] + [{"total": len(rows), "after an empty word": sum(r["after an empty word"]
                                                                              for r in rows)}]

    result = {
        "model": path, "train": train_info, "window": args.window, "overlap": args.overlap,
        "step": args.window - args.overlap, "docs": len(docs), "words": n_words, "subtokens": n_tokens,
        "threads": threads, "batch_size": args.batch_size, "repeats": args.repeats,
        "seconds_median": med, "seconds_all": times,
        "words_per_s": {k: n_words / v for k, v in med.items()},
        "scores": sc,
        "speedups": {f"{a} / {b}": med[b] / med[a] for a, b in speed_pairs(args.batch_size)},
        "f1_diff_points": {f"{a} - {b}": 100 * (sc[a]["f1_strict"] - sc[b]["f1_strict"]) for a, b in F1_PAIRS},
        "words_differing": {f"{a} vs {b}": n_diff(a, b) for a, b in F1_PAIRS},
        "words_differing_in_overlaps": {f"{a} vs {b}": n_diff(a, b, True) for a, b in F1_PAIRS},
        "orphan_inside": {k: orphans(outputs[k]) for k in (OURS_DEFAULT, OURS_EQ, REF)},
        "differences_equivalent": listing(OURS_EQ, REF),
        "env": {k: v for k, v in environment(device).items() if k in ("device", "threads", "versions", "cpu")},
        "transformers": transformers.__version__, "data_label": "silver",
    }
    result["targets"] = targets(result)
    out_dir = Path(args.out)
    atomic_write_text(out_dir / "parity.json", json.dumps(result, indent=1, default=str) + "\n")
    md = render(result)
    atomic_write_text(out_dir / "parity.md", md)
    print(md)
    return 0 if all(t["pass"] for t in result["targets"]) else 1


F1_TOLERANCE_POINTS = 0.5  # the bar: entity-level F1 within 0.5 points of the pipeline's
MIN_SPEEDUP = 2.0  # ... and at least twice its throughput

OURS_EQ = "ours, pipeline-equivalent (HF windows, longest_entity, empty words dropped)"
OURS_DEFAULT = "ours, ctxbench defaults (max-context, full last window)"
OURS_EQ16 = "ours, pipeline-equivalent, bf16 autocast"
REF = "pipeline (batch_size=1, its default)"
REF16 = "pipeline (batch_size=1), bf16 weights"
F1_PAIRS = ((OURS_EQ, REF), (OURS_DEFAULT, REF), (OURS_EQ16, REF))


def speed_pairs(batch_size: int) -> tuple[tuple[str, str], ...]:
    """(ours, theirs) throughput ratios reported; the first three are targets (same precision)."""
    return ((OURS_EQ, REF), (OURS_EQ, f"pipeline (batch_size={batch_size})"), (OURS_EQ16, REF16), (OURS_EQ16, REF))


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The parity bars, like for like (same windows, same rule, same precision), checked against
    what was measured (the verdicts, not prose)."""
    d = r["f1_diff_points"][f"{OURS_EQ} - {REF}"]
    out = [{"what": f"|strict entity F1 ({OURS_EQ}) - F1 ({REF})| <= {F1_TOLERANCE_POINTS} points",
            "value": abs(d), "pass": abs(d) <= F1_TOLERANCE_POINTS}]
    for name, x in list(r["speedups"].items())[:3]:
        out.append({"what": f"throughput {name} >= {MIN_SPEEDUP}", "value": x, "pass": x >= MIN_SPEEDUP})
    return out


def repair_orphans(tags: list[str]) -> list[str]:
    """An orphan ``I-X`` (after ``O`` or another type) becomes ``B-X``: what the pipeline's
    ``group_entities`` does when it starts a new entity group at such a tag."""
    out, prev = [], "O"
    for t in tags:
        out.append("B-" + t[2:] if t.startswith("I-") and prev[2:] != t[2:] else t)
        prev = t
    return out


def render(r: dict[str, Any]) -> str:
    sc = r["scores"]
    rows = ["| tagger | strict F1 | strict P | strict R | lenient F1 | seconds (median) | words/s |",
            "|---|---|---|---|---|---|---|"]
    for name, s in sc.items():
        secs = r["seconds_median"].get(name)
        secs_txt = f"{secs:.2f}" if secs else "–"
        wps = f"{r['words_per_s'][name]:.0f}" if name in r["words_per_s"] else "–"
        rows.append(f"| {name} | {s['f1_strict']:.4f} | {s['precision_strict']:.4f} | {s['recall_strict']:.4f} | "
                    f"{s['f1_lenient']:.4f} | {secs_txt} | {wps} |")
    speed = "\n".join(f"| {k} | {v:.2f}x |" for k, v in r["speedups"].items())
    diffs = "\n".join(f"| {k} | {v:+.2f} | {r['words_differing'][k.replace(' - ', ' vs ')]} | "
                      f"{r['words_differing_in_overlaps'][k.replace(' - ', ' vs ')]} |"
                      for k, v in r["f1_diff_points"].items())
    t = r["train"]
    verdicts = "\n".join(f"- **{'PASS' if x['pass'] else 'FAIL'}**: {x['what']} (measured {x['value']:.2f})"
                         for x in r.get("targets", []))
    name = r["model"].rsplit("/", 1)[-1]
    orph = r["orphan_inside"]
    slow = [x["what"] for x in r.get("targets", [])[1:] if not x["pass"]]
    diff_rows = ["| doc | word | text around it | word | ours | pipeline | gold | in an overlap "
                 "| after an empty word |",
                 "|---|---|---|---|---|---|---|---|---|"]
    diff_rows += [f"| {x['doc']} | {x['word']} | {x['text']} | {x['this word']} | {x['ours']} | {x['pipeline']} | "
                  f"{x['gold']} | {'yes' if x['in overlap'] else 'no'} | "
                  f"{'yes' if x['after an empty word'] else 'no'} |"
                  for x in r["differences_equivalent"][:-1]]
    total = r["differences_equivalent"][-1]
    diff_table = "\n".join(diff_rows)
    if total["total"]:
        left = f"""What is left between the pipeline-equivalent configuration and the pipeline is listed word by word
below: {total['total']} words, {total['after an empty word']} of them after a word with zero sub-tokens in the
same document (a control or format character such as "\\u200b", or a replacement character; with
`empty_words=unk` such a word takes one unk token where the pipeline's tokenizer drops it, and every later
window of the two systems then starts one token apart). The bf16 rows show what reduced precision changes:
their tags are compared with the float32 pipeline's.

{diff_table}"""
    else:
        left = f"""Nothing is left between the pipeline-equivalent configuration and the pipeline: all {r['words']}
words get the pipeline's tag. The bf16 rows show what reduced precision changes: their tags are compared
with the float32 pipeline's."""
    cpu_note = (" On this device the forward passes dominate both systems, and batching buys little: "
                f"{len(slow)} of the speed targets are missed." if slow else "")
    return f"""# NER peer parity: ctxbench vs the Hugging Face token-classification pipeline
(news_silver, **silver** labels)

Generated by `python -m ctxbench.bench.studies.ner_parity`; do not edit.

Same fine-tuned model ({name}: MiniLM fine-tuned on {t['train_examples']} news_silver
training windows, {t['epochs_run']} epochs, best validation F1 {t['best_val_f1']:.3f}), same {r['docs']} long
news_silver test articles ({r['words']} words, {r['subtokens']} sub-tokens), windows of {r['window']} context
tokens with {r['overlap']} overlap (step {r['step']}; the pipeline's `stride={r['overlap']}` with
`tokenizer.model_max_length={r['window']}+special tokens`), word lists in (`is_split_into_words=True`),
`aggregation_strategy="first"`. Scores against the spaCy **silver** labels; {r['env'].get('device', 'cpu')},
{r['threads']} threads, median of {r['repeats']} interleaved repeats after a warm-up, transformers
{r['transformers']}.

Three ctxbench configurations: **pipeline-equivalent** (`sliding(last=short)`, the pipeline's window
placement; `ner.stitch=longest_entity`, its entity rule: each window decoded alone, overlapping entities
resolved longest first, in characters; `ner.empty_words=drop`: a word with no sub-token keeps none, as the
pipeline's tokenizer leaves it; a test checks this reproduces the pipeline's tags exactly on a random
model), the same in **bf16** autocast (`precision: bfloat16`), and **ctxbench's defaults** (max-context
stitching of token logits, the last window full length and aligned to the end, an unk token for a word
with no sub-token).

{chr(10).join(rows)}

| entity F1 difference (points, strict IOB2) | points | words tagged differently | of them in window overlaps |
|---|---|---|---|
{diffs}

| throughput ratio | |
|---|---|
{speed}

Targets, like for like (same windows, same rule, same precision), checked by the script (exit code 1 when
one fails):

{verdicts}

Where ctxbench's defaults differ from the pipeline:

- **Stitching.** In an overlap the defaults take each token from the window where it has the most context on
  both sides; the pipeline keeps every chunk's entities and, where entities of two chunks overlap, the longer
  one (then the higher score). Outside overlaps both read the same logits.
- **Orphan I- tags.** The defaults score argmax tags as they are: under strict IOB2 an `I-X` after `O` is no
  entity (the defaults have {orph[OURS_DEFAULT]}). The pipeline's grouping starts an entity at such a tag, so its
  output holds only {orph[REF]}; the row "orphan I- read as entity starts" applies that grouping to the
  defaults' tags.
- **Window placement.** The defaults' last window is full length and aligned to the document's end; the
  pipeline's starts at the next multiple of the step and is short.

{left}

Speed: ctxbench tokenizes each document once, cuts windows as spans of ids, runs length-sorted batches of
{r['batch_size']} windows under `inference_mode`, and stitches with tensor ops; the pipeline tokenizes with
offsets, runs one chunk per forward by default, and post-processes every token in Python (softmax in numpy,
per-token dicts, word and entity grouping).{cpu_note}
"""


if __name__ == "__main__":
    sys.exit(main())
