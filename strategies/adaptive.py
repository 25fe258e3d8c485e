from __future__ import annotations

import math
from dataclasses import dataclass

from ctxbench.strategies.base import ConfigError, DocView, Window, check_budget, positions, register
from ctxbench.strategies.head_tail import HeadTail
from ctxbench.strategies.sliding import POOLS

RULES = ("whole", "head_tail", "sliding", "sliding_gaps")


@register("adaptive")
@dataclass(frozen=True)
class Adaptive:
    """Pick the strategy per document from its length ``n`` and the budget ``b``.

    | rule           | when                                  | windows                                  |
    |----------------|---------------------------------------|------------------------------------------|
    | `whole`        | n <= b                                | ``((0, n),)``                            |
    | `head_tail`    | b < n <= head_tail_upto * b           | ``HeadTail(head_share)``: one window     |
    | `sliding`      | beyond, n - b <= (k_max - 1) * b      | windows of b, step below, all covered    |
    | `sliding_gaps` | beyond, n - b >  (k_max - 1) * b      | k_max windows of b, evenly spread, gaps  |

    Sliding step = ``max(round(step_share * b), ceil((n - b) / (k_max - 1)))``:
    the usual step (half the budget by default) unless that would need more than
    ``k_max`` windows (the cost cap); then the smallest step that fits ``k_max``,
    which still covers every token while ``step <= b``. Windows start at 0 and the
    last ends at ``n`` (``ctxbench.strategies.base.positions``). When even ``k_max``
    windows cannot cover the document (rule ``sliding_gaps``) exactly ``k_max``
    windows are spread evenly from 0 to ``n - b``, leaving gaps; :meth:`rule`
    tells the task so it can count such documents.
    """

    k_max: int = 4
    head_share: float = 128 / 510
    head_tail_upto: float = 2.0
    step_share: float = 0.5
    pool: str = "mean"
    level = "window"

    def __post_init__(self) -> None:
        if not isinstance(self.k_max, int) or self.k_max < 2:
            raise ConfigError(f"adaptive: k_max must be an integer >= 2, got {self.k_max!r}")
        HeadTail(self.head_share)  # validates head_share
        if not float(self.head_tail_upto) >= 1.0:
            raise ConfigError(f"adaptive: head_tail_upto must be >= 1 (a multiple of the budget), "
                              f"got {self.head_tail_upto!r}")
        if not 0.0 < float(self.step_share) <= 1.0:
            raise ConfigError(f"adaptive: step_share must lie in (0, 1], got {self.step_share!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"adaptive: pool must be one of {POOLS}, got {self.pool!r}")

    def step(self, n: int, budget: int) -> int:
        """The sliding step for a document of ``n`` tokens (meaningful when the rule is sliding)."""
        base = max(1, round(self.step_share * budget))
        return max(base, math.ceil(max(0, n - budget) / (self.k_max - 1)))

    def rule(self, n: int, budget: int) -> str:
        check_budget(n, budget)
        if n <= budget:
            return "whole"
        if n <= self.head_tail_upto * budget:
            return "head_tail"
        return "sliding_gaps" if self.step(n, budget) > budget else "sliding"

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        rule = self.rule(n, budget)
        if rule == "whole":
            return [((0, n),)]
        if rule == "head_tail":
            return HeadTail(self.head_share).windows(n, budget)
        if rule == "sliding":
            starts = positions(n, budget, self.step(n, budget))  # count = ceil((n - b) / step) + 1 <= k_max
        else:  # k_max windows, first at 0, last at n - b, evenly spread (distinct: (n - b) / (k_max - 1) > b)
            starts = [round(i * (n - budget) / (self.k_max - 1)) for i in range(self.k_max)]
        return [((s, s + budget),) for s in starts]
