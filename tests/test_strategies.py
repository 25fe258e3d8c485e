"""Property tests for every registered strategy, plus the contract's edge cases."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ctxbench.strategies as S
from ctxbench.strategies import ConfigError, window_len

PURE = [name for name in S.registered() if not S.needs(S.build(name))]


def covered(windows) -> set[int]:
    return {t for w in windows for s, e in w for t in range(s, e)}


@pytest.mark.parametrize("name", PURE)
@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 5000), budget=st.integers(1, 600))
def test_spans_inside_and_fit_budget(name, n, budget):
    windows = S.build(name).windows(n, budget)
    assert windows, "at least one window"
    for w in windows:
        assert window_len(w) <= budget
        for s, e in w:
            assert 0 <= s <= e <= n
        starts = [s for s, _ in w]
        assert starts == sorted(starts), "spans of a window are in document order"


@pytest.mark.parametrize("name", PURE)
@given(n=st.integers(0, 600), extra=st.integers(0, 100))
def test_short_document_is_one_whole_window(name, n, extra):
    assert S.build(name).windows(n, n + extra if n + extra > 0 else 1) == [((0, n),)]


@pytest.mark.parametrize("name", ["sliding", "hierarchical"])
@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 5000), budget=st.integers(1, 600))
def test_sliding_and_hierarchical_cover_every_token(name, n, budget):
    assert covered(S.build(name).windows(n, budget)) == set(range(n))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3000), window=st.integers(1, 300), step=st.integers(1, 300))
def test_sliding_window_step_overlap(n, window, step):
    strat = S.build("sliding", window=window, step=step, allow_gaps=True)
    ws = strat.windows(n, 512)
    starts = [w[0][0] for w in ws]
    if n > window:
        # consecutive windows move by `step` except the last, end-aligned one
        assert all(b - a == step for a, b in zip(starts[:-2], starts[1:-1]))
        assert ws[-1][0][1] == n
        assert all(window_len(w) == window for w in ws)
    if step <= window:
        assert covered(ws) == set(range(n))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3000), window=st.integers(1, 300), overlap=st.integers(0, 299))
def test_overlap_is_hugging_face_stride_and_step_is_google_doc_stride(n, window, overlap):
    """``overlap`` (HF tokenizer ``stride``) and ``step`` (Google ``doc_stride``) name one window layout."""
    if overlap >= window:
        return
    by_overlap = S.build("sliding", window=window, overlap=overlap).windows(n, 512)
    assert by_overlap == S.build("sliding", window=window, step=window - overlap).windows(n, 512)
    for a, b in zip(by_overlap[:-2], by_overlap[1:-1]):  # neighbours share exactly `overlap` tokens
        assert a[0][1] - b[0][0] == overlap


def test_head_tail_sun_et_al_split():
    (w,) = S.build("head_tail").windows(10_000, 510)
    assert w == ((0, 128), (10_000 - 382, 10_000))
    (w,) = S.build("head_tail", head_share=0.5).windows(1000, 100)
    assert w == ((0, 50), (950, 1000))
    assert S.build("head_tail", head_share=0.0).windows(1000, 100) == [((900, 1000),)]
    assert S.build("head_tail", head_share=1.0).windows(1000, 100) == [((0, 100),)]


def test_head_and_tail():
    assert S.build("head").windows(1000, 100) == [((0, 100),)]
    assert S.build("tail").windows(1000, 100) == [((900, 1000),)]


def test_sliding_cap_policies():
    even = S.build("sliding", max_windows=3).windows(1000, 100)
    first = S.build("sliding", max_windows=3, cap_policy="first").windows(1000, 100)
    assert len(even) == len(first) == 3
    assert even[0] == ((0, 100),) and even[-1] == ((900, 1000),)
    assert first == [((0, 100),), ((50, 150),), ((100, 200),)]


def test_hierarchical_chunks_and_overlap():
    assert S.build("hierarchical").windows(250, 100) == [((0, 100),), ((100, 200),), ((150, 250),)]
    ws = S.build("hierarchical", overlap=20).windows(250, 100)
    assert ws[:2] == [((0, 100),), ((80, 180),)]


def test_hierarchical_one_chunk_equals_head_on_short_docs():
    for n in range(0, 300, 7):
        assert S.build("hierarchical").windows(n, 300) == S.build("head").windows(n, 300)


@pytest.mark.parametrize("name", PURE)
@pytest.mark.parametrize("budget", [0, -5])
def test_budget_below_one_rejected(name, budget):
    with pytest.raises(ConfigError, match="budget must be an integer >= 1"):
        S.build(name).windows(100, budget)


@pytest.mark.parametrize("params,match", [
    ({"step": 0}, "step must be an integer >= 1"),
    ({"step": -3}, "step must be an integer >= 1"),
    ({"window": 10, "step": 20}, "leaves tokens unseen"),
    ({"pool": "median"}, "pool must be one of"),
    ({"pool": "vote", "pool_over": "embeddings"}, "vote"),
    ({"max_windows": 0}, "max_windows"),
    ({"step": 10, "overlap": 5}, "not both"),
    ({"overlap": -1}, "overlap must be an integer >= 0"),
    ({"window": 64, "overlap": 64}, "must be < the window"),
])
def test_sliding_bad_parameters(params, match):
    with pytest.raises(ConfigError, match=match):
        S.build("sliding", **params).windows(1000, 100)


def test_gaps_allowed_only_when_asked():
    ws = S.build("sliding", window=10, step=20, allow_gaps=True).windows(100, 100)
    assert covered(ws) != set(range(100))


def test_head_share_outside_unit_interval_rejected():
    with pytest.raises(ConfigError, match=r"head_share must lie in \[0, 1\]"):
        S.build("head_tail", head_share=1.5)


def test_unknown_strategy_and_parameter_list_valid_names():
    with pytest.raises(ConfigError, match="Did you mean 'sliding'") as e:
        S.build("slidng")
    assert "head_tail" in str(e.value)
    with pytest.raises(ConfigError, match="Did you mean 'step'"):
        S.build("sliding", stepp=3)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        S.register("head")(type("Again", (), {}))


def test_full_reads_the_whole_document_and_cuts_only_beyond_the_budget():
    full = S.build("full")
    assert full.windows(3000, 8192) == [((0, 3000),)]
    assert full.windows(9000, 8192) == [((0, 8192),)]  # cut at the budget: coverage < 1 in the run record
