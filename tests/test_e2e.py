"""End to end on the real packaged model (all-MiniLM-L6-v2) and real 20 Newsgroups documents."""
from __future__ import annotations

import pytest
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.bench.report.tables import leaderboard, write_leaderboard
from ctxbench.tasks import Context

pytestmark = pytest.mark.slow


def test_real_model_real_data_every_cell(tmp_path, cache_env):
    sweep = load_sweep("clf", ["limits.train=60", "limits.val=20", "limits.test=24", "budgets=[32,128]",
                               "seeds=[0]", "train.epochs=8", "strategies=[head, tail, head_tail, "
                               "{name: sliding, max_windows: 4}, "
                               "{name: hierarchical, pool: attention, max_chunks: 4}]"])
    summary = run_sweep(sweep, tmp_path, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    assert summary.ok and summary.ran == 10
    runs = read_jsonl(tmp_path / "clf" / "runs.jsonl")
    for r in runs:
        assert r["spec"]["model"] == "minilm" and r["info"]["labels"] >= 15
        assert 0.0 <= r["metrics"]["macro_f1"] <= 1.0 and 0.0 <= r["metrics"]["accuracy"] <= 1.0
        assert r["measurements"]["docs"] == 24 and r["measurements"]["tokens_per_s"] > 0
    # a real encoder beats chance (1/20) on 20NG with whole-document strategies
    best = max(r["metrics"]["accuracy"] for r in runs)
    assert best > 0.15
    board = leaderboard(runs)
    metric_table = next(t for title, t in board.sections if "macro_f1" in title)
    assert metric_table.shape == (5, 2)
    text = write_leaderboard(tmp_path / "clf" / "runs.jsonl")
    assert (tmp_path / "clf" / "leaderboard.md").exists() and text.sections
    assert any("budget 128" in line for line in summary.notes)
