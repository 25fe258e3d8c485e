from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import DocView, ConfigError, Window, check_budget, positions, register

AGGREGATORS = ("mean", "max", "attention", "transformer")


@register("hierarchical")
@dataclass(frozen=True)
class Hierarchical:
    """Chunks of ``chunk`` tokens (default: the budget), each encoded separately;
    an aggregator (``mean``, ``max``, learned ``attention`` pooling, or a small
    ``transformer`` as in ToBERT) combines chunk vectors and is trained with the
    classifier. The last chunk is aligned to the document end so every chunk is
    full length. ``max_chunks`` caps chunks (evenly spaced) for memory.
    """

    chunk: int | None = None
    overlap: int = 0
    pool: str = "mean"
    layers: int = 1  # transformer aggregator depth
    max_chunks: int | None = None
    level = "document"

    def __post_init__(self) -> None:
        if self.pool not in AGGREGATORS:
            raise ConfigError(f"hierarchical: pool (aggregator) must be one of {AGGREGATORS}, got {self.pool!r}")
        if self.chunk is not None and (not isinstance(self.chunk, int) or self.chunk < 1):
            raise ConfigError(f"hierarchical: chunk must be an integer >= 1, got {self.chunk!r}")
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise ConfigError(f"hierarchical: overlap must be an integer >= 0, got {self.overlap!r}")
        if self.layers not in (1, 2):
            raise ConfigError(f"hierarchical: layers must be 1 or 2, got {self.layers!r}")
        if self.max_chunks is not None and self.max_chunks < 1:
            raise ConfigError(f"hierarchical: max_chunks must be >= 1 or None, got {self.max_chunks!r}")

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        chunk = min(self.chunk or budget, budget)
        if self.overlap >= chunk:
            raise ConfigError(f"hierarchical: overlap {self.overlap} must be < chunk {chunk}")
        starts = positions(n, chunk, chunk - self.overlap)
        if self.max_chunks is not None and len(starts) > self.max_chunks:
            from ctxbench.strategies.sliding import cap

            starts = cap(starts, self.max_chunks, "even")
        return [((s, min(n, s + chunk)),) for s in starts]
