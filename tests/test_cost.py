"""The measured cost pass (tasks/model/cost.py) and counted FLOPs (tasks/model/flops.py)."""
from __future__ import annotations

import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.tasks import Context
from ctxbench.tasks.model import cost as cost_mod
from ctxbench.tasks.model.cost import CostProbe, cost_sample, measure_cost, side_by_side
from ctxbench.tasks.model.flops import forward_flops

CPU = torch.device("cpu")


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128)).eval()


def kaplan(n_layers: int, d: int, ff: int, L: int) -> float:
    """The hand formula this module replaced (right for BERT's matmuls, blind to SwiGLU and GQA)."""
    return 2 * n_layers * (4 * d * d + 2 * d * ff) * L + 4 * n_layers * L * L * d


def test_counted_flops_match_bert_and_see_what_the_formula_misses_in_llama():
    bert = tiny_bert()
    got = forward_flops(bert, [40], CPU)
    assert abs(got - kaplan(2, 32, 64, 40)) / got < 0.05  # BERT: the formula's matmuls, give or take the pooler
    assert forward_flops(bert, [40, 40, 10], CPU) == 2 * got + forward_flops(bert, [10], CPU)  # per length, cached
    torch.manual_seed(0)
    llama = LlamaModel(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=1)).eval()
    counted = forward_flops(llama, [40], CPU)
    # SwiGLU has three d x ff matrices (not two); grouped-query K/V projections are 4x narrower here
    d, ff, kv, L = 32, 128, 8, 40
    exact = 2 * 2 * L * (2 * d * d + 2 * d * kv + 3 * d * ff) + 2 * 4 * L * L * d
    assert counted == exact and abs(counted - kaplan(2, d, ff, L)) / counted > 0.1


def probe(model, docs):
    return CostProbe(lambda ids, mask, types: model(input_ids=ids, attention_mask=mask).last_hidden_state,
                     docs, 0, key=("t", id(model)))


def test_measure_cost_times_the_strategy_alone():
    model = tiny_bert()
    one = [[list(range(5, 37))] for _ in range(6)]  # 6 documents, one 32-token window each
    four = [[list(range(5, 37))] * 4 for _ in range(6)]  # the same documents, four windows each
    a = measure_cost(probe(model, one), CPU, batch_size=8, repeats=5)
    b = measure_cost(probe(model, four), CPU, batch_size=8, repeats=5)
    for c in (a, b):
        assert c["cost_docs"] == 6 and c["cost_repeats"] == 5
        assert 0 < c["latency_b1_p50_ms"] <= c["latency_b1_p95_ms"]
        assert c["flops_counter"].endswith("FlopCounterMode") and c["matmul_gflops"] > 0
        assert (c["utilisation"] is None) == (c["utilisation_measured"] > 1.0)
        assert c["cost_peak_mb"] is None or c["cost_peak_mb"] > 0
    assert b["cost_real_tokens"] == 4 * a["cost_real_tokens"] and b["flops_per_doc"] == 4 * a["flops_per_doc"]
    assert b["cost_inputs"] == 4 * a["cost_inputs"] and a["cost_seconds_median"] > 0 and b["cost_seconds_median"] > 0
    # (no speed comparison here: timings on a shared machine belong to benchmarks, not unit tests)


def test_a_selection_strategys_document_work_is_in_its_cost():
    """``CostProbe.prepare`` (sentence splitting and selection) runs before each document's forward in every
    timed pass and in its batch-1 latency: a planted 15 ms of selection per document shows in both, and
    not in the model's own seconds."""
    import time

    calls = []

    def select(d):
        calls.append(d)
        time.sleep(0.015)

    docs = [[list(range(5, 37))] for _ in range(4)]
    plain = measure_cost(probe(tiny_bert(), docs), CPU, batch_size=8, repeats=3)
    with_select = probe(tiny_bert(), docs)
    with_select.prepare = select
    c = measure_cost(with_select, CPU, batch_size=8, repeats=3)
    assert sorted(calls) == sorted(list(range(4)) * (1 + 3 + 1))  # warm-up, 3 repeats, one latency pass each
    assert c["latency_b1_p50_ms"] >= 15 and c["cost_select_seconds_median"] >= 4 * 0.015
    assert c["cost_docs_per_s"] <= 4 / c["cost_select_seconds_median"]
    assert 0 < c["cost_select_share"] < 1 and "selection" in c["cost_includes"]
    assert c["cost_tokens_per_s"] == c["cost_real_tokens"] / c["cost_seconds_median"]  # the model's own rate
    assert "cost_select_seconds_median" not in plain and "cost_includes" not in plain
    model = tiny_bert()  # side by side, a set's own document work is timed with its pass, and only its own
    t = side_by_side(lambda ids, mask, types: model(input_ids=ids, attention_mask=mask).last_hidden_state,
                     {"a": [x for d in docs for x in d], "b": [x for d in docs for x in d]}, 0, CPU, 8, repeats=1,
                     prepare={"b": lambda: time.sleep(0.06)})
    assert t["b"] >= 0.06 and set(t) == {"a", "b"}  # (no speed comparison: a busy machine can stall "a" too)


def test_the_runner_times_selection_with_a_selection_strategys_model_pass(tiny_model, tiny_data, tmp_path,
                                                                         cache_env):
    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", "budgets=[16]", "seeds=[0]",
                               "strategies=[head, textrank]", "train.epochs=1", "cost_docs=4", "cost_repeats=1",
                               "clf.unpunctuated=words"])
    summary = run_sweep(sweep, tmp_path, ctx=Context(device=CPU, progress=False), progress=False)
    assert summary.ok, summary.failed
    cost = {r["spec"]["strategy"]["label"]: r["measurements"]["cost"]
            for r in read_jsonl(tmp_path / "clf" / "runs.jsonl")}
    assert cost["textrank"]["cost_select_seconds_median"] > 0 and "selection" in cost["textrank"]["cost_includes"]
    assert "cost_select_seconds_median" not in cost["head"]


def test_utilisation_above_100_percent_is_a_flagged_error(monkeypatch):
    monkeypatch.setattr(cost_mod.Calibrator, "sample", lambda self: 1e-6)  # an absurdly slow "peak"
    c = measure_cost(probe(tiny_bert(), [[list(range(5, 37))]] * 3), CPU, batch_size=4, repeats=1)
    assert c["utilisation"] is None and c["utilisation_measured"] > 1.0 and "error" in c["utilisation_error"]


def test_cost_sample_is_fixed_and_shared():
    assert cost_sample(10, 20) == list(range(10))
    assert cost_sample(100, 8, seed=0) == cost_sample(100, 8, seed=0) and len(set(cost_sample(100, 8))) == 8


def test_the_runner_measures_each_strategy_once_per_cost_key(tiny_model, tiny_data, tmp_path, cache_env):
    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", "budgets=[16]", "seeds=[0,1]",
                               "strategies=[head, {name: sliding, pool: mean}]", "train.epochs=2", "cost_docs=6",
                               "cost_repeats=3"])
    summary = run_sweep(sweep, tmp_path, ctx=Context(device=CPU, progress=False), progress=False)
    assert summary.ok, summary.failed
    runs = {(r["spec"]["strategy"]["label"], r["spec"]["seed"]): r["measurements"]
            for r in read_jsonl(tmp_path / "clf" / "runs.jsonl")}
    head, sliding = runs[("head", 0)]["cost"], runs[("sliding[pool=mean]", 0)]["cost"]
    assert head["measured_in"] == "this cell" and runs[("head", 1)]["cost"]["measured_in"].startswith("an earlier")
    assert runs[("head", 1)]["cost"]["cost_seconds_median"] == head["cost_seconds_median"]  # not the seed's
    assert sliding["cost_inputs"] > head["cost_inputs"] == 6 and sliding["flops_per_doc"] > head["flops_per_doc"]
    assert "estimate" in runs[("head", 0)]["timing_kind"]


def test_the_encoder_sharing_ratio_is_measured_side_by_side(tiny_model, tiny_data, tmp_path, cache_env):
    import json

    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", "budgets=[16]", "seeds=[0]",
                               "strategies=[head, tail, {name: sliding, pool: mean}]", "train.epochs=2",
                               "cost_docs=8", "cost_repeats=1"])
    summary = run_sweep(sweep, tmp_path, ctx=Context(device=CPU, progress=False), progress=False)
    assert summary.ok and any("measured side by side on 8 test documents" in n for n in summary.notes)
    (row,) = json.loads((tmp_path / "clf" / "encoder_sharing.json").read_text())
    assert row["measured_windows_all"] >= row["measured_windows_sliding"] > 0
    assert row["measured_s_all"] > 0 and row["measured_s_sliding"] > 0 and row["measured_ratio"] > 0


def test_cpu_pass_memory_is_measured_in_a_child_that_ran_only_that_pass():
    """The child's rise is the pass's own: a pass that holds 64 MB more reads about 64 MB more, and the
    parent's own high-water mark is not touched by it."""
    from ctxbench.tasks.model.measure import rss_peak_mb

    parent_peak = rss_peak_mb()

    def small():
        torch.ones(1 << 20).sum()  # 4 MB

    def big():
        torch.ones(17 << 20).sum()  # 68 MB

    a, b = cost_mod.child_pass_memory(small), cost_mod.child_pass_memory(big)
    assert a["cost_memory_kind"].startswith("cpu: a child forked") and a["cost_peak_mb"] > a["cost_activation_mb"]
    assert 50 < b["cost_activation_mb"] - a["cost_activation_mb"] < 90
    assert rss_peak_mb() < parent_peak + 50  # the 68 MB lived in the child only


def test_a_failing_memory_child_is_an_error_not_a_number():
    import pytest

    def boom():
        raise ValueError("planted")

    with pytest.raises(RuntimeError, match="planted"):
        cost_mod.child_pass_memory(boom)


def test_a_hanging_memory_child_is_killed_and_reported():
    import time

    import pytest

    with pytest.raises(RuntimeError, match="ran past"):
        cost_mod.child_pass_memory(lambda: time.sleep(30), timeout_s=1.0)
