from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import register
from ctxbench.strategies.head import Head


@register("full")
@dataclass(frozen=True)
class Full(Head):
    """The whole document as one input, for a native long-context model (SmolLM2: 8,192
    positions) read at budgets of 1,024 to 8,192 tokens. The same span arithmetic as
    ``head``; named apart so that tables say what the run meant: a document longer than
    the budget is cut at it, and that shows as coverage below 1, never silently."""
