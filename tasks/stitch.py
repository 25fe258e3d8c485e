"""Fold per-window token logits back onto one document (token classification).

A strategy returns windows: each a sequence of half-open ``(start, end)`` spans
into the document's sub-token sequence, joined in order into one model input.
The caller runs the model per window, strips special tokens, and hands the rows
here: ``window_logits[w]`` has one row per token of ``windows[w]``'s concatenated
spans, in the same order. Two rules:

- ``stitch_max_context``: a token takes its logits from the window where it has
  the most context, score = min(left, right) within that window's concatenated
  tokens (the BERT/SQuAD "max context" rule). Ties go to the earlier window;
  unlike BERT's ``+ 0.01 * window_len`` we do not favour longer windows, so the
  result depends only on positions, which keeps it easy to reason about.
- ``stitch_mean``: the mean of the logits over every window that holds the token.

And one word- and entity-level rule, for like-for-like checks against Hugging Face:

- ``stitch_longest_entity``: the token-classification pipeline's rule
  (``aggregation_strategy="first"`` with ``stride``): each window is decoded on its
  own (a word takes the label of its first sub-token *in that window*, its score the
  softmax probability of that label; consecutive words group into entities, an
  ``I-X`` after anything but ``X`` starting a new one, scored by the mean word
  score); then, over all windows in order of start, of two overlapping entities the
  longer one is kept (equal length: the higher score; equal score: the earlier).
  Spans and lengths are in characters of the words joined by spaces, as the
  pipeline measures them on pre-split words, when sub-token offsets are given
  (else in words); with the pipeline's ``is_subword`` flags a word's pieces group
  as it groups them (WordPiece punctuation inside a word starts a new piece-group).

Tokens that no window holds get zeros and ``seen=False``; the caller decides
what they become (``ctxbench.tasks.data.ner_data.subtoken_to_word`` maps them to ``"O"``).
Pure torch, no model.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

Span = tuple[int, int]
WindowSpans = Sequence[Span]
METHODS = ("max_context", "mean")  # token-level rules; stitch_longest_entity is word-level


def window_positions(window: WindowSpans | Span, n_tokens: int) -> torch.Tensor:
    """Document positions of a window's concatenated tokens, checked against the document."""
    if len(window) == 2 and all(isinstance(x, (int, np.integer)) for x in window):
        window = (tuple(window),)  # a bare (start, end) span is a one-span window
    parts = []
    for span in window:
        start, end = int(span[0]), int(span[1])
        if not 0 <= start <= end <= n_tokens:
            raise ValueError(f"span {(start, end)} is outside the document's {n_tokens} tokens")
        parts.append(torch.arange(start, end, dtype=torch.long))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _prepare(
    n_tokens: int, windows: Sequence[WindowSpans], window_logits: Sequence[torch.Tensor], n_labels: int | None
) -> tuple[list[torch.Tensor], list[torch.Tensor], int, torch.dtype]:
    """Positions and 2-D logits per window, with shape checks (a mismatch is a caller bug, so fail loud)."""
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    if len(windows) != len(window_logits):
        raise ValueError(f"{len(windows)} windows but {len(window_logits)} logit tensors")
    positions, logits = [], []
    for w, (window, rows) in enumerate(zip(windows, window_logits)):
        pos = window_positions(window, n_tokens)
        rows = torch.as_tensor(rows)
        if rows.dim() != 2 or rows.shape[0] != pos.numel():
            raise ValueError(
                f"window {w}: spans hold {pos.numel()} tokens but logits have shape {tuple(rows.shape)}; "
                f"expected ({pos.numel()}, n_labels) without special tokens"
            )
        positions.append(pos)
        logits.append(rows)
    widths = {int(r.shape[1]) for r in logits}
    if n_labels is not None:
        widths.add(int(n_labels))
    if len(widths) > 1:
        raise ValueError(f"windows disagree on the number of labels: {sorted(widths)}")
    if not widths:
        raise ValueError("no windows: pass n_labels so the empty result has a shape")
    dtype = logits[0].dtype if logits and logits[0].is_floating_point() else torch.float32
    return positions, logits, widths.pop(), dtype


def context_scores(length: int) -> torch.Tensor:
    """min(left, right) context of each position in a window of ``length`` tokens."""
    idx = torch.arange(length, dtype=torch.long)
    return torch.minimum(idx, length - 1 - idx)


def stitch_max_context(
    n_tokens: int,
    windows: Sequence[WindowSpans],
    window_logits: Sequence[torch.Tensor],
    n_labels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the logits of the window giving it the most context; returns ``(logits (n, C), seen (n,))``.

    Why: a token near a window edge is predicted with one-sided context; the
    window where it sits most centrally gives the best-informed prediction.
    """
    positions, logits, n_labels, dtype = _prepare(n_tokens, windows, window_logits, n_labels)
    out = torch.zeros(n_tokens, n_labels, dtype=dtype)
    best = torch.full((n_tokens,), -1, dtype=torch.long)
    for pos, rows in zip(positions, logits):
        if pos.numel() == 0:
            continue
        score = context_scores(pos.numel())
        if torch.unique(pos).numel() != pos.numel():
            # A token repeated inside one window: keep its best occurrence (earliest on ties),
            # since tensor assignment with duplicate indices has no defined winner.
            p, s = pos.numpy(), score.numpy()
            order = np.lexsort((np.arange(len(p)), -s, p))
            first = np.ones(len(order), dtype=bool)
            first[1:] = p[order][1:] != p[order][:-1]
            keep = torch.from_numpy(order[first])
            pos, score, rows = pos[keep], score[keep], rows[keep]
        better = score > best[pos]  # strict: ties stay with the earlier window
        if better.any():
            idx = pos[better]
            best[idx] = score[better]
            out[idx] = rows[better].to(dtype)
    return out, best >= 0


def stitch_mean(
    n_tokens: int,
    windows: Sequence[WindowSpans],
    window_logits: Sequence[torch.Tensor],
    n_labels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the mean logits over every window holding it; returns ``(logits (n, C), seen (n,))``.

    Why: averaging overlapping windows smooths edge effects without choosing one.
    A token repeated inside one window counts once per occurrence.
    """
    positions, logits, n_labels, dtype = _prepare(n_tokens, windows, window_logits, n_labels)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    total = torch.zeros(n_tokens, n_labels, dtype=acc_dtype)
    count = torch.zeros(n_tokens, dtype=torch.long)
    for pos, rows in zip(positions, logits):
        if pos.numel() == 0:
            continue
        total.index_add_(0, pos, rows.to(acc_dtype))
        count += torch.bincount(pos, minlength=n_tokens)
    seen = count > 0
    mean = total / count.clamp(min=1).unsqueeze(1).to(acc_dtype)
    return mean.to(dtype), seen


def stitch(
    n_tokens: int,
    windows: Sequence[WindowSpans],
    window_logits: Sequence[torch.Tensor],
    method: Literal["max_context", "mean"] = "max_context",
    n_labels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch by name, so configs can pick the rule as a string."""
    if method == "max_context":
        return stitch_max_context(n_tokens, windows, window_logits, n_labels)
    if method == "mean":
        return stitch_mean(n_tokens, windows, window_logits, n_labels)
    raise ValueError(f"stitch method must be one of {METHODS}, got {method!r}")


def _tag(label: str) -> tuple[str, str]:
    """(B|I, type) as the pipeline's ``get_tag`` reads a label: ``O`` is an I- of type ``O``."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


Entity = tuple[int, int, str, float, int, int]  # (char start, char end, type, score, first word, last word + 1)


def window_entities(positions: Sequence[int], logits: torch.Tensor, word_ids: Sequence[int],
                    labels: Sequence[str], offsets: Sequence[tuple[int, int]] | None = None,
                    subword: Sequence[bool] | None = None) -> list[Entity]:
    """One window decoded alone, as the pipeline decodes one chunk.

    Consecutive sub-tokens of one word form a word piece-group (a word cut by the
    window's start is a group of its continuation pieces; with ``subword`` flags, only
    pieces flagged as continuing join the group before them, as the pipeline reads
    them; without, every later piece of a word does); a group takes the label
    of its first sub-token and that label's softmax probability as its score;
    groups join into an entity while the type repeats under ``I-`` (``B-`` or a
    new type starts one; an ``I-X`` after ``O`` starts one), scored by the mean.
    An entity's span is in characters of ``offsets`` (each sub-token's span in the
    joined words); without offsets a sub-token spans its word, ``(w, w + 1)``.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    score, label = probs.max(dim=-1)
    groups: list[list] = []  # [word, label, score, char start, char end]
    prev = None
    for k, pos in enumerate(positions):
        pos = int(pos)
        w = word_ids[pos]
        if w is None:
            continue
        a, b = offsets[pos] if offsets is not None else (w, w + 1)
        joins = subword[pos] if subword is not None else True
        if prev is not None and word_ids[prev] == w and prev + 1 == pos and joins:
            groups[-1][4] = b  # a continuation piece: extends its word's span, keeps the first piece's label
        else:
            groups.append([w, labels[int(label[k])], float(score[k]), a, b])
        prev = pos
    out: list[Entity] = []
    run: list[list] = []

    def close() -> None:
        typ = _tag(run[0][1])[1]
        if typ != "O":
            out.append((run[0][3], run[-1][4], typ, sum(g[2] for g in run) / len(run), run[0][0], run[-1][0] + 1))

    for g in groups:
        bi, typ = _tag(g[1])
        if run and (bi == "B" or typ != _tag(run[-1][1])[1]):
            close()
            run = []
        run.append(g)
    if run:
        close()
    return out


def merge_longest(entities: Sequence[Entity]) -> list[Entity]:
    """The pipeline's ``aggregate_overlapping_entities``: sorted (stably) by start, an entity that
    starts inside the one kept before it replaces it when it is longer, or as long with a higher score."""
    if not entities:
        return []
    ordered = sorted(entities, key=lambda e: e[0])
    kept, prev = [], ordered[0]
    for e in ordered:
        if prev[0] <= e[0] < prev[1]:
            if e[1] - e[0] > prev[1] - prev[0] or (e[1] - e[0] == prev[1] - prev[0] and e[3] > prev[3]):
                prev = e
        else:
            kept.append(prev)
            prev = e
    kept.append(prev)
    return kept


def entity_tags(entities: Sequence[tuple[str, Sequence[int]]], n_words: int) -> list[str]:
    """BIO tags per word from entities given as ``(type, words it touches)`` in order of start:
    ``B-`` on an entity's first word, ``I-`` after; a word keeps the first tag it gets."""
    tags = ["O"] * n_words
    for typ, words in entities:
        for j, k in enumerate(words):
            if tags[k] == "O":
                tags[k] = ("B-" if j == 0 else "I-") + typ
    return tags


def stitch_longest_entity(
    n_tokens: int,
    word_ids: Sequence[int],
    n_words: int,
    windows: Sequence[WindowSpans],
    window_logits: Sequence[torch.Tensor],
    labels: Sequence[str],
    offsets: Sequence[tuple[int, int]] | None = None,
    subword: Sequence[bool] | None = None,
) -> tuple[list[str], list[bool]]:
    """Per word, a BIO tag by the pipeline's entity rule (see the module docstring) and whether
    any window held one of its sub-tokens; returns ``(tags, seen)``. ``offsets``: each sub-token's
    character span (lengths in characters, as the pipeline measures them), else words; ``subword``:
    which pieces continue the one before (``ctxbench.tasks.data.ner_data.pipeline_subword``), else all later pieces."""
    if len(word_ids) != n_tokens or (offsets is not None and len(offsets) != n_tokens):
        raise ValueError(f"{len(word_ids)} word ids and {len(offsets or word_ids)} offsets for {n_tokens} tokens")
    positions, logits, _, _ = _prepare(n_tokens, windows, window_logits, len(labels))
    found, seen = [], [False] * n_words
    for pos, rows in zip(positions, logits):
        found += window_entities(pos.tolist(), rows, word_ids, labels, offsets, subword)
        for k in pos.tolist():
            if word_ids[k] is not None:
                seen[word_ids[k]] = True
    kept = merge_longest(found)
    return entity_tags([(e[2], range(e[4], e[5])) for e in kept], n_words), seen


__all__ = ["METHODS", "context_scores", "entity_tags", "merge_longest", "stitch", "stitch_longest_entity",
           "stitch_max_context", "stitch_mean", "window_entities", "window_positions"]
