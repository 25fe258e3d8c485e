from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import ConfigError, DocView, Window, check_budget, register
from ctxbench.strategies.select import SELECTORS, clip, fill, order_for, sentences_of
from ctxbench.strategies.sliding import POOLS


@register("head_select")
@dataclass(frozen=True)
class HeadSelect:
    """Park et al. (2022)'s BERT+TextRank / BERT+Random: the first ``budget`` tokens,
    plus a second input of sentences selected from the rest of the document.

    Two windows, each an example, pooled by ``pool``. (Park et al. concatenate the
    two [CLS] vectors instead; this is the window-level reading.) ``selector`` is
    ``textrank``, ``tfidf`` (centroid) or ``random`` (``seed``). Sentences are
    taken from ``[budget, n)``; one straddling the cut keeps only its tail. When
    the rest fits the budget it is the second window whole. Fill rule:
    ``ctxbench.strategies.select``.
    """

    selector: str = "textrank"
    seed: int = 0
    pool: str = "mean"
    level = "window"
    needs = ("sentences",)

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS:
            raise ConfigError(f"head_select: selector must be one of {SELECTORS}, got {self.selector!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"head_select: pool must be one of {POOLS}, got {self.pool!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"head_select: seed must be an integer, got {self.seed!r}")

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        if n <= budget:
            return [((0, n),)]
        head: Window = ((0, budget),)
        if n - budget <= budget:
            return [head, ((budget, n),)]
        spans, texts = sentences_of(self.name, n, doc, texts=self.selector != "random")
        rest, rest_texts = clip(spans, texts, budget)
        assert doc is not None
        order = order_for(self.selector, rest_texts, seed=self.seed, key=doc.key)
        return [head, fill(rest, order, budget)]
