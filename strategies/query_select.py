from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import ConfigError, DocView, Window, check_budget, register
from ctxbench.strategies.select import bm25_scores, fill, ranked, sentences_of


@register("query_select")
@dataclass(frozen=True)
class QuerySelect:
    """For QA: keep the context sentences that score highest by BM25+ against the question.

    The question itself is never in the window (the task keeps it whole); it only
    ranks the sentences. Spans stay in document order, so answer offsets map back.
    Fill rule: ``ctxbench.strategies.select``.
    """

    level = "window"
    pool = "mean"
    needs = ("sentences", "query")

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        if n <= budget:
            return [((0, n),)]
        spans, texts = sentences_of(self.name, n, doc)
        if doc is None or doc.query is None:
            raise ConfigError("query_select: needs the question (DocView.query)")
        return [fill(spans, ranked(bm25_scores(texts, doc.query)), budget)]
