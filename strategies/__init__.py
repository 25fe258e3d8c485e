"""Context-length strategies: pure span arithmetic, registered by name.

To add one: write ``strategies/<name>.py`` with a frozen dataclass decorated by
``@register("<name>")`` that has ``level``, ``pool`` and ``windows(n, budget)``,
import it below, and add a test in ``tests/test_strategies.py``.
"""
from ctxbench.strategies import (  # noqa: F401  (registration)
    adaptive, full, head, head_select, head_tail, hierarchical, query_select, random_select, sliding, tail, textrank,
    tfidf_select,
)
from ctxbench.strategies.base import (
    ConfigError,
    DocView,
    Span,
    Strategy,
    Window,
    build,
    needs,
    did_you_mean,
    params_of,
    register,
    registered,
    strategy_class,
    window_len,
)

__all__ = [
    "ConfigError",
    "DocView",
    "Span",
    "Strategy",
    "Window",
    "build",
    "needs",
    "did_you_mean",
    "params_of",
    "register",
    "registered",
    "strategy_class",
    "window_len",
]
