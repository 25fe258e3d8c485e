"""Sentence spans in token space, for the selection strategies.

The text is split into sentences by pysbd (Sadvilkar & Neumann 2020, a port of
the rule-based Pragmatic Segmenter), and the character boundaries are mapped to
token boundaries through the offset mapping of the *whole* text tokenized once,
exactly as the task tokenizes it (``add_special_tokens=False``). So the spans
index into the same id sequence the task already holds, and nothing is decoded
or re-encoded.

Before pysbd sees it, the text is cut at blank lines (paragraphs; pysbd would
split there anyway) and, by default (``join_lines``), single line breaks inside
a paragraph are read as spaces: hard-wrapped e-mail and news text (20 Newsgroups
wraps at ~72 columns) would otherwise give one "sentence" per line, since pysbd
ends a sentence at every line break. Both are one-for-one character
replacements, so offsets do not move. A paragraph longer than
``MAX_CHUNK_CHARS`` is cut at whitespace first: pysbd's abbreviation pass is
quadratic in the length of what it is given (a 4,000-word unpunctuated
paragraph takes seconds), so the cut bounds the cost per document.

Token spans tile ``[0, n)``: a token belongs to the sentence in which its first
character lies; tokens before the first sentence start join the first sentence,
and a boundary that falls inside a token moves to the token's end. Sentences
that would own no token vanish (their characters join the neighbouring span).
A span's text is the text its tokens cover.

Text with no sentence punctuation at all (orange3's 20 Newsgroups copy has none) gives
pysbd nothing to cut: one "sentence" per paragraph. :func:`punctuated` tells such text
apart; a caller either refuses it (clf's ``unpunctuated: error``, the default) or asks
for the explicit fallback ``words=N``: pseudo-sentences of N words, counted by the caller.
"""
from __future__ import annotations

import bisect
import hashlib
import itertools
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib.metadata import version
from typing import Any

from ctxbench.strategies.base import DocView, Span

SPLITTER = f"pysbd=={version('pysbd')}"  # record with the task's preprocessing version
MAX_CHUNK_CHARS = 10_000

_BREAK = r"(?:\r\n|\r|\n)"
_PARAGRAPH_BREAK = re.compile(rf"{_BREAK}(?:[^\S\r\n]*{_BREAK})+")  # a line break, blank lines, a line break
_LINE_BREAK = re.compile(_BREAK)
_WHITESPACE = re.compile(r"\s")
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f]")
_WORD = re.compile(r"\S+")
FALLBACK_WORDS = 20  # the pseudo-sentence length of the unpunctuated-text fallback


def punctuated(text: str) -> bool:
    """Whether ``text`` holds any sentence-final punctuation mark (. ! ? and their CJK forms)."""
    return _SENTENCE_END.search(text) is not None


def word_starts(text: str, words: int = FALLBACK_WORDS) -> list[int]:
    """The fallback for unpunctuated text: a pseudo-sentence starts every ``words`` words."""
    return sorted({0} | {m.start() for k, m in enumerate(_WORD.finditer(text)) if k and k % words == 0})


@lru_cache(maxsize=1)
def _segmenter() -> Any:
    import pysbd

    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def _pieces(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into pieces of at most MAX_CHUNK_CHARS, at the last whitespace before the limit."""
    out = []
    while end - start > MAX_CHUNK_CHARS:
        limit = start + MAX_CHUNK_CHARS
        cut = max((m.end() for m in _WHITESPACE.finditer(text, start + MAX_CHUNK_CHARS // 2, limit)), default=limit)
        out.append((start, cut))
        start = cut
    out.append((start, end))
    return out


def sentence_starts(text: str, join_lines: bool = True, fallback_words: int | None = None) -> list[int]:
    """Sorted character offsets at which sentences start (always including 0). ``fallback_words``:
    text without sentence punctuation is cut every that many words instead (see :func:`punctuated`)."""
    if fallback_words and not punctuated(text):
        return word_starts(text, fallback_words)
    starts = {0}
    segment = _segmenter().segment
    prev = 0
    paragraphs = []
    for m in _PARAGRAPH_BREAK.finditer(text):
        paragraphs.append((prev, m.start()))
        prev = m.end()
    paragraphs.append((prev, len(text)))
    for p_start, p_end in paragraphs:
        if not text[p_start:p_end].strip():
            continue
        for a, z in _pieces(text, p_start, p_end):
            piece = text[a:z]
            if join_lines:
                piece = _LINE_BREAK.sub(lambda m: " " * len(m.group()), piece)  # same length: offsets hold
            starts.add(a)
            starts.update(a + span.start for span in segment(piece))
    return sorted(starts)


def _token_spans(char_starts: Sequence[int], offsets: Sequence[tuple[int, int]]) -> list[Span]:
    n = len(offsets)
    if n == 0:
        return []
    tok_starts: list[int] = []
    hi = 0
    for s, _ in offsets:  # running max: bisect needs them sorted, and a tokenizer may emit (0, 0) odd pieces
        hi = max(hi, s)
        tok_starts.append(hi)
    bounds = {0}
    for c in char_starts:
        t = bisect.bisect_left(tok_starts, c)  # first token that starts at or after the sentence start
        if 0 < t < n:
            bounds.add(t)
    b = sorted(bounds) + [n]
    return list(itertools.pairwise(b))


def _encode(texts: list[str], tokenizer: Any) -> list[list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"sentence spans need a fast tokenizer (offset mapping); got {type(tokenizer).__name__}")
    enc = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False, return_offsets_mapping=True)
    return [[(int(s), int(e)) for s, e in offs] for offs in enc["offset_mapping"]]


def _from_offsets(text: str, offsets: list[tuple[int, int]], join_lines: bool,
                  fallback_words: int | None = None) -> tuple[list[Span], list[str]]:
    spans = _token_spans(sentence_starts(text, join_lines, fallback_words) if offsets else [], offsets)
    texts = [text[offsets[s][0]:max(e_ for _, e_ in offsets[s:e])] for s, e in spans]
    return spans, texts


def sentence_spans(text: str, tokenizer: Any, join_lines: bool = True) -> tuple[list[Span], list[str]]:
    """Token spans of the sentences of ``text`` (tiling ``[0, n)``, in order) and their texts.

    ``n`` is ``len(tokenizer(text, add_special_tokens=False)["input_ids"])``.
    """
    return _from_offsets(text, _encode([text], tokenizer)[0], join_lines)


def doc_key(text: str) -> str:
    """A stable per-document key (for seeded choices): the text's sha256, 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def doc_view(text: str, tokenizer: Any, query: str | None = None, key: str | None = None,
             n: int | None = None, join_lines: bool = True) -> DocView:
    """The DocView the selection strategies need. ``key`` defaults to :func:`doc_key`;
    ``n`` (the length of the ids the task holds) is checked against the spans."""
    return doc_views([text], tokenizer, None if query is None else [query], None if key is None else [key],
                     None if n is None else [n], join_lines)[0]


def doc_views(texts: Sequence[str], tokenizer: Any, queries: Sequence[str | None] | None = None,
              keys: Sequence[str] | None = None, lengths: Sequence[int] | None = None,
              join_lines: bool = True, fallback_words: int | None = None) -> list[DocView]:
    """Batched :func:`doc_view` (one tokenizer call for the batch). ``fallback_words``: see
    :func:`sentence_starts`."""
    texts = list(texts)
    for name, seq in (("queries", queries), ("keys", keys), ("lengths", lengths)):
        if seq is not None and len(seq) != len(texts):
            raise ValueError(f"doc_views: {len(seq)} {name} for {len(texts)} texts")
    out = []
    for i, (text, offsets) in enumerate(zip(texts, _encode(texts, tokenizer))):
        if lengths is not None and lengths[i] != len(offsets):
            raise ValueError(f"doc_views: document {i} has {lengths[i]} ids but tokenizes to {len(offsets)} "
                             f"tokens here; build the views with the task's tokenizer and text")
        spans, sent_texts = _from_offsets(text, offsets, join_lines, fallback_words)
        out.append(DocView(
            sentences=tuple(spans),
            texts=tuple(sent_texts),
            query=None if queries is None else queries[i],
            key=doc_key(text) if keys is None else keys[i],
        ))
    return out


def sentences(text: str, fallback_words: int | None = None) -> list[str]:
    """The text cut into its sentences (stripped, empty ones dropped), for document transforms."""
    starts = sentence_starts(text, True, fallback_words) + [len(text)]
    return [p for a, z in itertools.pairwise(starts) if (p := text[a:z].strip())]
