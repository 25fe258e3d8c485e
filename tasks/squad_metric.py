"""SQuAD v1.1 exact match and F1, written to the official formula.

Same normalisation as the official ``evaluate-v1.1.py`` (lower-case, drop
ASCII punctuation, drop the articles a/an/the, collapse whitespace) and the same
per-question max over gold answers, so our numbers compare with published ones
without pulling the ``evaluate`` package and its hub download.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Mapping

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Official order: lower, remove punctuation, remove articles, fix whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _f1_one(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def _golds(golds: Iterable[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answers: SQuAD v1.1 scoring needs at least one")
    return golds


def exact_match(pred: str, golds: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _golds(golds)))


def f1(pred: str, golds: Iterable[str]) -> float:
    """Token-overlap F1 in [0, 1], the max over gold answers."""
    return max(_f1_one(pred, g) for g in _golds(golds))


def squad_scores(preds: Mapping[str, str], refs: Mapping[str, Iterable[str]], *,
                 allow_missing: bool = False) -> dict[str, float]:
    """Corpus EM and F1 on a 0-100 scale, averaged over every id in ``refs``.

    A missing prediction raises unless ``allow_missing`` (then it scores 0, as
    the official script does), so a dropped batch cannot pass unnoticed.
    Predictions for ids not in ``refs`` are ignored.
    """
    if not refs:
        raise ValueError("no references to score")
    missing = [i for i in refs if i not in preds]
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} of {len(refs)} questions have no prediction (first: {missing[:3]}); "
                         f"pass allow_missing=True to score them 0 like the official script")
    em = f = 0.0
    for qid, golds in refs.items():
        if qid in preds:
            em += exact_match(preds[qid], golds)
            f += f1(preds[qid], golds)
    n = len(refs)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f / n}


__all__ = ["exact_match", "f1", "normalize_answer", "squad_scores"]
