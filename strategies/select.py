"""Shared sentence selection: score sentences, fill a token budget, keep document order.

Selection strategies are still span arithmetic: the task adapter hands them the
token spans of the document's sentences (``DocView.sentences``, tiling
``[0, n)``) and their texts; a scorer ranks the sentences and :func:`fill` turns
the ranking into one window. Nothing is decoded or re-encoded.

The fill rule (one rule for every selection strategy):

1. Walk the sentences best first. A sentence that fits the budget left is taken
   whole; one that does not fit is skipped and the walk goes on with the next
   (a shorter, lower-ranked sentence may still fit).
2. If budget is left after the walk, the best-ranked skipped sentence fills it
   with its first tokens (a prefix, so the kept text reads from a sentence start).

So when ``n > budget`` the window holds exactly ``budget`` tokens (every skipped
sentence is longer than what is left, so its prefix can fill it), is never
empty, and never exceeds the budget. The spans are emitted in document order,
adjacent ones merged.

Ties in a score are broken by document position (earlier first), so an
uninformative scorer (all scores equal) degrades to ``head``.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np

from ctxbench.strategies.base import ConfigError, DocView, Span, Strategy, Window, check_budget

SELECTORS = ("textrank", "tfidf", "random")


# ---------------------------------------------------------------- input checks


def sentences_of(name: str, n: int, doc: DocView | None,
                 texts: bool = True) -> tuple[tuple[Span, ...], tuple[str, ...]]:
    """The document's sentence spans (checked to tile ``[0, n)``) and, if asked, texts."""
    if doc is None or doc.sentences is None:
        raise ConfigError(f"{name}: needs sentence spans; build the DocView with tasks.sentences.doc_view(...)")
    spans = tuple((int(s), int(e)) for s, e in doc.sentences)
    prev = 0
    for s, e in spans:
        if s != prev or e < s:
            raise ConfigError(f"{name}: sentence spans must tile [0, n) in order; got {s, e} after end {prev}")
        prev = e
    if prev != n:
        raise ConfigError(f"{name}: sentence spans end at {prev} but the document has {n} tokens "
                          f"(were the spans built from the same tokenization as the ids?)")
    if not texts:
        return spans, ()
    if doc.texts is None or len(doc.texts) != len(spans):
        raise ConfigError(f"{name}: needs one text per sentence span "
                          f"({0 if doc.texts is None else len(doc.texts)} texts for {len(spans)} spans)")
    return spans, tuple(doc.texts)


def clip(spans: Sequence[Span], texts: Sequence[str], lo: int) -> tuple[list[Span], list[str]]:
    """Sentences restricted to ``[lo, n)``; a sentence straddling ``lo`` keeps its tail (and its whole text)."""
    out_s: list[Span] = []
    out_t: list[str] = []
    for i, (s, e) in enumerate(spans):
        if e > lo:
            out_s.append((max(s, lo), e))
            out_t.append(texts[i] if texts else "")
    return out_s, out_t


# ---------------------------------------------------------------- fill


def merge(spans: Sequence[Span]) -> Window:
    """Sort spans and merge overlapping or adjacent ones; empty spans vanish."""
    out: list[list[int]] = []
    for s, e in sorted(sp for sp in spans if sp[1] > sp[0]):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)


def ranked(scores: Sequence[float]) -> list[int]:
    """Sentence indices best first; ties by document position."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def fill(spans: Sequence[Span], order: Sequence[int], budget: int) -> Window:
    """Greedy fill in rank order (skip what does not fit, then fill with a prefix of the best skipped)."""
    taken: list[Span] = []
    left = budget
    first_skipped: int | None = None
    for i in order:
        s, e = spans[i]
        if e <= s:
            continue
        if e - s <= left:
            taken.append((s, e))
            left -= e - s
            if left == 0:
                break
        elif first_skipped is None:
            first_skipped = i
    if left > 0 and first_skipped is not None:
        s, _ = spans[first_skipped]
        taken.append((s, s + left))
    return merge(taken)


# ---------------------------------------------------------------- scorers


def _tfidf(texts: Sequence[str]):
    """TF-IDF rows (l2-normalised) fit on the document's own sentences; None if no term survives."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        return TfidfVectorizer(stop_words="english").fit_transform(list(texts))
    except ValueError:  # empty vocabulary: only stop words, numbers of one digit, punctuation
        return None


def textrank_scores(texts: Sequence[str], damping: float = 0.85) -> list[float]:
    """TextRank (Mihalcea & Tarau 2004): PageRank over the sentence graph weighted by TF-IDF cosine."""
    import networkx as nx

    x = _tfidf(texts)
    if x is None or len(texts) < 2:
        return [0.0] * len(texts)
    sim = (x @ x.T).tocsr()  # (S, S) cosine: rows are unit length
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    graph = nx.from_scipy_sparse_array(sim)
    if graph.number_of_edges() == 0:
        return [0.0] * len(texts)
    try:
        pr = nx.pagerank(graph, alpha=damping, weight="weight", max_iter=200)
    except nx.PowerIterationFailedConvergence:  # not seen on symmetric graphs; weighted degree then
        pr = dict(graph.degree(weight="weight"))
    return [float(pr.get(i, 0.0)) for i in range(len(texts))]


def tfidf_scores(texts: Sequence[str]) -> list[float]:
    """Cosine of each sentence's TF-IDF vector to the document centroid (Radev et al.'s centroid score).

    The centroid, not the sum of weights, so that long sentences are not favoured
    just for being long: the budget already charges them by length.
    """
    x = _tfidf(texts)
    if x is None:
        return [0.0] * len(texts)
    centroid = np.asarray(x.mean(axis=0)).ravel()  # (V,)
    norm = float(np.linalg.norm(centroid))
    if norm == 0.0:
        return [0.0] * len(texts)
    return (x @ (centroid / norm)).tolist()


def bm25_scores(texts: Sequence[str], query: str) -> list[float]:
    """BM25+ (Lv & Zhai 2011, ``rank_bm25.BM25Plus``) of each sentence against the query.

    BM25+ rather than Okapi: Okapi's idf turns negative for a term in more than
    half the sentences, and on a handful of sentences that ranks the sentences
    that match the question below the ones that do not. Words come from
    scikit-learn's analyzer (lower case, English stop words dropped).
    """
    from rank_bm25 import BM25Plus
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyze = TfidfVectorizer(stop_words="english").build_analyzer()
    corpus = [analyze(t) for t in texts]
    q = analyze(query)
    if not q or not any(corpus):
        return [0.0] * len(texts)
    return BM25Plus(corpus).get_scores(q).tolist()


def random_order(k: int, seed: int, key: str) -> list[int]:
    """A seeded permutation of ``k`` sentences, stable across Python and NumPy versions.

    Each sentence's rank key is sha256(seed, document key, index): no RNG stream
    and no ``hash()`` (salted per process), so the choice depends only on its inputs.
    """
    def h(i: int) -> bytes:
        return hashlib.sha256(f"{seed}\x1f{key}\x1f{i}".encode()).digest()

    return sorted(range(k), key=h)


def order_for(selector: str, texts: Sequence[str], seed: int = 0, key: str = "", damping: float = 0.85) -> list[int]:
    if selector == "textrank":
        return ranked(textrank_scores(texts, damping))
    if selector == "tfidf":
        return ranked(tfidf_scores(texts))
    if selector == "random":
        return random_order(len(texts), seed, key)
    raise ConfigError(f"unknown selector {selector!r}; valid: {', '.join(SELECTORS)}")


# ---------------------------------------------------------------- cost


def timed_windows(strategy: Strategy, n: int, budget: int, doc: DocView | None = None) -> tuple[list[Window], float]:
    """``strategy.windows`` and the seconds it took (wall clock, ``perf_counter``).

    The selection's cost (scoring, PageRank, BM25) lives entirely in ``windows``;
    a task sums these per split and reports them apart from model time. The
    sentence splitting itself is a once-per-document preprocessing cost
    (``ctxbench.tasks.data.sentences``), to be timed where the DocViews are built.
    """
    check_budget(n, budget)
    t0 = time.perf_counter()
    windows = strategy.windows(n, budget, doc)
    return windows, time.perf_counter() - t0
