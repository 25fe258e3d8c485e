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

Tokens that no window holds get zeros and ``seen=False``; the caller decides
what they become (``tasks.ner_data.subtoken_to_word`` maps them to ``"O"``).
Pure torch, no model.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

Span = tuple[int, int]
WindowSpans = Sequence[Span]
METHODS = ("max_context", "mean")


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


__all__ = ["METHODS", "context_scores", "stitch", "stitch_max_context", "stitch_mean", "window_positions"]
