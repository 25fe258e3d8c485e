"""The adaptive strategy's rule table: whole, head_tail, sliding under a window cap."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ctxbench.strategies as S
from ctxbench.strategies import (
    ConfigError,
    adaptive,  # noqa: F401  (registration)
    window_len,
)
from ctxbench.strategies.head_tail import HeadTail


def covered(windows) -> set[int]:
    return {t for w in windows for s, e in w for t in range(s, e)}


@pytest.mark.parametrize("n,b,rule,windows", [
    (0, 100, "whole", [((0, 0),)]),
    (100, 100, "whole", [((0, 100),)]),
    (101, 100, "head_tail", [((0, 25), (26, 101))]),
    (200, 100, "head_tail", [((0, 25), (125, 200))]),
    (201, 100, "sliding", [((0, 100),), ((50, 150),), ((100, 200),), ((101, 201),)]),
    (250, 100, "sliding", [((0, 100),), ((50, 150),), ((100, 200),), ((150, 250),)]),  # cap does not bind: step b/2
    (300, 100, "sliding", [((0, 100),), ((67, 167),), ((134, 234),), ((200, 300),)]),  # step ceil(200/3) = 67
    (400, 100, "sliding", [((0, 100),), ((100, 200),), ((200, 300),), ((300, 400),)]),  # step = b: just covered
    (1000, 100, "sliding_gaps", [((0, 100),), ((300, 400),), ((600, 700),), ((900, 1000),)]),
])
def test_rule_table(n, b, rule, windows):
    strat = S.build("adaptive")
    assert strat.rule(n, b) == rule
    assert strat.windows(n, b) == windows


def test_head_tail_region_is_head_tail():
    strat = S.build("adaptive", head_share=0.5)
    for n in range(101, 201, 9):
        assert strat.windows(n, 100) == HeadTail(0.5).windows(n, 100)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 20_000), b=st.integers(1, 600), k=st.integers(2, 8),
       upto=st.sampled_from([1.0, 1.5, 2.0, 3.0]), share=st.sampled_from([0.25, 0.5, 1.0]))
def test_windows_fit_the_budget_and_the_cap(n, b, k, upto, share):
    strat = S.build("adaptive", k_max=k, head_tail_upto=upto, step_share=share)
    ws = strat.windows(n, b)
    rule = strat.rule(n, b)
    assert 1 <= len(ws) <= k
    for w in ws:
        assert window_len(w) <= b
        assert all(0 <= s <= e <= n for s, e in w)
    if rule in ("whole", "head_tail"):
        assert len(ws) == 1
        assert (rule == "whole") == (n <= b)
        assert rule == "whole" or n <= upto * b
    else:
        assert n > upto * b
        assert all(window_len(w) == b for w in ws)
        assert ws[0][0][0] == 0 and ws[-1][0][1] == n
        starts = [w[0][0] for w in ws]
        assert starts == sorted(set(starts))
        assert (covered(ws) == set(range(n))) == (rule == "sliding")
        step, usual = strat.step(n, b), max(1, round(share * b))
        if rule == "sliding_gaps":
            assert len(ws) == k, "when the cap cannot cover the document, use all k_max windows"
        elif step > usual:
            assert math.ceil((n - b) / (step - 1)) + 1 > k, "the cap binds: the smallest step within k_max"
        else:
            assert math.ceil((n - b) / usual) + 1 <= k, "the usual step when it fits the cap"


def test_rules_are_parameters_in_the_spec():
    strat = S.build("adaptive", k_max=6, head_tail_upto=1.5)
    assert S.params_of(strat) == {"k_max": 6, "head_share": 128 / 510, "head_tail_upto": 1.5,
                                  "step_share": 0.5, "pool": "mean"}
    assert strat.level == "window" and not S.needs(strat)
    assert strat.rule(160, 100) == "sliding"


@pytest.mark.parametrize("params,match", [
    ({"k_max": 1}, "k_max must be an integer >= 2"),
    ({"head_share": 2.0}, "head_share"),
    ({"head_tail_upto": 0.5}, "head_tail_upto"),
    ({"step_share": 0.0}, "step_share"),
    ({"pool": "median"}, "pool must be one of"),
])
def test_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        S.build("adaptive", **params)
