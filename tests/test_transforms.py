"""Document transforms (clf.transform, a grid axis), the unpunctuated-text fallback, and the book source."""
from __future__ import annotations

import torch

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.bench.report.tables import mode_label
from ctxbench.tasks.base import Context
from ctxbench.tasks.data.sentences import punctuated, sentences, word_starts
from ctxbench.tasks.data.transforms import transform

TEXT = "The first sentence is here. Then comes a second one! Is this the third? The last."


def test_invert_reverses_the_sentences_and_none_keeps_the_text():
    assert transform(TEXT, "none") == TEXT
    inverted = "The last. Is this the third? Then comes a second one! The first sentence is here."
    assert transform(TEXT, "invert") == inverted


def test_shuffle_is_a_seeded_permutation_of_the_sentences():
    parts = sentences(TEXT)
    a, b = transform(TEXT, "shuffle_sentences", seed=0), transform(TEXT, "shuffle_sentences", seed=0)
    assert a == b
    assert sorted(sentences(a)) == sorted(parts)
    others = {transform(TEXT, "shuffle_sentences", seed=s) for s in range(8)}
    assert len(others) > 1  # the seed matters


def test_unpunctuated_text_falls_back_to_word_chunks_only_when_asked():
    text = " ".join(f"w{i}" for i in range(45))
    assert not punctuated(text) and punctuated(TEXT)
    assert sentences(text) == [text]  # no boundary to find
    assert word_starts(text, 20) == [0, text.index("w20"), text.index("w40")]
    assert transform(text, "invert", fallback_words=20).split()[:5] == ["w40", "w41", "w42", "w43", "w44"]


def _sweep(model, data, *extra):
    return load_sweep("clf", [f"model={model}", f"dataset={data}", "limits.train=null", "limits.val=null",
                              "limits.test=null", "train.epochs=2", "seeds=[0]", "budgets=[16]",
                              "strategies=[head, tail]", *extra])


def test_a_list_of_transforms_is_a_grid_axis_with_its_own_cells_and_mode_label(tiny_model, tiny_data, tmp_path,
                                                                               cache_env):
    plain = _sweep(tiny_model, tiny_data)
    assert "clf" not in plain.cells()[0].to_dict()  # default settings: the run_ids of earlier runs hold
    sweep = _sweep(tiny_model, tiny_data, "clf.transform=[none, invert]", "clf.unpunctuated=words")
    cells = sweep.cells()
    assert len(cells) == 2 * len(plain.cells())
    assert {c.settings.transform for c in cells} == {"none", "invert"}
    summary = run_sweep(sweep, tmp_path / "r", ctx=Context(device=torch.device("cpu"), progress=False),
                        progress=False)
    assert summary.ok
    runs = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")
    assert len({r["run_id"] for r in runs}) == 4
    labels = {mode_label(r["spec"]) for r in runs}
    assert labels == {"probe+unpunctuated=words", "probe+transform=invert+unpunctuated=words"}
    inv = [r for r in runs if r["spec"]["clf"].get("transform") == "invert"]
    plain_runs = [r for r in runs if "transform" not in r["spec"]["clf"]]
    # the inverted documents are other documents: the same lengths, other windows' contents
    assert [r["info"]["labels"] for r in inv] == [r["info"]["labels"] for r in plain_runs]


def test_min_tokens_keeps_the_long_documents_and_counts_the_rest(tiny_model, tiny_data, tmp_path, cache_env):
    sweep = _sweep(tiny_model, tiny_data, "clf.min_tokens=60")
    assert run_sweep(sweep, tmp_path / "r", ctx=Context(device=torch.device("cpu"), progress=False),
                     progress=False).ok
    r = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")[0]
    assert r["info"]["short_docs_dropped_test"] > 0
    assert all(p["n_tokens"] >= 60 for p in _preds(tmp_path / "r", r))
    assert mode_label(r["spec"]) == "probe+min_tokens=60"


def _preds(root, record):
    from ctxbench.bench.report.tables import read_predictions

    return read_predictions(root / "clf", record)


def test_books_source_split_is_stratified_and_fixed():
    from ctxbench.tasks.data.sources import SOURCES, load_books

    dd = load_books()
    assert {k: len(v) for k, v in dd.items()} == {"train": 98, "val": 14, "test": 28}
    assert sorted(set(dd["test"]["label"])) == ["adult", "children"]
    assert "28 test documents" in SOURCES["books"].provenance


def test_document_weighting_counts_each_document_once(tiny_model, tiny_data, tmp_path, cache_env):
    """clf.window_weight=document: a window-level strategy's windows weigh 1/K each (own mode label)."""
    import ctxbench.tasks.clf as clf

    seen = {}
    real = clf.fit

    def spy(model, groups, y, evaluate, spec, device, progress, weights=None, units=None):
        seen[spec.strategy.label] = weights
        return real(model, groups, y, evaluate, spec, device, progress, weights, units=units)

    clf.fit = spy
    try:
        sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", "limits.train=null",
                                   "limits.val=null", "limits.test=null", "train.epochs=1", "seeds=[0]",
                                   "budgets=[16]", "strategies=[head, {name: sliding, max_windows: 4}]",
                                   "clf.window_weight=document"])
        assert run_sweep(sweep, tmp_path / "r", ctx=Context(device=torch.device("cpu"), progress=False),
                         progress=False).ok
    finally:
        clf.fit = real
    w = seen["sliding[max_windows=4]"]
    assert abs(sum(w) - 60) < 1e-6  # 60 training documents, each weighing 1 in all
    assert seen["head"] is not None and set(seen["head"]) == {1.0}  # one window a document: unchanged
    runs = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")
    assert {mode_label(r["spec"]) for r in runs} == {"probe+window_weight=document"}
