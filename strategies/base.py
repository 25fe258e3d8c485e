"""Span types, the strategy protocol and the registry.

A strategy is pure integer arithmetic: given a document of ``n`` tokens (the
context only, never a question or special tokens) and a token ``budget``, it
returns windows. A window is a tuple of half-open ``(start, end)`` spans whose
tokens are joined, in order, into one model input. How window outputs are
combined (pooling, aggregation) is read from the strategy's ``level`` and
``pool`` attributes by the model side; the strategy never touches a model.
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

Span = tuple[int, int]
Window = tuple[Span, ...]

# How the model side combines a strategy's windows:
#   "window":   every window is one example (classifier trained per window) and
#               the per-window outputs are pooled into one prediction (``pool``).
#   "document": the windows are chunks of one example; their vectors go through
#               an aggregator trained with the head (``pool`` names it).
LEVELS = ("window", "document")


class ConfigError(ValueError):
    """A user-facing configuration error (bad name, value or key)."""


@dataclass(frozen=True)
class DocView:
    """Optional per-document facts for strategies that need more than ``n``.

    Pure-arithmetic strategies ignore it. Selection strategies declare
    ``needs = ("sentences",)`` and the task adapter fills ``sentences`` (token
    spans of sentences, in order, covering the document) and ``texts``.
    ``query`` is the question (QA), ``key`` a stable per-document id for seeded
    choices.
    """

    sentences: tuple[Span, ...] | None = None
    texts: tuple[str, ...] | None = None
    query: str | None = None
    key: str = ""


@runtime_checkable
class Strategy(Protocol):
    name: ClassVar[str]
    level: ClassVar[str]

    @property
    def pool(self) -> str: ...

    def windows(self, n: int, budget: int, doc: DocView | None = None) -> list[Window]: ...


def needs(strategy: Strategy) -> tuple[str, ...]:
    """What a strategy needs in its DocView beyond ``n`` (default: nothing)."""
    return tuple(getattr(strategy, "needs", ()))


def check_budget(n: int, budget: int) -> None:
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"budget must be an integer >= 1, got {budget!r}")
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"document length must be an integer >= 0, got {n!r}")


def window_len(window: Window) -> int:
    return sum(e - s for s, e in window)


def positions(n: int, size: int, step: int, last: str = "full") -> list[int]:
    """Start offsets of windows of ``size`` moved by ``step`` over ``n`` tokens.

    ``last="full"``: the last window is aligned to the document end, so every
    window is full length and the tail is always covered. ``last="short"``: the
    last window starts at the next multiple of ``step`` and may be shorter: what
    Hugging Face's overflowing tokenization (``stride``) gives.
    """
    if n <= size:
        return [0]
    starts = list(range(0, n - size, step))
    end = n - size
    if last == "short":
        if starts[-1] + size < n and starts[-1] + step < n:
            starts.append(starts[-1] + step)
    elif starts[-1] != end:
        starts.append(end)
    return starts


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def did_you_mean(name: str, valid: list[str] | tuple[str, ...], what: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown {what} {name!r}.{hint} Valid: {', '.join(sorted(valid))}")


def registered() -> list[str]:
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type:
    if name not in _REGISTRY:
        raise did_you_mean(name, list(_REGISTRY), "strategy")
    return _REGISTRY[name]


def build(name: str, **params: Any) -> Strategy:
    """Instantiate a registered strategy; unknown parameters are an error."""
    cls = strategy_class(name)
    valid = [f.name for f in fields(cls)]
    for key in params:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"strategy {name!r} has no parameter {key!r}.{hint} Valid: {', '.join(valid) or '(none)'}")
    return cls(**params)


def params_of(strategy: Strategy) -> dict[str, Any]:
    return asdict(strategy)  # type: ignore[call-overload]
