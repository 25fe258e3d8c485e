"""ctxbench.bench.report.tables: the leaderboard is one pure function of the JSONL and its sidecars.

The fixture (tests/assets/report, written by make_fixture.py) plants a significant gain
(sliding) and a null change (tail) against head; the golden file pins the markdown.
"""
from __future__ import annotations

import difflib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctxbench.bench.results import read_jsonl
from ctxbench.bench.report.tables import BUCKETS, DOWN, UP, leaderboard, length_bucket, write_leaderboard

ASSETS = Path(__file__).parent / "assets" / "report"
CLF = ASSETS / "clf"
QA = ASSETS / "qa"
GOLDEN = ASSETS / "leaderboard.golden.md"
SLIDING = "sliding[max_windows=4,pool=mean]"


@pytest.fixture(scope="module")
def board():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fixture's sidecars must reproduce every recorded metric
        return leaderboard(read_jsonl(CLF / "runs.jsonl"), root=CLF)


def _diff(expected: str, actual: str) -> str:
    return "\n".join(difflib.unified_diff(expected.splitlines(), actual.splitlines(), "golden", "now", lineterm=""))


def test_golden_markdown(board):
    expected = GOLDEN.read_text()
    actual = board.markdown()
    assert actual == expected, ("leaderboard markdown changed; if intended, rerun "
                                "`python tests/assets/report/make_fixture.py --golden` and review:\n"
                                + _diff(expected, actual))


def test_golden_catches_a_changed_number(tmp_path):
    """The golden test can fail: one recorded metric nudged -> different markdown."""
    root = tmp_path / "clf"
    shutil.copytree(CLF, root)
    runs = read_jsonl(root / "runs.jsonl")
    runs[0]["metrics"]["macro_f1"] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sidecar no longer reproduces the nudged metric: noted
        changed = leaderboard(runs, root=root)
    assert changed.markdown() != GOLDEN.read_text()
    assert any("recorded" in n for n in changed.notes)


def test_cells_hold_the_recorded_means(board):
    """Cell means are the seed means of the metric each run recorded (computed here from the JSONL)."""
    expected: dict[tuple[str, int], list[float]] = {}
    for r in read_jsonl(CLF / "runs.jsonl"):
        if r["status"] == "ok":
            expected.setdefault((r["spec"]["strategy"]["label"], r["budget"]), []).append(r["metrics"]["macro_f1"])
    cells = board.cells.set_index(["strategy", "budget"])
    assert len(cells) == len(expected)
    for key, values in expected.items():
        assert cells.loc[key, "metric"] == pytest.approx(np.mean(values))
        assert cells.loc[key, "ci_lo"] <= np.mean(values) <= cells.loc[key, "ci_hi"]
        assert cells.loc[key, "n_seeds"] == len(values) and cells.loc[key, "n_examples"] == 80


def test_planted_effects_are_marked(board):
    cells = board.cells.set_index(["strategy", "budget"])
    for budget in (32, 64):
        assert cells.loc[(SLIDING, budget), "significant"] is True
        assert cells.loc[(SLIDING, budget), "diff_lo"] > 0
        assert cells.loc[("tail", budget), "significant"] is False
        assert pd.isna(cells.loc[("head", budget), "p_vs_head"])
    table = next(s.table for s in board.sections if s.kind == "metric")
    assert all(cell.endswith(UP) for cell in table.loc[SLIDING])
    assert not any(cell.endswith((UP, DOWN)) for cell in table.loc["tail"])
    assert not any(cell.endswith((UP, DOWN)) for cell in table.loc["head"])
    diff = next(s.table for s in board.sections if s.kind == "diff")
    assert all("n more" in cell for cell in diff.loc["tail"])  # undecided: how many more would decide it
    assert all(UP in cell and "n more" not in cell for cell in diff.loc[SLIDING])


def test_bucket_counts_match_the_sidecars(board):
    runs = [r for r in read_jsonl(CLF / "runs.jsonl")
            if r["status"] == "ok" and r["budget"] == 32 and r["spec"]["strategy"]["label"] == "head"]
    rows = [json.loads(x) for x in (CLF / runs[0]["predictions_file"]).read_text().splitlines()]
    counts = pd.Series([length_bucket(r["n_tokens"], 32) for r in rows]).value_counts()
    got = board.buckets[(board.buckets["budget"] == 32) & (board.buckets["strategy"] == "head")].set_index("bucket")
    assert list(got.index) == list(BUCKETS)
    for b in BUCKETS:
        assert got.loc[b, "n"] == counts.get(b, 0) == runs[0]["metrics"][f"bucket[{b}].n"]
        # recomputed from the sidecars = the seed mean of what each run recorded for the bucket
        recorded = np.mean([r["metrics"][f"bucket[{b}].macro_f1"] for r in runs])
        assert got.loc[b, "metric"] == pytest.approx(recorded, abs=1e-9)


def test_failed_runs_are_listed_not_tabled(board):
    assert list(board.failed["status"]) == ["oom"]
    assert "hierarchical" not in " ".join(board.cells["strategy"])


def test_without_sidecars_falls_back_to_mean_std():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = leaderboard(read_jsonl(CLF / "runs.jsonl"))
    assert plain.cells["ci_lo"].isna().all() and not plain.method
    table = next(s.table for s in plain.sections if s.kind == "metric")
    assert "±" in table.loc["head", "b=32"]
    # buckets then come from the metrics each run recorded
    assert set(plain.buckets["source"]) == {"record"}


def test_tampered_sidecar_is_not_used(tmp_path):
    root = tmp_path / "clf"
    shutil.copytree(CLF, root)
    run = next(r for r in read_jsonl(root / "runs.jsonl") if r["status"] == "ok")
    path = root / run["predictions_file"]
    path.write_text(path.read_text().replace('"pred": "autos"', '"pred": "space"', 1))
    with pytest.warns(UserWarning, match="content hash"):
        b = leaderboard(read_jsonl(root / "runs.jsonl"), root=root)
    cell = b.cells.set_index(["strategy", "budget"]).loc[(run["spec"]["strategy"]["label"], run["budget"])]
    assert np.isnan(cell["ci_lo"])


def test_other_task_with_per_example_metric():
    """Task-generic: a QA-like task with per-example f1 gets CIs and a test, silver-labelled."""
    b = leaderboard(read_jsonl(QA / "runs.jsonl"), root=QA)
    cells = b.cells.set_index("strategy")
    assert cells.loc[SLIDING, "significant"] is True
    assert cells["ci_lo"].notna().all()
    assert "(silver)" in b.sections[0].title


def test_write_leaderboard(tmp_path):
    root = tmp_path / "clf"
    shutil.copytree(CLF, root)
    b = write_leaderboard(root / "runs.jsonl")
    md = (root / "leaderboard.md").read_text()
    assert md.startswith("# Leaderboard: clf") and b.markdown() in md
    csv = pd.read_csv(root / "leaderboard.csv")
    assert {"metric", "ci_lo", "ci_hi", "p_vs_head", "p_holm", "significant", "mde", "docs_per_s"} <= set(csv.columns)
    summary = (root / "SUMMARY.md").read_text()
    assert summary.startswith("# Summary: clf") and summary.count("\n| ") == 1 + 2 * 3  # header + b × strategy
    # bold only where significantly ahead of head: sliding (planted) at each budget, never head or tail
    bold = [line for line in summary.splitlines() if "**" in line and line.startswith("|")]
    assert len(bold) == 2 and all("sliding" in line and UP in line for line in bold)
    assert "- b = 32: best is sliding" in summary
    assert "Strategies: `sliding` = `sliding[max_windows=4,pool=mean]`" in summary
    assert not (root / "demos.md").exists()
    assert len(pd.read_csv(root / "leaderboard_buckets.csv")) == len(b.buckets)


def test_pure_and_deterministic(board):
    again = leaderboard(read_jsonl(CLF / "runs.jsonl"), root=CLF)
    assert again.markdown() == board.markdown() and again.csv() == board.csv()


def test_buckets_mirror_the_task_contract():
    from ctxbench.tasks.base import LENGTH_BUCKETS
    from ctxbench.tasks.base import length_bucket as task_bucket

    assert BUCKETS == LENGTH_BUCKETS
    for n in (0, 1, 63, 64, 65, 128, 129, 256, 257, 1000):
        assert length_bucket(n, 64) == task_bucket(n, 64)


def test_peft_methods_are_their_own_groups_never_seeds_of_full():
    from ctxbench.bench.report.tables import long_frame

    def run(kind, seed, rid):
        return {"run_id": rid, "status": "ok", "main_metric": "macro_f1", "budget": 128, "metrics": {"macro_f1": 0.5},
                "measurements": {}, "spec": {"task": "clf", "dataset": "d", "model": "m", "mode": "finetune",
                                             "seed": seed, "budget": 128, "strategy": {"label": "head"},
                                             "train": {"finetune": kind}}}

    df = long_frame([run("full", 0, "a"), run("full", 1, "b"), run("lora", 0, "c"), run("ia3", 0, "d")])
    assert df.groupby("mode")["seed"].count().to_dict() == {"finetune": 2, "finetune:lora": 1, "finetune:ia3": 1}


def test_a_cell_filled_twice_keeps_its_newest_run_not_both_as_seeds():
    """Two run_ids of one table cell and seed (e.g. a record of an older spec shape, or another lr): the
    newest stands, the older is left out and said so; otherwise they would average as if they were seeds."""
    from ctxbench.bench.report.tables import long_frame

    def run(rid, seed, when, f1, lr=0.002):
        return {"run_id": rid, "status": "ok", "main_metric": "macro_f1", "budget": 128, "created_at": when,
                "metrics": {"macro_f1": f1}, "measurements": {},
                "spec": {"task": "clf", "dataset": "d", "model": "m", "mode": "probe", "seed": seed, "budget": 128,
                         "precision": "bfloat16", "strategy": {"label": "head"}, "train": {"lr": lr}}}

    runs = [run("new0", 0, "2026-12-06T10:00:00+00:00", 0.7), run("old0", 0, "2026-12-01T10:00:00+00:00", 0.5),
            run("old1", 1, "2026-12-01T10:00:01+00:00", 0.5, lr=0.01), run("new1", 1, "2026-12-06T10:00:01+00:00", 0.7)]
    with pytest.warns(UserWarning, match=r"2 older run\(s\) left out .*2 in d probe\+bfloat16"):
        df = long_frame(runs)
    assert sorted(df["run_id"]) == ["new0", "new1"] and df["metric"].tolist() == [0.7, 0.7]
    assert "left out" in df.attrs["notes"][0]
    with pytest.warns(UserWarning, match="left out"):
        assert any("left out" in n for n in leaderboard(runs).notes)  # printed under the leaderboard
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # distinct cells: nothing left out, nothing said
        assert len(long_frame([runs[0], runs[3]])) == 2


def test_the_summary_says_whether_a_selection_strategys_latency_holds_its_selection():
    from ctxbench.bench.report.tables import summary_tables

    def run(rid, label, seed, cost, select=None):
        meas = {"cost": {"latency_b1_p50_ms": 10.0 + seed, "cost_peak_mb": 5.0, **cost}}
        if select is not None:
            meas["select_seconds_test"] = select
        return {"run_id": rid, "status": "ok", "main_metric": "macro_f1", "budget": 64, "metrics": {"macro_f1": 0.5},
                "measurements": meas, "created_at": f"2026-12-06T00:00:0{seed}",
                "spec": {"task": "clf", "dataset": "d", "model": "m", "mode": "probe", "seed": seed, "budget": 64,
                         "strategy": {"label": label}}}

    runs = [run(f"{s}{k}", s, k, c, sel) for k in (0, 1) for s, c, sel in
            (("head", {}, None), ("textrank", {"cost_select_seconds_median": 0.2}, 3.0), ("tfidf_select", {}, 2.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no sidecars: mean ± std, said so
        text = summary_tables(runs)
    assert "of `textrank` includes their sentence splitting and selection" in text
    assert "of `tfidf_select` is the model pass alone" in text and "of `head`" not in text


def test_mode_label_separates_precision_and_stitching_from_the_defaults():
    from ctxbench.bench.report.tables import mode_label, table_mode

    base = {"task": "ner", "mode": "finetune", "train": {"finetune": "full"}}
    assert table_mode(base) == "finetune" and mode_label({"mode": "probe"}) == "probe"
    assert mode_label({**base, "precision": "bfloat16"}) == "finetune:full+bfloat16"
    assert table_mode({**base, "precision": "auto", "ner": {"stitch": "auto"}}) == "finetune"
    assert mode_label({**base, "ner": {"stitch": "longest_entity", "empty_words": "unk"}}) == (
        "finetune:full+stitch=longest_entity")
    assert mode_label({**base, "ner": {"stitch": "longest_entity", "empty_words": "drop"}}) == (
        "finetune:full+stitch=longest_entity+empty_words=drop")


def _with_ids(tmp_path: Path, ids) -> Path:
    """The QA-like fixture with an ``id`` per sidecar row (and the runs' sidecar hashes updated)."""
    from ctxbench.tasks.cache import content_hash

    root = tmp_path / "qa"
    shutil.copytree(QA, root)
    runs = read_jsonl(root / "runs.jsonl")
    for r in runs:
        path = root / r["predictions_file"]
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        data = "".join(json.dumps({**row, "id": ids(row["i"])}, sort_keys=True) + "\n" for row in rows)
        path.write_text(data)
        r["predictions_sha"] = content_hash(data.encode())
    (root / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return root


def test_rows_sharing_an_id_are_resampled_as_one_unit(tmp_path):
    """QA scores one question over several contexts: rows with one id are one cluster; pairing rows
    into clusters of two halves the units and widens the interval."""
    alone = leaderboard(read_jsonl(QA / "runs.jsonl"), root=QA, n_boot=2000)
    root = _with_ids(tmp_path, lambda i: f"q{i // 2}")
    paired = leaderboard(read_jsonl(root / "runs.jsonl"), root=root, n_boot=2000)
    a, p = alone.cells.set_index("strategy"), paired.cells.set_index("strategy")
    assert (p["n_units"] == a["n_units"] / 2).all() and (p["n_examples"] == a["n_examples"]).all()
    assert (p["metric"] == a["metric"]).all()
    root1 = _with_ids(tmp_path / "one", lambda i: f"q{i}")  # unique ids: the same units as no id
    same = leaderboard(read_jsonl(root1 / "runs.jsonl"), root=root1, n_boot=2000).cells.set_index("strategy")
    assert np.allclose(same["ci_lo"], a["ci_lo"]) and np.allclose(same["ci_hi"], a["ci_hi"])
    assert ((p["ci_hi"] - p["ci_lo"]) != (a["ci_hi"] - a["ci_lo"])).any()


def test_small_buckets_are_hidden_and_said_so(board):
    section = next(s for s in board.sections if s.kind == "buckets")
    cells = section.table.drop(columns="length").to_numpy().ravel()
    small = board.buckets[board.buckets["n"] < 30]
    assert len(small) and sum("hidden" in c for c in cells) == len(small)
    assert "under 30 test examples are hidden" in section.note
    from ctxbench.bench.report.tables import bucket_table

    shown = bucket_table(board.buckets, min_n=10).drop(columns="length").to_numpy().ravel()
    assert any("[" in c and "(n=" in c for c in shown)  # a bucket that is shown carries its interval


def test_constant_and_zero_tables_are_dropped(board):
    kinds = {s.kind for s in board.sections}
    # the fixture's padding waste is 0 in every run, its coverage differs by strategy
    assert "padding_waste" not in kinds and "coverage" in kinds


def test_demonstration_runs_go_to_their_own_file(tmp_path, monkeypatch):
    from ctxbench.bench.report import tables

    root = tmp_path / "clf"
    shutil.copytree(CLF, root)
    runs = read_jsonl(root / "runs.jsonl")
    default = {tables.spec_key(r) for r in runs}
    demo = [{**r, "run_id": r["run_id"] + "x", "spec": {**r["spec"], "precision": "bfloat16"}} for r in runs]
    (root / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs + demo))
    monkeypatch.setattr(tables, "default_sweep_specs", lambda task: default)
    write_leaderboard(root / "runs.jsonl")
    board_md, demos = (root / "leaderboard.md").read_text(), (root / "demos.md").read_text()
    assert "probe+bfloat16" in demos and "probe+bfloat16" not in board_md
    assert "· probe —" in board_md and "· probe —" not in demos
    assert "probe+bfloat16" not in (root / "SUMMARY.md").read_text()


def test_load_runs_is_the_long_frame():
    from ctxbench.bench.report.tables import load_runs

    df = load_runs(CLF)
    assert len(df) == sum(r["status"] == "ok" for r in read_jsonl(CLF / "runs.jsonl"))
    assert {"strategy", "budget", "seed", "metric", "docs_per_s", "m.accuracy"} <= set(df.columns)
    assert df.equals(load_runs(CLF / "runs.jsonl"))


def test_measured_cost_fields_are_preferred():
    from ctxbench.bench.report.tables import summary_table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = read_jsonl(CLF / "runs.jsonl")
    for r in runs:
        r.setdefault("measurements", {})["cost"] = {"latency_b1_p50_ms": 12.5, "cost_peak_mb": 321.0}
    b = leaderboard(runs, root=CLF, n_boot=500)
    table, legend, notes = summary_table(b.cells)
    assert "ms/doc (measured, b=1 p50)" in table and set(table["ms/doc (measured, b=1 p50)"]) == {"12.5"}
    assert set(table["peak MB (measured)"]) == {"321"} and not notes
    plain, _, plain_notes = summary_table(board_cells := leaderboard(read_jsonl(CLF / "runs.jsonl"), root=CLF,
                                                                     n_boot=500).cells)
    assert "ms/doc (grid estimate)" in plain and len(plain_notes) == 2 and len(board_cells)


def test_recommendation_names_the_worse_strategy():
    from ctxbench.bench.report.tables import recommendation

    cells = pd.DataFrame([
        {"budget": 128, "strategy": "head", "higher_is_better": True, "p_vs_head": np.nan, "mark": "",
         "diff_vs_head": np.nan, "diff_lo": np.nan, "diff_hi": np.nan},
        {"budget": 128, "strategy": "tail", "higher_is_better": True, "p_vs_head": 0.001, "mark": DOWN,
         "diff_vs_head": -0.064, "diff_lo": -0.088, "diff_hi": -0.040},
        {"budget": 128, "strategy": "sliding", "higher_is_better": True, "p_vs_head": 0.3, "mark": "",
         "diff_vs_head": 0.01, "diff_lo": -0.01, "diff_hi": 0.03}])
    assert recommendation(cells, 128) == ("b = 128: no strategy beats head; tail -0.064 [-0.088, -0.040] is worse; "
                                          "1 of 2 undecided.")


def test_the_already_recorded_note_names_the_machine_and_the_commit():
    from ctxbench.bench.cli import _recorded_by

    runs = read_jsonl(CLF / "runs.jsonl")
    note = _recorded_by([{**runs[0], "env": {"device_name": "cpu: X", "hostname": "vm", "git_sha": "abc123def456789",
                                             "git_dirty": True}}])
    assert "cpu: X on host vm" in note and "abc123def4 (dirty)" in note


def test_a_table_of_a_subsample_says_so_and_the_whole_data_set_does_not():
    import pandas as pd

    from ctxbench.bench.report.tables import _data_note, sample_text

    assert sample_text({"train": None, "val": None, "test": None}, 0) == ""
    assert sample_text({"train": 1200, "val": None, "test": 1000}, 3) == \
        "subsample (data_seed 3): 1,200 train / all val / 1,000 test"
    group = pd.DataFrame([{"task": "nope", "dataset": "d", "sample": json.dumps(
        {"task_version": "1", "data_seed": 0, "limits": {"train": 600, "val": 100, "test": 600}})}])
    assert _data_note(group) == " Sample: a fixed subsample (data_seed 0): 600 train / 100 val / 600 test."
    whole = group.assign(sample=json.dumps({"task_version": "1", "data_seed": 0, "limits": {"train": None}}))
    assert _data_note(whole) == ""
