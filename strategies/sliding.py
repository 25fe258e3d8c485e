from __future__ import annotations

from dataclasses import dataclass

from ctxbench.strategies.base import DocView, ConfigError, Window, check_budget, positions, register

POOLS = ("mean", "max", "vote")
POOL_OVER = ("logits", "embeddings")
CAP_POLICIES = ("even", "first")
LAST = ("full", "short")


@register("sliding")
@dataclass(frozen=True)
class Sliding:
    """Windows of ``window`` tokens moved by ``step``; predictions pooled.

    ``overlap = window - step``: give one of ``step`` or ``overlap``. Hugging
    Face's tokenizer ``stride`` (and its QA pipeline's ``doc_stride``) is the
    overlap: pass it as ``overlap``; Google's BERT ``doc_stride`` is the step:
    pass it as ``step``. ``window`` defaults to the budget, the step to half the
    window (``None``).
    ``max_windows`` caps windows per document; ``cap_policy`` says which are
    kept: ``even`` keeps evenly spaced windows including first and last,
    ``first`` keeps the leading ones. ``allow_gaps`` permits ``step > window``.
    ``last``: ``full`` aligns the last window to the document's end (every window
    full length); ``short`` starts it at the next multiple of the step, shorter,
    as Hugging Face's overflowing tokens (``stride``) place it.
    """

    window: int | None = None
    step: int | None = None
    overlap: int | None = None
    pool: str = "mean"
    pool_over: str = "logits"
    max_windows: int | None = None
    cap_policy: str = "even"
    allow_gaps: bool = False
    last: str = "full"
    level = "window"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"sliding: pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool_over not in POOL_OVER:
            raise ConfigError(f"sliding: pool_over must be one of {POOL_OVER}, got {self.pool_over!r}")
        if self.pool == "vote" and self.pool_over != "logits":
            raise ConfigError("sliding: pool='vote' pools predicted labels; use pool_over='logits'")
        if self.last not in LAST:
            raise ConfigError(f"sliding: last must be one of {LAST}, got {self.last!r}")
        if self.cap_policy not in CAP_POLICIES:
            raise ConfigError(f"sliding: cap_policy must be one of {CAP_POLICIES}, got {self.cap_policy!r}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError(f"sliding: max_windows must be >= 1 or None, got {self.max_windows!r}")
        for key in ("window", "step"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"sliding: {key} must be an integer >= 1, got {v!r}")
        if self.overlap is not None:
            if self.step is not None:
                raise ConfigError("sliding: give step or overlap (= window - step), not both")
            if not isinstance(self.overlap, int) or self.overlap < 0:
                raise ConfigError(f"sliding: overlap must be an integer >= 0, got {self.overlap!r}")

    def sizes(self, budget: int) -> tuple[int, int]:
        window = min(self.window or budget, budget)
        if self.overlap is not None:
            if self.overlap >= window:
                raise ConfigError(f"sliding: overlap {self.overlap} must be < the window ({window} tokens)")
            step = window - self.overlap
        else:
            step = self.step or max(1, window // 2)
        if step > window and not self.allow_gaps:
            raise ConfigError(
                f"sliding: step {step} > window {window} leaves tokens unseen; set allow_gaps=true to permit it"
            )
        return window, step

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]:
        check_budget(n, budget)
        window, step = self.sizes(budget)
        starts = positions(n, window, step, self.last)
        if self.max_windows is not None and len(starts) > self.max_windows:
            starts = cap(starts, self.max_windows, self.cap_policy)
        return [((s, min(n, s + window)),) for s in starts]


def cap(starts: list[int], k: int, policy: str) -> list[int]:
    if policy == "first" or k == 1:
        return starts[:k]
    idx = sorted({round(i * (len(starts) - 1) / (k - 1)) for i in range(k)})
    return [starts[i] for i in idx]
