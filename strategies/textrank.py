from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import ConfigError, DocView, Window, check_budget, register
from ctxbench.strategies.select import fill, ranked, sentences_of, textrank_scores


@register("textrank")
@dataclass(frozen=True)
class TextRank:
    """Keep the sentences TextRank ranks highest, in document order, up to the budget.

    PageRank (``networkx.pagerank``, damping ``damping``) over the graph of the
    document's sentences weighted by TF-IDF cosine (vectoriser fit on the
    document's own sentences). Fill rule: ``ctxbench.strategies.select``.
    """

    damping: float = 0.85
    level = "window"
    pool = "mean"  # one window: pooling is the identity
    needs = ("sentences",)

    def __post_init__(self) -> None:
        if not 0.0 < float(self.damping) < 1.0:
            raise ConfigError(f"textrank: damping must lie in (0, 1), got {self.damping!r}")

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        if n <= budget:
            return [((0, n),)]
        spans, texts = sentences_of(self.name, n, doc)
        return [fill(spans, ranked(textrank_scores(texts, self.damping)), budget)]
