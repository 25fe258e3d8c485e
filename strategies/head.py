from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import DocView, Window, check_budget, register


@register("head")
@dataclass(frozen=True)
class Head:
    """Keep the first ``budget`` tokens (plain truncation)."""

    level = "window"
    pool = "mean"  # one window: pooling is the identity

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        return [((0, min(n, budget)),)]
