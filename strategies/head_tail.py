from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import DocView, ConfigError, Window, check_budget, register


@register("head_tail")
@dataclass(frozen=True)
class HeadTail:
    """Keep the first ``h`` and the last ``budget - h`` tokens (Sun et al. 2019).

    ``head_share`` is the head's share of the budget; the default 128/510 is
    Sun et al.'s 128 + 382 split for BERT's 510 usable tokens, scaled to any budget.
    """

    head_share: float = 128 / 510
    level = "window"
    pool = "mean"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.head_share) <= 1.0:
            raise ConfigError(f"head_tail: head_share must lie in [0, 1], got {self.head_share!r}")

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        if n <= budget:
            return [((0, n),)]
        h = round(budget * self.head_share)
        t = budget - h
        spans = tuple(s for s in ((0, h), (n - t, n)) if s[1] > s[0])
        return [spans]
