"""Fuzz every registered strategy through the config layer: any parameters (valid or not, of
any type) and documents of up to 10^6 tokens give windows that keep the contract, or a
ConfigError; never another exception."""
from __future__ import annotations

import math
import time
from dataclasses import fields
from typing import get_type_hints

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import ctxbench.strategies as S
from ctxbench.bench.config import _dry_run_strategies, load_sweep, parse_strategy
from ctxbench.strategies import ConfigError, DocView, window_len

WORDS = "orbit rocket hockey goal engine car the a of launch team brake season fuel".split()
STRINGS = ["mean", "max", "vote", "attention", "transformer", "logits", "embeddings", "even", "first", "textrank",
           "tfidf", "random", "", "bogus"]
MAX_WINDOWS = 50_000  # keep each example fast: a window list is O(n / step) by design


def values_for(typ, default) -> st.SearchStrategy:
    """Plausible values of a field's type (its default often), now and then one of the wrong type."""
    wrong = st.one_of(st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2), st.floats(allow_nan=True))
    text = str(typ)
    if "bool" in text:
        good = st.booleans()
    elif "int" in text:
        good = st.one_of(st.integers(1, 64), st.integers(-3, 600), st.integers(-10**6, 10**6))
    elif "float" in text:
        good = st.one_of(st.floats(0.0, 1.0), st.floats(-0.5, 3.0),
                         st.sampled_from([0.0, 1.0, math.nan, math.inf, 2, 3]))
    elif "str" in text:
        good = st.sampled_from(STRINGS)
    else:
        good = st.none()
    if "None" in text:
        good = st.one_of(good, st.none())
    return st.one_of(st.just(default), good, st.just(default), good, good, good, good, wrong)


@st.composite
def params_of(draw, name: str) -> dict:
    cls = S.strategy_class(name)
    hints = get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if draw(st.booleans()):
            out[f.name] = draw(values_for(hints[f.name], f.default))
    if draw(st.sampled_from([False] * 9 + [True])):
        out["not_a_parameter"] = 1
    return out


@st.composite
def doc_view(draw, n: int) -> DocView:
    """Sentence spans tiling [0, n) (at most 40 of them, so scoring stays cheap), with texts."""
    k = draw(st.integers(0, min(39, max(0, n - 1))))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), min_size=k, max_size=k)))) if n > 1 else []
    bounds = [0, *cuts, n]
    spans = tuple((a, b) for a, b in zip(bounds, bounds[1:]) if b > a) or ((0, n),)
    texts = tuple(" ".join(draw(st.lists(st.sampled_from(WORDS), max_size=6))) for _ in spans)
    return DocView(sentences=spans, texts=texts, query=" ".join(draw(st.lists(st.sampled_from(WORDS), max_size=4))),
                   key=draw(st.text(max_size=5)))


def approx_windows(strategy, n: int, budget: int) -> int:
    """An upper bound of the windows a pure strategy will return (to skip examples too big to be quick)."""
    if S.params_of(strategy).get("max_windows") or S.params_of(strategy).get("max_chunks"):
        return 1
    if strategy.name == "sliding":
        _, step = strategy.sizes(budget)
        return n // step + 2
    if strategy.name == "hierarchical":
        chunk = min(strategy.chunk or budget, budget)
        return n // max(1, chunk - strategy.overlap) + 2
    return 1


@pytest.mark.parametrize("name", S.registered())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), n=st.one_of(st.integers(0, 3000), st.integers(0, 10**6), st.just(10**6)),
       budget=st.one_of(st.integers(1, 600), st.integers(1, 8192)))
def test_any_parameters_and_length_give_valid_windows_or_a_config_error(name, data, n, budget):
    params = data.draw(params_of(name))
    try:
        spec = parse_strategy({"name": name, **params})
        strategy = spec.build()
        assume(approx_windows(strategy, n, budget) <= MAX_WINDOWS)
        doc = data.draw(doc_view(n)) if S.needs(strategy) else None
        windows = strategy.windows(n, budget, doc)
    except ConfigError as e:
        assert str(e)
        event("ConfigError")
        return
    event("windows")
    assert isinstance(windows, list) and windows
    for w in windows:
        assert isinstance(w, tuple) and w and window_len(w) <= budget
        prev = 0
        for s, e in w:
            assert isinstance(s, int) and isinstance(e, int)
            assert prev <= s <= e <= n and (s < e or n == 0)  # inside [0, n), in order, disjoint
            prev = e
    if name == "sliding":
        window, step = strategy.sizes(budget)
        cap = strategy.max_windows
        assert len(windows) <= (cap or math.ceil(max(0, n - window) / step) + 1)
        if not cap and step <= window:  # no gaps: each window starts inside or at the end of the one before
            assert windows[0][0][0] == 0 and windows[-1][0][1] == n
            assert all(b[0][0] <= a[0][1] for a, b in zip(windows, windows[1:]))


@pytest.mark.parametrize("name,params,budget,expected", [
    ("sliding", {}, 512, math.ceil((10**6 - 512) / 256) + 1),
    ("sliding", {"window": 100, "step": 100}, 512, 10**4),
    ("hierarchical", {}, 512, math.ceil((10**6 - 512) / 512) + 1),
    ("hierarchical", {"overlap": 64}, 510, math.ceil((10**6 - 510) / 446) + 1),
    ("sliding", {"max_windows": 16}, 128, 16),
    ("hierarchical", {"max_chunks": 8}, 128, 8),
])
def test_a_million_token_document_streams_through_in_linear_time(name, params, budget, expected):
    """O(n / step) windows, every token covered, and quick (a generous bound: quadratic
    arithmetic on 10^6 tokens would take minutes)."""
    n = 10**6
    t0 = time.perf_counter()
    windows = S.build(name, **params).windows(n, budget)
    took = time.perf_counter() - t0
    assert len(windows) == expected and took < 20
    assert windows[0][0][0] == 0 and windows[-1][0][1] == n
    if "max_windows" not in params and "max_chunks" not in params:
        assert all(b[0][0] <= a[0][1] for a, b in zip(windows, windows[1:]))  # contiguous: nothing skipped


@settings(max_examples=40, deadline=None)
@given(step=st.integers(-5, 300), window=st.one_of(st.none(), st.integers(-5, 300)), gaps=st.booleans(),
       budget=st.integers(-2, 300))
def test_config_layer_refuses_bad_sliding_parameters_at_load_time(step, window, gaps, budget):
    """step <= 0, step > window without allow_gaps, window < 1, budget < 1: a ConfigError
    when the sweep loads, and a sweep that loads runs its dry-run windows without error."""
    item = {"name": "sliding", "step": step, "allow_gaps": gaps, **({"window": window} if window is not None else {})}
    try:
        sweep = load_sweep("clf", [f"strategies=[{item!r}]".replace("'", '"').replace("True", "true")
                                   .replace("False", "false"), f"budgets=[{budget}]"])
    except ConfigError:
        eff_window = min(window or budget, budget) if budget >= 1 else None
        assert (step < 1 or (window is not None and window < 1) or budget < 1
                or (eff_window is not None and step > eff_window and not gaps))
        return
    assert step >= 1 and budget >= 1 and (gaps or step <= min(window or budget, budget))
    _dry_run_strategies(sweep)
