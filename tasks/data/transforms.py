"""Document transforms applied before tokenization (a grid axis of the clf task, ``clf.transform``).

``invert`` reverses the order of a document's sentences (the inverted-document test of Park et al.
2022: a strategy whose advantage over ``head`` flips when the document is inverted is reading the
position of the evidence, not its content); ``shuffle_sentences`` permutes them, seeded by the data
seed and the document's own text, so every run and strategy sees the same permutation. Sentences come
from the same splitter the selection strategies use (tasks/data/sentences.py); text without sentence
punctuation needs the caller's explicit fallback (pseudo-sentences of N words), or is refused there.
"""
from __future__ import annotations

import random

TRANSFORMS = ("none", "invert", "shuffle_sentences")


def transform(text: str, how: str, seed: int = 0, fallback_words: int | None = None) -> str:
    """``text`` with its sentences reordered by ``how`` (joined by single spaces); ``none``: unchanged."""
    if how == "none":
        return text
    if how not in TRANSFORMS:
        raise ValueError(f"unknown transform {how!r}; one of {TRANSFORMS}")
    from ctxbench.tasks.data.sentences import doc_key, sentences

    parts = sentences(text, fallback_words)
    if how == "invert":
        parts.reverse()
    else:
        random.Random(f"{seed}:{doc_key(text)}").shuffle(parts)
    return " ".join(parts)
