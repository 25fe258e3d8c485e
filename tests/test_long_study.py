"""The long-document study's report (bench/studies/long_report.py) on a tiny study: recommendations against
the best strategy, the inversion verdicts, the model-vs-model pairing and the provenance lines."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.bench.report.tables import data_provenance
from ctxbench.bench.run.runner import run_sweep
from ctxbench.bench.studies.long_documents import merged_rows, sweeps
from ctxbench.bench.studies.long_report import sample_label, write_report
from ctxbench.tasks.base import Context


def _run(root, model, data, *extra):
    sweep = load_sweep("clf", [f"model={model}", f"dataset={data}", "limits.train=null", "limits.val=null",
                               "limits.test=null", "train.epochs=3", "seeds=[0,1]", "budgets=[16]",
                               "clf.unpunctuated=words", "cost_docs=4", "cost_repeats=1", *extra])
    summary = run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    assert summary.ok, summary.failed


def test_the_study_report_on_a_tiny_study(tiny_model, tiny_data, tmp_path, cache_env):
    root = tmp_path / "study"
    _run(root, tiny_model, tiny_data, "strategies=[head, tail, {name: sliding, max_windows: 4}]",
         "clf.transform=[none, invert]")
    readme = write_report(root).read_text()
    assert "## What ran" in readme and "| core" in readme  # the study's parts, counted against the config
    assert "| all parts (distinct cells)" in readme and "of it encoding windows (min)" in readme
    rec = (root / "recommendations.md").read_text()
    assert rec.count("| clf · ") == 2  # one row per (group, budget): the original and the inverted documents
    pos = (root / "position.md").read_text()
    assert "under inversion" in pos and "tail" in pos and "(head itself)" in pos
    assert (root / "clf" / "SUMMARY.md").exists() and list((root / "plots").glob("pareto-*.png"))


def test_the_long_model_is_paired_with_the_short_one_on_the_same_sample(tiny_model, tiny_data, tmp_path,
                                                                         cache_env):
    import shutil

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)  # same weights under another name: a second "model" on the same sample
    root = tmp_path / "study"
    _run(root, tiny_model, tiny_data, "strategies=[head, tail]")
    _run(root, str(other), tiny_data, "strategies=[head]")
    write_report(root)
    models = (root / "models.md").read_text()
    assert "head @16" in models and "Δ vs" in models
    assert models.count(" head @16 ") >= 2 and " tail @16 " in models


def test_every_part_of_the_study_is_a_valid_sweep_and_the_data_say_where_they_come_from():
    parts = dict(sweeps())
    assert list(parts)[:3] == ["books", "transforms", "core"]
    assert {c.settings.transform for c in parts["transforms"].cells()} == {"none", "invert", "shuffle_sentences"}
    assert parts["finetune"].train.steps == 150  # equal optimizer steps for every strategy of that part
    assert parts["core"].limits.train is None and len(parts["core"].seeds) == 5
    assert "lower-cased" in data_provenance("clf", "20ng")
    assert "10,570 questions" in data_provenance("qa", "squad_dev") and "sha256" in data_provenance("qa", "squad_dev")
    assert "SILVER" in data_provenance("ner", "news_silver")
    # the "What ran" table says which parts read a subsample, and how the fine-tuned part trains
    assert sample_label(parts["core"].cells()[0]) == "all documents; probe"
    assert sample_label(parts["finetune"].cells()[0]) == (
        "subsample (data_seed 0): 400 train / 100 val / 300 test; finetune, 150 steps")


def test_strategies_are_timed_side_by_side_on_the_cost_sample(tiny_model, tiny_data, cache_env):
    from ctxbench.tasks import get_task

    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", "limits.train=null", "limits.val=null",
                               "limits.test=null", "budgets=[16]", "cost_docs=6", "clf.unpunctuated=words",
                               "strategies=[head, {name: sliding, max_windows: 4}, textrank]"])
    spec = sweep.cells()[0]
    got = get_task("clf").cost_side_by_side(spec, Context(device=torch.device("cpu"), progress=False),
                                            sweep.strategies, repeats=1)
    assert set(got) == {"head", "sliding[max_windows=4]", "textrank"}
    assert all(v["docs"] == 6 and v["seconds"] > 0 for v in got.values())
    assert got["sliding[max_windows=4]"]["real_tokens"] > got["head"]["real_tokens"]
    assert got["head"]["inputs"] == got["textrank"]["inputs"] == 6  # one window a document
    assert got["textrank"]["selection_timed"] and not got["head"]["selection_timed"]  # its pass includes selection


def test_measuring_one_part_side_by_side_keeps_the_other_parts_rows(tmp_path):
    import json

    path = tmp_path / "cost_side_by_side.json"
    assert merged_rows(path, [{"part": "core", "x": 1}]) == [{"part": "core", "x": 1}]
    path.write_text(json.dumps({"rows": [{"part": "books", "x": 0}, {"part": "core", "x": 0}]}))
    assert merged_rows(path, [{"part": "core", "x": 2}]) == [{"part": "books", "x": 0}, {"part": "core", "x": 2}]


def test_a_rerun_of_some_strategies_keeps_the_parts_and_refuses_a_name_no_part_runs():
    from ctxbench.bench.studies.long_documents import only, run

    parts = dict(sweeps())
    picked = only(parts["transforms"], ["textrank", "tfidf_select"])
    assert [s.name for s in picked.strategies] == ["textrank", "tfidf_select"]
    assert picked.budgets == parts["transforms"].budgets and picked.settings == parts["transforms"].settings
    assert only(parts["smollm2"], ["textrank"]) is None and only(parts["core"], None) is parts["core"]
    with pytest.raises(SystemExit, match="no part of the study runs"):
        run(["books"], Path("unused"), strategies=["textrnk"])


def test_a_selection_strategys_side_by_side_cost_counts_only_where_its_selection_was_timed():
    import pandas as pd

    from ctxbench.bench.studies.long_report import recommendation_rows

    def cell(strategy, metric, p, ms):
        return {"group": "g", "group_id": "g", "dataset": "d", "model": "m", "budget": 64, "strategy": strategy,
                "reference": "head", "metric": metric, "ci_lo": metric - 0.1, "ci_hi": metric + 0.1,
                "p_holm": p, "diff_vs_head": metric - 0.5, "more_units": float("nan"), "n_units": 100,
                "cost_latency_ms": ms}

    cells = pd.DataFrame([cell("head", 0.5, float("nan"), 10.0), cell("textrank", 0.49, 0.9, 30.0)])
    col = "measured cost of each (× head side by side, else ms/doc b=1 p50 of its own pass)"
    old = {("d", "m", 64, "head"): {"x_head": 1.0}, ("d", "m", 64, "textrank"): {"x_head": 1.1}}
    assert recommendation_rows(cells, old)[0][col] == "head 10.0 ms; textrank 30.0 ms"  # its model pass alone: not used
    timed = {**old, ("d", "m", 64, "textrank"): {"x_head": 2.5, "selection_timed": True}}
    assert recommendation_rows(cells, timed)[0][col] == "head 1.00× head; textrank 2.50× head"


def test_the_two_hour_plan_runs_the_same_grid_and_says_which_parts_read_a_subsample():
    whole, short = dict(sweeps()), dict(sweeps(config="long_documents_2h"))
    assert list(short) == list(whole)
    for name, sweep in short.items():
        if name != "finetune":  # the fine-tuned part keeps its pair (head, sliding) at fewer steps
            assert [s.label for s in sweep.strategies] == [s.label for s in whole[name].strategies], name
            assert (sweep.budgets, sweep.seeds, sweep.settings) == (whole[name].budgets, whole[name].seeds,
                                                                    whole[name].settings), name
        label = sample_label(sweep.cells()[0])
        assert label.startswith("all documents" if name == "books" else "subsample (data_seed 0)"), (name, label)
    assert short["core"].limits.test == short["transforms"].limits.test == 600  # one subsample: shared cells
    assert short["smollm2"].limits == short["minilm_pair"].limits  # the model-vs-model pairing
    assert short["core"].precision == "auto"  # native resolves per machine (the tests pin no native bf16)


def test_each_run_of_a_part_appends_its_wall_time_and_the_readme_sums_those_that_ran(tmp_path):
    from ctxbench.bench.studies.long_documents import record_wall
    from ctxbench.bench.studies.long_report import wall_time_line

    assert "no timed run" in wall_time_line(tmp_path)
    row = {"started": "2026-12-06T16:00:00+00:00", "failed": 0, "precision": "bfloat16", "cpu_count": 2}
    record_wall(tmp_path, {**row, "part": "books", "wall_s": 600.0, "ran": 200, "skipped": 0})
    record_wall(tmp_path, {**row, "part": "core", "wall_s": 1800.0, "ran": 50, "skipped": 0})
    record_wall(tmp_path, {**row, "part": "core", "wall_s": 30.0, "ran": 0, "skipped": 200})  # nothing measured
    record_wall(tmp_path, {**row, "part": "core", "wall_s": 1200.0, "ran": 150, "skipped": 50})  # resumed
    line = wall_time_line(tmp_path)
    assert "**60 min** on 2 CPU cores" in line and "books 10.0, core 50.0 min" in line and "in 3 run(s)" in line


def test_a_plan_is_held_against_the_whole_data_verdicts():
    import pandas as pd

    from ctxbench.bench.studies.long_report import agreement_rows

    def cell(strategy, mark, mode="probe+unpunctuated=words", budget=64):
        return {"dataset": "d", "model": "m", "mode": mode, "budget": budget, "strategy": strategy, "metric": 0.5,
                "diff_vs_head": 0.01, "diff_lo": -0.01, "diff_hi": 0.03, "mark": mark}

    whole = pd.DataFrame([cell("head", ""), cell("a", "▲"), cell("b", "▲"), cell("c", ""), cell("d", "▼"),
                          cell("e", "", budget=128)])
    plan = pd.DataFrame([cell("head", "", "probe+bfloat16+unpunctuated=words"),  # precision is not the cell
                         *(cell(s, m, "probe+bfloat16+unpunctuated=words") for s, m in
                           [("a", "▲"), ("b", ""), ("c", "▲"), ("d", "▲")]),
                         cell("a", "▲", "probe+transform=invert+unpunctuated=words")])  # not in the whole data
    rows, line = agreement_rows(plan, whole)
    assert [r["verdict"] for r in rows] == ["same", "undecided here", "decided only here", "REVERSED"]
    assert "Of 4 differences" in line and "same in 1" in line and "reversed in 1" in line


def test_the_two_hour_plans_report_compares_itself_with_the_whole_data_study(tiny_model, tiny_data, tmp_path,
                                                                             cache_env, monkeypatch):
    monkeypatch.chdir(tmp_path)  # plan roots are results/studies/<config> under the working directory
    whole, short = Path("results/studies/long_documents"), Path("results/studies/long_documents_2h")
    _run(whole, tiny_model, tiny_data, "strategies=[head, tail]")
    _run(short, tiny_model, tiny_data, "strategies=[head, tail]", "precision=bfloat16")
    readme = write_report(short, "2h").read_text()
    assert "make study PLAN=2h" in readme and "long_documents_2h.yaml" in readme
    assert "## Against the whole-data study" in readme and "Of 1 difference from" in readme
    table = (short / "agreement.md").read_text()
    assert "| tail " in table and "whole data: Δ vs head" in table
