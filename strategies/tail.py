from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import DocView, Window, check_budget, register


@register("tail")
@dataclass(frozen=True)
class Tail:
    """Keep the last ``budget`` tokens."""

    level = "window"
    pool = "mean"

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        return [((max(0, n - budget), n),)]
