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
from ctxbench.bench.report.tables import BUCKETS, NOT_SIGNIFICANT, leaderboard, length_bucket, write_leaderboard

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
    assert all(cell.endswith(NOT_SIGNIFICANT) for cell in table.loc["tail"])
    assert not any(cell.endswith(NOT_SIGNIFICANT) for cell in table.loc[SLIDING])
    assert not any(cell.endswith(NOT_SIGNIFICANT) for cell in table.loc["head"])


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
    assert {"metric", "ci_lo", "ci_hi", "p_vs_head", "significant", "docs_per_s"} <= set(csv.columns)
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
