"""Selection strategies (span arithmetic over sentence spans) and the sentence spans they read."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctxbench.strategies as S
from ctxbench.strategies import (  # noqa: F401  (registration)
    ConfigError,
    DocView,
    head_select,
    query_select,
    random_select,
    textrank,
    tfidf_select,
    window_len,
)
from ctxbench.strategies.select import bm25_scores, fill, merge, random_order, timed_windows

SELECTION = [
    ("textrank", {}),
    ("tfidf_select", {}),
    ("random_select", {}),
    ("query_select", {}),
]
PARK = [("head_select", {"selector": s}) for s in ("textrank", "tfidf", "random")]
VOCAB = ["orbit", "rocket", "nasa", "launch", "shuttle", "hockey", "goal", "team", "season", "engine", "car", "wheel",
         "brake", "the", "a", "of", "and", "to", "in", "is", "it", "fuel", "moon", "planet", "coach", "league"]


@st.composite
def docs(draw, max_sentences: int = 40):
    """A document as sentence lengths (some empty) with a text per sentence; the spans tile [0, n)."""
    lens = draw(st.lists(st.integers(0, 90), min_size=1, max_size=max_sentences))
    texts = [" ".join(draw(st.lists(st.sampled_from(VOCAB), max_size=8))) for _ in lens]
    spans, pos = [], 0
    for k in lens:
        spans.append((pos, pos + k))
        pos += k
    query = " ".join(draw(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=5)))
    key = draw(st.text(max_size=8))
    return pos, DocView(sentences=tuple(spans), texts=tuple(texts), query=query, key=key)


def check_order_and_bounds(window, n: int) -> None:
    assert window, "a window is never empty"
    for (s, e), nxt in zip(window, window[1:] + ((None, None),)):
        assert 0 <= s < e <= n
        if nxt[0] is not None:
            assert e < nxt[0], "spans in document order, not overlapping, adjacent ones merged"


def sentence_cuts(doc: DocView, lo: int = 0) -> tuple[set[int], set[int]]:
    starts = {max(s, lo) for s, e in doc.sentences if e > lo}
    ends = {e for _, e in doc.sentences}
    return starts, ends


def check_whole_sentences(window, doc: DocView, lo: int = 0) -> None:
    """Every span starts at a sentence start; at most one ends inside a sentence (the filling prefix)."""
    starts, ends = sentence_cuts(doc, lo)
    assert all(s in starts for s, _ in window)
    assert sum(e not in ends for _, e in window) <= 1


@pytest.mark.parametrize("name,params", SELECTION)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=docs(), budget=st.integers(1, 300))
def test_selection_keeps_order_and_fills_budget_exactly(name, params, doc, budget):
    n, view = doc
    windows = S.build(name, **params).windows(n, budget, view)
    if n <= budget:
        assert windows == [((0, n),)]
        return
    (w,) = windows
    check_order_and_bounds(w, n)
    assert window_len(w) == budget, "never more than the budget, and no budget left unused"
    check_whole_sentences(w, view)


@pytest.mark.parametrize("name,params", PARK)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=docs(), budget=st.integers(1, 300))
def test_head_select_is_head_plus_selected_rest(name, params, doc, budget):
    n, view = doc
    windows = S.build(name, **params).windows(n, budget, view)
    if n <= budget:
        assert windows == [((0, n),)]
        return
    head, rest = windows
    assert head == ((0, budget),)
    check_order_and_bounds(rest, n)
    assert rest[0][0] >= budget, "the second input is drawn from after the head"
    assert window_len(rest) == min(budget, n - budget)
    check_whole_sentences(rest, view, lo=budget)


@pytest.mark.parametrize("name,params", SELECTION + PARK)
@given(n=st.integers(0, 400), extra=st.integers(0, 50))
def test_short_document_is_one_whole_window_even_without_sentences(name, params, n, extra):
    assert S.build(name, **params).windows(n, max(1, n + extra)) == [((0, n),)]


def test_fill_rule_skips_then_fills_with_a_prefix():
    spans = [(0, 5), (5, 20), (20, 23)]
    # best first: 1 (15 tokens) does not fit 10 -> skipped; 0 (5) and 2 (3) fit; 2 left -> prefix of 1
    assert fill(spans, [1, 0, 2], 10) == ((0, 7), (20, 23))
    assert fill(spans, [2, 0, 1], 8) == ((0, 5), (20, 23))
    assert fill(spans, [1, 0, 2], 100) == ((0, 23),)
    assert fill([(0, 50)], [0], 10) == ((0, 10),), "one long sentence: its prefix, never an empty window"
    assert merge([(5, 7), (0, 5), (9, 9), (8, 10)]) == ((0, 7), (8, 10))


def doc_of(sentences: list[str], query: str | None = None, key: str = "k") -> tuple[int, DocView]:
    """Word-count token spans for inline sentences (no tokenizer needed)."""
    spans, pos = [], 0
    for t in sentences:
        spans.append((pos, pos + len(t.split())))
        pos = spans[-1][1]
    return pos, DocView(sentences=tuple(spans), texts=tuple(sentences), query=query, key=key)


ROCKETS = [
    "the cook added salt pepper and butter to the soup",
    "nasa will launch the rocket to orbit next week",
    "the rocket launch was delayed by weather at the pad",
    "the shuttle reached orbit after launch from the pad",
    "nasa said the orbit of the shuttle is stable",
    "engineers checked the rocket engine before launch",
]


@pytest.mark.parametrize("name", ["textrank", "tfidf_select"])
def test_central_sentences_beat_the_outlier(name):
    n, view = doc_of(ROCKETS)
    (w,) = S.build(name).windows(n, 40, view)
    first = view.sentences[0]
    assert all(e <= first[0] or s >= first[1] for s, e in w), f"{name} kept the off-topic sentence: {w}"


def test_query_select_keeps_the_answering_sentence():
    sents = ROCKETS + ["the hockey goalie made forty saves in the final game"]
    n, view = doc_of(sents, query="How many saves did the hockey goalie make?")
    (w,) = S.build("query_select").windows(n, 12, view)
    assert view.sentences[-1] in w


def test_bm25_prefers_the_match_on_two_sentences():
    # Okapi's idf is log(1.5 / 1.5) = 0 here, a tie that document order would break the wrong way.
    scores = bm25_scores(["the weather was nice", "the goalie saved it"], "who saved it, the goalie?")
    assert scores[1] > scores[0]


def test_random_select_is_seed_stable_and_varies_with_seed_and_key():
    sents = [f"sentence number {i} with some words" for i in range(30)]
    n, view = doc_of(sents, key="doc-1")
    pick = lambda seed, v=view: S.build("random_select", seed=seed).windows(n, 50, v)
    assert pick(0) == pick(0) == S.build("random_select").windows(n, 50, view)
    assert len({pick(seed)[0] for seed in range(8)}) > 1
    other = DocView(sentences=view.sentences, texts=view.texts, key="doc-2")
    assert any(pick(seed) != pick(seed, other) for seed in range(4))


def test_random_order_is_pinned():
    # sha256-based: must not change with Python or NumPy versions (a change silently changes results).
    assert random_order(8, 0, "doc") == random_order(8, 0, "doc")
    assert random_order(8, 0, "doc") == [1, 6, 7, 3, 0, 5, 2, 4]
    assert sorted(random_order(50, 3, "x")) == list(range(50))


@pytest.mark.parametrize("name,params", SELECTION + PARK)
def test_missing_or_mismatched_sentences_are_errors(name, params):
    strat = S.build(name, **params)
    with pytest.raises(ConfigError, match="needs sentence spans"):
        strat.windows(1000, 10)
    n, view = doc_of(ROCKETS, query="rocket")
    with pytest.raises(ConfigError, match="end at"):
        strat.windows(n + 1, 10, view)
    assert S.needs(strat)[0] == "sentences"


def test_query_select_needs_a_query():
    n, view = doc_of(ROCKETS)
    with pytest.raises(ConfigError, match="question"):
        S.build("query_select").windows(n, 10, view)
    assert S.needs(S.build("query_select")) == ("sentences", "query")


def test_bad_parameters():
    with pytest.raises(ConfigError, match="selector must be one of"):
        S.build("head_select", selector="bm25")
    with pytest.raises(ConfigError, match="damping"):
        S.build("textrank", damping=1.0)


def test_timed_windows_reports_seconds_and_the_same_windows():
    n, view = doc_of(ROCKETS)
    strat = S.build("textrank")
    windows, seconds = timed_windows(strat, n, 20, view)
    assert windows == strat.windows(n, 20, view)
    assert 0.0 <= seconds < 10.0


# ---------------------------------------------------------------- sentence spans (real tokenizer)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from ctxbench.tasks.model.packaged import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def check_tiling(spans, texts, n: int) -> None:
    assert len(spans) == len(texts)
    pos = 0
    for s, e in spans:
        assert s == pos and e > s, "every token in exactly one non-empty sentence, in order"
        pos = e
    assert pos == n


NEWS = """From: smith@cs.edu (John Smith)
Subject: Re: engines

Dr. Jones said the U.S. makers are behind. The Japanese cars have
better fuel economy, e.g. the new sedan! Do you agree?

-- John"""


def test_sentence_spans_tile_the_task_ids(tok):
    from ctxbench.tasks.data.sentences import sentence_spans

    spans, texts = sentence_spans(NEWS, tok)
    check_tiling(spans, texts, len(ids_of(tok, NEWS)))
    assert texts == [
        "From: smith@cs.edu (John Smith)\nSubject: Re: engines",
        "Dr. Jones said the U.S. makers are behind.",  # abbreviations do not end a sentence
        "The Japanese cars have\nbetter fuel economy, e.g. the new sedan!",  # a wrapped line is not an end
        "Do you agree?",
        "-- John",
    ]
    ids = ids_of(tok, NEWS)
    s, e = spans[3]
    assert tok.decode(ids[s:e]) == "do you agree?"


def test_join_lines_off_splits_at_line_breaks(tok):
    from ctxbench.tasks.data.sentences import sentence_spans

    spans, texts = sentence_spans(NEWS, tok, join_lines=False)
    check_tiling(spans, texts, len(ids_of(tok, NEWS)))
    assert "The Japanese cars have" in texts


def test_long_paragraphs_are_cut_and_still_tile(tok, monkeypatch):
    import ctxbench.tasks.data.sentences as TS

    text = " ".join(["alpha beta gamma"] * 200)  # one unpunctuated paragraph
    monkeypatch.setattr(TS, "MAX_CHUNK_CHARS", 300)
    spans, texts = TS.sentence_spans(text, tok)
    check_tiling(spans, texts, len(ids_of(tok, text)))
    assert len(spans) > len(text) // 300, "cut into pieces of at most MAX_CHUNK_CHARS"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(list("abc XYZ.!?\n\t,'\"()é日-") + ["Dr. ", "U.S. ", "\n\n", "3.5"]),
                    max_size=150).map("".join))
def test_sentence_spans_tile_any_text(tok, text):
    from ctxbench.tasks.data.sentences import sentence_spans

    spans, texts = sentence_spans(text, tok)
    check_tiling(spans, texts, len(ids_of(tok, text)))


def test_doc_views_feed_the_strategies(tok):
    from ctxbench.tasks.data.sentences import doc_key, doc_view, doc_views

    n = len(ids_of(tok, NEWS))
    view = doc_view(NEWS, tok, query="which cars have better fuel economy?", n=n)
    assert view.key == doc_key(NEWS) == "410a56a578d75955"
    (w,) = S.build("query_select").windows(n, 20, view)
    assert w == ((view.sentences[2][0], view.sentences[3][1]),), "the matching sentence (16 tokens), then a 4-token tie"

    for name, params in SELECTION + PARK:
        for win in S.build(name, **params).windows(n, 15, view):
            assert window_len(win) <= 15
    with pytest.raises(ValueError, match="tokenizes to"):
        doc_views([NEWS], tok, lengths=[n + 1])
    assert doc_views(["", "Hi."], tok)[0].sentences == ()
