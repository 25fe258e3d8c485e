"""The classification task through the real runner, on a tiny random BERT and inline data."""
from __future__ import annotations

import csv
import random

import pytest
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.bench.report.tables import leaderboard
from ctxbench.tasks import Context
from ctxbench.tasks.clf import Classification, fold_windows

from ctxbench.strategies import ConfigError
from tests.conftest import WORDS, make_doc

ALL = ["strategies=[head, tail, head_tail, {name: sliding, pool: max}, {name: sliding, pool: vote},"
       " {name: hierarchical, pool: attention}, {name: hierarchical, pool: transformer}]"]


def sweep_for(model, data, *extra):
    return load_sweep("clf", [f"model={model}", f"dataset={data}", "limits.train=null", "limits.val=null",
                              "limits.test=null", "train.epochs=4", "train.patience=4", "seeds=[0]",
                              "budgets=[16,64]", *extra])


def run(sweep, root):
    return run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)


@pytest.fixture()
def ran(tiny_model, tiny_data, tmp_path, cache_env):
    sweep = sweep_for(tiny_model, tiny_data, *ALL)
    summary = run(sweep, tmp_path / "results")
    return sweep, summary, read_jsonl(tmp_path / "results" / "clf" / "runs.jsonl"), tmp_path / "results"


def test_grid_runs_every_cell_and_table_has_them(ran):
    sweep, summary, runs, _ = ran
    assert summary.ok and summary.ran == len(sweep.cells()) == 14
    assert all(r["status"] == "ok" for r in runs)
    board = leaderboard(runs)
    table = dict(board.sections)[next(t for t, _ in board.sections if "macro_f1" in t)]
    assert table.shape == (7, 2) and not (table == "–").any().any()
    for r in runs:
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0 and 0.0 <= r["metrics"]["macro_f1"] <= 1.0
        m = r["measurements"]
        assert m["docs_per_s"] > 0 and m["tokens_per_s"] > 0 and m["peak_memory_mb"] > 0
        assert m["latency_p95_ms"] >= m["latency_p50_ms"] > 0
        assert m["padded_tokens"] >= m["real_tokens"]
        assert r["env"]["threads"] >= 1 and r["info"]["attn_implementation"] in ("sdpa", "eager")


def test_pinned_token_accounting(ran):
    """Token counts are pure arithmetic on the tokenized data: pinned exactly."""
    _, _, runs, _ = ran
    got = {(r["spec"]["strategy"]["label"], r["budget"]): r["measurements"] for r in runs}
    assert got[("head", 16)]["real_tokens"] == 30 * 18  # every test doc has > 16 tokens: 16 + [CLS] + [SEP]
    assert got[("head", 16)]["compute_multiplier"] == 1.0
    assert got[("sliding[pool=max]", 16)]["coverage"] == 1.0
    assert got[("hierarchical[pool=attention]", 16)]["coverage"] == 1.0
    assert got[("head", 64)]["coverage"] == pytest.approx(got[("tail", 64)]["coverage"])
    assert got[("sliding[pool=max]", 64)]["compute_multiplier"] > got[("hierarchical[pool=attention]", 64)][
        "compute_multiplier"] > 1.0


def test_rerun_skips_recorded_runs(ran, tiny_model, tiny_data):
    sweep, _, runs, root = ran
    again = run(sweep, root)
    assert again.ran == 0 and again.skipped == len(runs)
    assert len(read_jsonl(root / "clf" / "runs.jsonl")) == len(runs)


def test_sidecar_holds_spans_per_document(ran):
    import json

    _, _, runs, root = ran
    r = next(r for r in runs if r["spec"]["strategy"]["name"] == "sliding")
    rows = [json.loads(line) for line in (root / "clf" / r["predictions_file"]).read_text().splitlines()]
    assert len(rows) == 30 and all(row["spans"] for row in rows)
    assert {"label", "pred", "correct", "n_tokens", "bucket"} <= set(rows[0])


def test_same_seed_same_metrics(tiny_model, tiny_data, tmp_path, cache_env):
    a = sweep_for(tiny_model, tiny_data, "strategies=[head, {name: hierarchical, pool: attention}]", "budgets=[32]")
    run(a, tmp_path / "one")
    run(a, tmp_path / "two")
    one = [r["metrics"] for r in read_jsonl(tmp_path / "one" / "clf" / "runs.jsonl")]
    two = [r["metrics"] for r in read_jsonl(tmp_path / "two" / "clf" / "runs.jsonl")]
    assert one == two


@pytest.fixture()
def short_data(tmp_path):
    rng = random.Random(1)
    for split, n in {"train": 45, "val": 15, "test": 21}.items():
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(n):
                label = list(WORDS)[i % 3]
                w.writerow([make_doc(rng, label, rng.randint(5, 40)), label])
    return str(tmp_path)


def test_hierarchical_one_chunk_mean_equals_head(tiny_model, short_data, tmp_path, cache_env):
    """Differential: on documents shorter than the budget, hierarchical (mean) is head."""
    sweep = sweep_for(tiny_model, short_data, "strategies=[head, {name: hierarchical, pool: mean}]", "budgets=[100]")
    run(sweep, tmp_path / "r")
    runs = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")
    assert len(runs) == 2
    assert runs[0]["metrics"] == runs[1]["metrics"]
    assert runs[0]["predictions_sha"] == runs[1]["predictions_sha"]


def test_empty_documents_counted_or_refused(tiny_model, tmp_path, cache_env):
    rng = random.Random(2)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in {"train": 30, "val": 9, "test": 9}.items():
        with open(data / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(n):
                w.writerow([make_doc(rng, list(WORDS)[i % 3], 20), list(WORDS)[i % 3]])
            if split == "test":
                w.writerow(["", "space"])
                w.writerow(["   \t ", "sport"])
    sweep = sweep_for(tiny_model, str(data), "strategies=[head, sliding]", "budgets=[16]")
    run(sweep, tmp_path / "keep")
    runs = read_jsonl(tmp_path / "keep" / "clf" / "runs.jsonl")
    assert all(r["status"] == "ok" and r["info"]["empty_docs_test"] == 2 and r["measurements"]["docs"] == 11
               for r in runs)
    with pytest.raises(ConfigError, match="before any cell ran.*2 empty or whitespace-only documents"):
        run(sweep_for(tiny_model, str(data), "strategies=[head]", "budgets=[16]", "empty_docs=error"), tmp_path / "err")
    assert not (tmp_path / "err" / "clf" / "runs.jsonl").exists()


def test_unknown_test_label_is_an_error_naming_it(tiny_model, tiny_data, tmp_path, cache_env):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    with open(data / "test.csv", "a", newline="") as f:
        csv.writer(f).writerow(["some text here", "cooking"])
    sweep = sweep_for(tiny_model, str(data), "strategies=[head, tail, sliding]", "budgets=[16, 32]")
    with pytest.raises(ConfigError) as err:  # a data-level error: once, before the grid, not once per cell
        run(sweep, tmp_path / "r")
    assert "before any cell ran" in str(err.value) and str(err.value).count("['cooking']") == 1
    assert not (tmp_path / "r" / "clf" / "runs.jsonl").exists()


class _Blank:
    """A tokenizer stand-in that turns every text into no tokens (the guard must name it)."""

    name_or_path = "blank-tok"
    backend_tokenizer = None

    def __call__(self, texts, **kw):
        return {"input_ids": [[] for _ in texts]}


def test_a_tokenizer_that_empties_the_documents_is_an_error_naming_it(tiny_data, cache_env):
    from ctxbench.bench.config import RunSpec, StrategySpec
    from ctxbench.tasks.clf import load_data

    spec = RunSpec(task="clf", dataset=tiny_data, model="x", mode="probe", strategy=StrategySpec("head"),
                   budget=16, seed=0)
    with pytest.raises(ConfigError, match="tokenizer _Blank .'blank-tok'. encodes 60 of 60 train documents to zero"):
        load_data(spec, _Blank(), "k")


def test_budget_beyond_model_positions_refused(tiny_model, tiny_data, tmp_path, cache_env):
    summary = run(sweep_for(tiny_model, tiny_data, "strategies=[head]", "budgets=[127]"), tmp_path / "r")
    assert not summary.ok and "exceeds the model's room of 126 tokens" in summary.failed[0][2]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_finetune_modes(tiny_model, tiny_data, tmp_path, cache_env, kind):
    sweep = sweep_for(tiny_model, tiny_data, "mode=finetune", f"train.finetune={kind}", "train.epochs=1",
                      "train.lr=0.001", "strategies=[head, {name: hierarchical, pool: mean}]", "budgets=[32]")
    assert run(sweep, tmp_path / "r").ok
    runs = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")
    for r in runs:
        m = r["measurements"]
        assert m["train_examples_per_s"] > 0 and m["trainable_params"] > 0
        if kind == "lora":
            assert m["trainable_params"] < m["total_params"] / 5
        else:
            assert m["trainable_params"] == m["total_params"]


def test_fold_windows_pools_by_hand():
    logits = torch.tensor([[1.0, 0.0], [3.0, 5.0], [0.0, 2.0]])
    owner = [0, 0, 1]
    assert torch.allclose(fold_windows(logits, owner, 2, "mean"), torch.tensor([[2.0, 2.5], [0.0, 2.0]]))
    assert torch.allclose(fold_windows(logits, owner, 2, "max"), torch.tensor([[3.0, 5.0], [0.0, 2.0]]))
    votes = fold_windows(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 9.0]]), [0, 0, 0], 1, "vote")
    assert votes.argmax(1).item() == 0  # two votes beat one confident window


def test_selection_and_adaptive_strategies_run_through_the_task(tiny_model, tiny_data, tmp_path, cache_env):
    strategies = "strategies=[textrank, tfidf_select, random_select, head_select, adaptive]"
    # the tiny documents hold no sentence punctuation: refused before the grid, naming the fallback
    with pytest.raises(ConfigError, match=r"114 of 114 sampled documents have no sentence punctuation.*"
                                          r"clf.unpunctuated=words"):
        run(sweep_for(tiny_model, tiny_data, strategies, "budgets=[16]"), tmp_path / "refused")
    assert not (tmp_path / "refused" / "clf" / "runs.jsonl").exists()
    sweep = sweep_for(tiny_model, tiny_data, strategies, "budgets=[16]", "clf.unpunctuated=words")
    assert run(sweep, tmp_path / "r").ok
    runs = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")
    assert len(runs) == 5
    for r in runs:
        assert r["info"]["unpunctuated_docs_test"] == 30  # the explicit fallback, counted
        assert r["spec"]["clf"] == {"unpunctuated": "words"}
        m = r["measurements"]
        assert 0 < m["coverage"] <= 1
        # selection time is recorded for the strategies that select sentences, and only for them
        selects = r["spec"]["strategy"]["name"] != "adaptive"
        assert (m["select_seconds_test"] > 0) if selects else ("select_seconds_test" not in m)
        # splitting into sentences is timed apart from selection: once per data set, shared by the cells
        assert (m["sentence_split_seconds"] > 0) if selects else ("sentence_split_seconds" not in m)
        if r["spec"]["strategy"]["name"] != "head_select":
            assert m["compute_multiplier"] <= 1.0 + 1e-9 or r["spec"]["strategy"]["name"] == "adaptive"


def test_encoder_sharing_rows_of_another_sweep_are_added_not_overwritten(tmp_path):
    """Two sweeps (other data) writing results/clf/encoder_sharing.json: each keeps its rows; a rerun
    of one sweep replaces only its own."""
    import json

    from ctxbench.bench.results import merge_records
    from ctxbench.tasks.model.windows import WindowCache

    def summarise(dataset, seconds, dtype=None):
        w1, w2, w3 = ((0, 8),), ((4, 12),), ((0, 4), (8, 12))
        cache = WindowCache()
        cache.rows.update({("test", 0, w): (None, seconds, 8) for w in (w1, w2, w3)})
        memo = {("grid-windows", 8): {"sliding": {("test", 0, w1), ("test", 0, w2)}, "head": {("test", 0, w1)},
                                      "head_tail": {("test", 0, w3)}},
                ("span-cache-of", 8): cache,
                ("grid-of", 8): {"dataset": dataset, "model": "m", "data_seed": 0, "limits": {"test": 1},
                                 **({"compute_dtype": dtype} if dtype else {})}}
        report = Classification().summary(Context(device=torch.device("cpu"), memo=memo))
        for name, (rows, key) in report.records.items():
            merge_records(tmp_path / name, rows, key)
        return report.lines

    (line,) = summarise("a", 1.0)
    assert "1.50x one sliding pass" in line and "1.50x its tokens" in line
    summarise("b", 2.0)
    summarise("a", 3.0)
    rows = json.loads((tmp_path / "encoder_sharing.json").read_text())
    assert sorted((r["dataset"], r["encoder_s_all"]) for r in rows) == [("a", 9.0), ("b", 6.0)]
    # another precision on the same sample is another row; a row from before compute_dtype was recorded
    # counts as float32, so a float32 rerun replaces it
    summarise("b", 4.0, "bfloat16")
    summarise("a", 5.0, "float32")
    rows = json.loads((tmp_path / "encoder_sharing.json").read_text())
    assert sorted((r["dataset"], r.get("compute_dtype", "-"), r["encoder_s_all"]) for r in rows) == [
        ("a", "float32", 15.0), ("b", "-", 6.0), ("b", "bfloat16", 12.0)]


def test_model_key_follows_the_files_not_their_place(tiny_model, tmp_path):
    """Two copies of one model folder share caches (a second checkout does not re-encode); changed
    weights or tokenizer files do not."""
    import shutil

    from ctxbench.tasks.model.encoder import load_encoder
    from ctxbench.tasks.model.encoder import model_key

    cpu = torch.device("cpu")
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert model_key(load_encoder(tiny_model, cpu)) == model_key(load_encoder(str(copy), cpu))
    from transformers import BertModel

    other = BertModel.from_pretrained(str(copy))
    with torch.no_grad():
        other.embeddings.word_embeddings.weight[0] += 1.0  # one changed weight
    other.save_pretrained(copy)
    assert model_key(load_encoder(str(copy), cpu)) != model_key(load_encoder(tiny_model, cpu))


def test_bfloat16_inference_is_its_own_cell_and_records_its_dtype(tiny_model, tiny_data, tmp_path, cache_env):
    """``precision=bfloat16`` reaches the encoder on a CPU: another run_id, another span cache, vectors
    that differ from float32 only by rounding, and a leaderboard mode of its own."""
    base = ("strategies=[head]", "budgets=[32]")
    run(sweep_for(tiny_model, tiny_data, *base), tmp_path / "r")
    run(sweep_for(tiny_model, tiny_data, *base, "precision=bfloat16"), tmp_path / "r")
    runs = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")
    assert [r["measurements"]["compute_dtype"] for r in runs] == ["float32", "bfloat16"]
    assert runs[0]["run_id"] != runs[1]["run_id"] and runs[1]["spec"]["precision"] == "bfloat16"
    assert runs[1]["measurements"]["windows_encoded_now"] > 0  # not served from the float32 span cache
    assert abs(runs[0]["metrics"]["macro_f1"] - runs[1]["metrics"]["macro_f1"]) < 0.2
    modes = set(leaderboard(runs, root=tmp_path / "r" / "clf").cells["mode"])
    assert modes == {"probe", "probe+bfloat16"}
    # the encoder's forward really runs in bf16: same inputs, vectors equal up to bf16 rounding only
    from ctxbench.tasks.model.encoder import encode, load_encoder

    enc = load_encoder(tiny_model, torch.device("cpu"))
    inputs = [[101, 2000 + i, 2100 + i, 102] for i in range(4)]
    f32, b16 = (encode(enc.model, inputs, enc.tokenizer.pad_token_id, torch.device("cpu"), precision=p).vectors
                for p in ("float32", "bfloat16"))
    assert not torch.equal(f32, b16) and torch.allclose(f32, b16, atol=0.05, rtol=0.05)


def test_a_stopped_encode_resumes_from_its_last_checkpoint(tiny_model, tiny_data, tmp_path, cache_env, monkeypatch):
    """The grid's windows are encoded in chunks and the span cache is saved between them: a sweep stopped in
    its third chunk encodes, when rerun, only what the first two did not, and scores as an unstopped one."""
    import ctxbench.tasks.clf as clf

    grid = ("strategies=[head, {name: sliding, pool: mean}]", "budgets=[16]", "cost_repeats=0")
    sweep = sweep_for(tiny_model, tiny_data, *grid)
    run(sweep, tmp_path / "whole")
    whole = read_jsonl(tmp_path / "whole" / "clf" / "runs.jsonl")
    n_windows = whole[0]["measurements"]["windows_encoded_now"]
    assert n_windows > 21

    monkeypatch.setenv("CTXBENCH_CACHE", str(tmp_path / "fresh_cache"))
    monkeypatch.setattr(clf, "ENCODE_CHUNK", 7)
    monkeypatch.setattr(clf, "CHECKPOINT_S", 0.0)
    real, calls = clf.encode, []

    def stopped_in_chunk_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(clf, "encode", stopped_in_chunk_3)
    first = run(sweep, tmp_path / "stopped")
    assert not first.ok
    monkeypatch.setattr(clf, "encode", real)
    run(sweep, tmp_path / "stopped")
    done = {r["spec"]["strategy"]["name"]: r for r in read_jsonl(tmp_path / "stopped" / "clf" / "runs.jsonl")
            if r["status"] == "ok"}
    assert set(done) == {"head", "sliding"}
    assert sum(r["measurements"]["windows_encoded_now"] for r in done.values()) == n_windows - 2 * 7
    for r in whole:
        again = done[r["spec"]["strategy"]["name"]]
        assert again["run_id"] == r["run_id"] and again["metrics"] == pytest.approx(r["metrics"])
