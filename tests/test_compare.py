"""ctxbench compare on planted runs.jsonl files: matching, deltas, thresholds, exit codes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ctxbench.bench.report import compare as cmp
from ctxbench.bench.cli import main as cli_main


def record(strategy: str = "head", budget: int = 128, seed: int = 0, f1: float = 0.80, docs: float = 100.0,
           tokens: float = 12800.0, mem: float = 900.0, status: str = "ok", device: str = "cpu: AMD EPYC",
           epochs: int = 30) -> dict[str, Any]:
    spec = {"task": "clf", "dataset": "20ng", "model": "minilm", "mode": "probe", "budget": budget, "seed": seed,
            "strategy": {"name": strategy, "params": {}, "label": strategy}, "train": {"epochs": epochs},
            "task_version": 1}
    rec = {"schema_version": 1, "run_id": f"{strategy}-{budget}-{seed}-{epochs}", "status": status,
           "task": "clf", "main_metric": "macro_f1", "higher_is_better": True, "spec": spec, "budget": budget,
           "env": {"device_name": device}}
    if status == "ok":
        rec["metrics"] = {"macro_f1": f1, "accuracy": f1 + 0.02}
        rec["measurements"] = {"docs_per_s": docs, "tokens_per_s": tokens, "peak_memory_mb": mem}
    else:
        rec["error"] = "OutOfMemoryError: planted"
    return rec


def grid(**changes: Any) -> list[dict[str, Any]]:
    """head/sliding x 64/128 x seeds 0,1; ``changes`` maps 'strategy/budget' to field overrides."""
    out = []
    for s in ("head", "sliding"):
        for b in (64, 128):
            for seed in (0, 1):
                kw = dict(strategy=s, budget=b, seed=seed, f1=0.7 + 0.001 * b + 0.01 * seed)
                kw.update(changes.get(f"{s}/{b}", {}))
                out.append(record(**kw))
    return out


def test_identical_sets_pass():
    c = cmp.compare(grid(), grid())
    assert c.ok and len(c.table) == 4
    assert (c.table["Δ metric"] == 0).all()
    assert set(c.table["seeds A/B"]) == {"2/2"}


def test_matches_across_seeds_and_env():
    # B ran other seeds on another host: still the same cells
    b = [dict(r, spec={**r["spec"], "seed": r["spec"]["seed"] + 10}, env={"device_name": "cpu: AMD EPYC",
                                                                           "hostname": "other"}) for r in grid()]
    c = cmp.compare(grid(), b)
    assert len(c.table) == 4 and not c.only_a and not c.only_b


def test_metric_drop_is_a_regression():
    c = cmp.compare(grid(), grid(**{"sliding/128": {"f1": 0.70}}))  # mean 0.833 -> 0.70
    assert not c.ok
    (msg,) = c.regressions
    assert "sliding/b=128" in msg and "macro_f1" in msg


def test_metric_drop_within_threshold_passes():
    # A averages 0.769 over its seeds; B 0.765: a drop of 0.004
    c = cmp.compare(grid(), grid(**{"head/64": {"f1": 0.765}}), cmp.Thresholds(metric_drop=0.01))
    assert c.ok


def test_throughput_drop_is_a_regression():
    c = cmp.compare(grid(), grid(**{"head/64": {"docs": 80.0, "tokens": 12800 * 0.8}}))
    assert not c.ok
    assert any("docs/s -20.0%" in r for r in c.regressions)
    assert any("tokens/s -20.0%" in r for r in c.regressions)


def test_memory_rise_is_a_regression():
    c = cmp.compare(grid(), grid(**{"sliding/64": {"mem": 1100.0}}))
    assert not c.ok and "peak memory +22.2%" in c.regressions[0]


def test_checks_can_skip_throughput():
    b = grid(**{"head/64": {"docs": 50.0, "tokens": 6400.0}})
    assert cmp.compare(grid(), b, checks=("metric", "memory")).ok


def test_failed_in_b_is_a_regression():
    b = [r for r in grid() if not (r["spec"]["strategy"]["name"] == "sliding" and r["budget"] == 128)]
    b += [record("sliding", 128, seed, status="oom") for seed in (0, 1)]
    c = cmp.compare(grid(), b)
    assert any("ran in A, oom in B" in r for r in c.regressions)


def test_only_in_one_side_is_listed_not_failed():
    a = grid()
    b = grid() + [record("tail", 64)]
    c = cmp.compare(a, b)
    assert c.ok and c.only_b == ["clf/20ng/minilm/probe/tail/b=64"]


def test_ignore_spec_key():
    b = [dict(r, spec={**r["spec"], "train": {"epochs": 10}}) for r in grid()]
    assert cmp.compare(grid(), b).table.empty
    assert len(cmp.compare(grid(), b, ignore=["train.epochs"]).table) == 4


def test_device_note():
    b = [dict(r, env={"device_name": "NVIDIA H200"}) for r in grid()]
    assert any("H200" in n for n in cmp.compare(grid(), b).notes)


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a = write(tmp_path / "a.jsonl", grid())
    same = write(tmp_path / "same.jsonl", grid())
    slow = write(tmp_path / "slow.jsonl", grid(**{"sliding/128": {"docs": 10.0}}))
    other = write(tmp_path / "other.jsonl", [record("tail", 512)])
    assert cli_main(["compare", a, same]) == 0
    assert "**PASS**" in capsys.readouterr().out
    out = tmp_path / "r.md"
    assert cli_main(["compare", a, slow, "--out", str(out)]) == 1
    assert "REGRESSED" in out.read_text() and "docs/s -90.0%" in out.read_text()
    assert cli_main(["compare", a, slow, "--throughput-drop", "0.95"]) == 0
    assert cli_main(["compare", a, other]) == 2
    assert cli_main(["compare", a, str(tmp_path / "missing.jsonl")]) == 2
    assert cli_main(["compare", a, same, "--checks", "speed"]) == 2
