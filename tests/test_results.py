from __future__ import annotations

import json

import pytest

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import append_line, done_ids, read_jsonl, run_id
from ctxbench.bench.run.cell import spec_record
from ctxbench.tasks import get_task


def test_run_id_is_stable_and_spec_sensitive():
    task = get_task("clf")
    a, b = load_sweep("clf").cells()[:2]
    assert run_id(spec_record(a, task)) == run_id(spec_record(a, task))
    assert run_id(spec_record(a, task)) != run_id(spec_record(b, task))
    assert len(run_id(spec_record(a, task))) == 64


def test_torn_last_line_is_reported_skipped_and_healed(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_line(path, {"run_id": "a", "status": "ok"})
    with open(path, "ab") as f:
        f.write(b'{"run_id": "b", "sta')  # a crash mid-write
    with pytest.warns(UserWarning, match="torn or corrupt"):
        rows = read_jsonl(path)
    assert [r["run_id"] for r in rows] == ["a"]
    append_line(path, {"run_id": "c", "status": "ok"})
    with pytest.warns(UserWarning):
        assert [r["run_id"] for r in read_jsonl(path)] == ["a", "c"]
    assert done_ids(path) == {"a", "c"}


def test_only_ok_runs_count_as_done(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_line(path, {"run_id": "x", "status": "error"})
    append_line(path, {"run_id": "y", "status": "ok"})
    assert done_ids(path) == {"y"}
    assert all(json.loads(line) for line in path.read_text().splitlines())
