from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import ConfigError, DocView, Window, check_budget, register
from ctxbench.strategies.select import fill, random_order, sentences_of


@register("random_select")
@dataclass(frozen=True)
class RandomSelect:
    """Random sentences, in document order, up to the budget: the control of Park et al. (2022).

    The choice is a function of ``seed`` and the document's ``DocView.key`` only
    (sha256, see ``ctxbench.strategies.select.random_order``), so reruns and workers agree.
    Fill rule: ``ctxbench.strategies.select``.
    """

    seed: int = 0
    level = "window"
    pool = "mean"
    needs = ("sentences",)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int):
            raise ConfigError(f"random_select: seed must be an integer, got {self.seed!r}")

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        if n <= budget:
            return [((0, n),)]
        spans, _ = sentences_of(self.name, n, doc, texts=False)
        assert doc is not None
        return [fill(spans, random_order(len(spans), self.seed, doc.key), budget)]
