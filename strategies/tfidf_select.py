from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import DocView, Window, check_budget, register
from ctxbench.strategies.select import fill, ranked, sentences_of, tfidf_scores


@register("tfidf_select")
@dataclass(frozen=True)
class TfidfSelect:
    """Keep the sentences closest to the document's TF-IDF centroid, in document order.

    For classification: the sentences most typical of the whole document. The
    vectoriser is fit on the document's own sentences (no corpus statistics, so
    nothing leaks across splits). Fill rule: ``ctxbench.strategies.select``.
    """

    level = "window"
    pool = "mean"
    needs = ("sentences",)

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        if n <= budget:
            return [((0, n),)]
        spans, texts = sentences_of(self.name, n, doc)
        return [fill(spans, ranked(tfidf_scores(texts)), budget)]
