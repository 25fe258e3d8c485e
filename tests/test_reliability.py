"""Resume after SIGKILL, Ctrl-C, faults inside a grid (oom, error, a child killed by the OS),
checked caches, and determinism: the runner-level guarantees, on the tiny model and data."""
from __future__ import annotations

import json
import os
import random
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

from ctxbench.bench.cli import main as cli_main
from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import (
    append_line, check_store, commit_run, done_ids, read_jsonl, run_id, runs_path, scan_jsonl, sidecar_path,
)
from ctxbench.bench.run.cell import halve_batch, spec_record
from ctxbench.bench.run.runner import run_sweep
from ctxbench.tasks.cache import CacheError, atomic_write_checked, cached_id_lists, content_hash, read_checked
from ctxbench.tasks import Context, get_task
from ctxbench.tasks.clf import Classification
from ctxbench.tasks.model.windows import WindowCache as SpanCache

from tests import _child

GRID = ["limits.train=null", "limits.val=null", "limits.test=null", "train.epochs=1", "train.patience=1",
        "strategies=[head, tail]", "budgets=[16, 32]", "seeds=[0, 1]", "device=cpu"]


def cli_args(model, data, results, *extra):
    return ["--results", str(results), "bench", "clf", f"model={model}", f"dataset={data}", *GRID, *extra, "--quiet"]


def expected_ids(model, data, *extra) -> set[str]:
    task = get_task("clf")
    sweep = load_sweep("clf", [f"model={model}", f"dataset={data}", *GRID, *extra])
    return {run_id(spec_record(c, task)) for c in sweep.cells()}


def ok_lines(results) -> list[dict]:
    return [r for r in read_jsonl(runs_path(results, "clf"), report=False) if r["status"] == "ok"]


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait(p, timeout=120):
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("child did not finish in time")
    return p.exitcode


# ---------------------------------------------------------------- SIGKILL, then resume


def test_sigkill_at_several_points_then_resume_runs_each_cell_exactly_once(tiny_model, tiny_data, tmp_path,
                                                                         cache_env):
    results = tmp_path / "results"
    runs = runs_path(results, "clf")
    args = cli_args(tiny_model, tiny_data, results)
    want = expected_ids(tiny_model, tiny_data)
    log = tmp_path / "log.txt"
    # precise points inside the store, each in its own process: a torn run line, a sidecar
    # without its line, between two runs, a half-written sidecar
    for fault in [("torn_line", 2), ("before_line", 1), ("after_line", 1), ("torn_sidecar", 1)]:
        before = len(ok_lines(results))
        code = wait(_child.start(args, log, fault, tiny_model))
        assert code == -signal.SIGKILL, (fault, log.read_text()[-2000:])
        assert len(ok_lines(results)) == before + {"torn_line": 1, "before_line": 0, "after_line": 1,
                                                    "torn_sidecar": 0}[fault[0]]
    # from outside, on observed progress: as soon as one more line lands, at a random moment of the next run
    rng = random.Random(0)
    start = line_count(runs)
    p = _child.start(args, log, ("slow_runs", 600), tiny_model)
    deadline = time.monotonic() + 120
    while line_count(runs) == start and p.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.3))
    assert p.is_alive(), "the grid ended before the kill (each run is slowed by 0.6 s)"
    os.kill(p.pid, signal.SIGKILL)
    assert wait(p) == -signal.SIGKILL
    assert len(ok_lines(results)) < len(want), "the grid should not have finished before the kill"

    log.write_text("")
    assert wait(_child.start(args, log, None, tiny_model)) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert "torn or corrupt line" in out  # the torn line is reported...
    rows, bad = scan_jsonl(runs)
    assert len(bad) == 1  # ...and ignored, never parsed into a row
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["run_id"] for r in ok) == sorted(want)  # every cell exactly once
    state = check_store(results, "clf")
    assert state["duplicate_ok"] == state["missing_sidecar"] == state["sidecar_mismatch"] == []
    sidecars = sorted((results / "clf" / "predictions").glob("*.jsonl"))
    assert [p.name for p in sidecars] == sorted(Path(r["predictions_file"]).name for r in ok)
    for r in ok:
        text = (results / "clf" / r["predictions_file"]).read_bytes()
        assert content_hash(text) == r["predictions_sha"]
        assert len(text.splitlines()) == r["measurements"]["docs"]
    assert "ran 0," not in out and "failed 0" in out


def test_ctrl_c_finishes_the_current_run_and_prints_the_table(tiny_model, tiny_data, tmp_path, cache_env):
    results = tmp_path / "results"
    runs = runs_path(results, "clf")
    log = tmp_path / "log.txt"
    p = _child.start(cli_args(tiny_model, tiny_data, results, "train.epochs=6", "train.patience=6"), log, None,
                     tiny_model)
    deadline = time.monotonic() + 120
    while line_count(runs) == 0 and p.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGINT)
    assert wait(p) == 1
    out = log.read_text()
    assert "stopping after the current run" in out and "interrupted" in out and "### clf" in out
    rows, bad = scan_jsonl(runs)
    assert not bad and 1 <= len(rows) < 8 and all(r["status"] == "ok" for r in rows)
    assert len(list((results / "clf" / "predictions").glob("*.jsonl"))) == len(rows)


# ---------------------------------------------------------------- faults inside a grid


@pytest.fixture()
def faulty(monkeypatch):
    """Make chosen cells of the clf task fail: {(strategy, budget, seed): exception}."""
    faults: dict = {}
    real = Classification.run

    def run(self, spec, ctx):
        exc = faults.get((spec.strategy.name, spec.budget, spec.seed))
        if callable(exc):
            exc = exc(spec)
        if exc is not None:
            raise exc
        return real(self, spec, ctx)

    monkeypatch.setattr(Classification, "run", run)
    return faults


def test_oom_and_errors_are_recorded_the_grid_goes_on_and_the_exit_code_says_so(
        tiny_model, tiny_data, tmp_path, cache_env, faulty, capsys):
    results = tmp_path / "results"
    faulty[("tail", 16, 0)] = MemoryError()
    faulty[("head", 32, 1)] = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    faulty[("tail", 32, 1)] = ValueError("boom in a cell")
    assert cli_main(cli_args(tiny_model, tiny_data, results)) == 1
    out = capsys.readouterr().out
    assert "ran 5, skipped 0 already recorded, failed 3" in out
    assert "oom: clf/tail/b=16/seed=0" in out and "error: clf/tail/b=32/seed=1/probe: ValueError: boom" in out
    assert "### clf" in out  # the table of what finished
    rows = read_jsonl(runs_path(results, "clf"))
    by = {(r["spec"]["strategy"]["name"], r["spec"]["budget"], r["spec"]["seed"]): r for r in rows}
    assert by[("tail", 16, 0)]["status"] == "oom" and by[("head", 32, 1)]["status"] == "oom"
    assert by[("tail", 32, 1)]["status"] == "error" and "boom in a cell" in by[("tail", 32, 1)]["error"]
    assert all("spec" in r and "traceback" in r for r in rows if r["status"] != "ok")
    # the rerun retries only the failed cells; each run_id ends up ok exactly once
    faulty.clear()
    assert cli_main(cli_args(tiny_model, tiny_data, results)) == 0
    assert "ran 3, skipped 5 already recorded, failed 0" in capsys.readouterr().out
    ok = [r["run_id"] for r in ok_lines(results)]
    assert sorted(ok) == sorted(expected_ids(tiny_model, tiny_data))


def test_oom_retry_halves_batch_sizes_and_records_them(tiny_model, tiny_data, tmp_path, cache_env, faulty):
    def oom_above_16(spec):
        return torch.OutOfMemoryError("CUDA out of memory") if spec.batch_size > 16 else None

    faulty[("head", 16, 0)] = oom_above_16
    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", *GRID, "strategies=[head]",
                               "budgets=[16]", "seeds=[0]"])
    ctx = Context(device=torch.device("cpu"), progress=False)
    one = run_sweep(sweep, tmp_path / "one", ctx=ctx, progress=False, oom_retries=1)
    (rec,) = read_jsonl(runs_path(tmp_path / "one", "clf"))
    assert not one.ok and rec["status"] == "oom" and rec["batch"]["batch_size"] == 32
    assert run_sweep(sweep, tmp_path / "three", ctx=ctx, progress=False, oom_retries=3).ok
    (rec,) = read_jsonl(runs_path(tmp_path / "three", "clf"))
    assert rec["status"] == "ok" and rec["run_id"] == run_id(spec_record(sweep.cells()[0], get_task("clf")))
    assert rec["batch"] == {"batch_size": 16, "train_batch_size": 16, "grad_accum": 4, "halvings": 2}
    assert [a["batch_size"] for a in rec["oom_retries"]] == [64, 32]
    assert rec["spec"]["batch_size"] == 64  # the spec (and run_id) stay as configured


def test_halve_batch_keeps_the_effective_training_batch():
    spec = load_sweep("clf", ["batch_size=3", "train.batch_size=6"]).cells()[0]
    half = halve_batch(spec)
    assert (half.batch_size, half.train.batch_size, half.train.grad_accum) == (1, 3, 2)
    odd = halve_batch(half)
    assert odd is None  # 1 cannot shrink, and an odd training batch is not split unevenly


class KillerTask(Classification):
    """Seed 1: the process dies as under the OS out-of-memory killer; seed 2: MemoryError."""

    def run(self, spec, ctx):
        if spec.seed == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if spec.seed == 2:
            raise MemoryError("cannot allocate")
        return super().run(spec, ctx)


def test_isolate_runs_each_cell_in_a_child_and_a_killed_child_is_an_oom_run(
        tiny_model, tiny_data, tmp_path, cache_env, monkeypatch):
    import ctxbench.bench.run.runner as runner

    monkeypatch.setattr(runner, "get_task", lambda name: KillerTask())
    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", *GRID, "strategies=[head]",
                               "budgets=[16]", "seeds=[0, 1, 2]"])
    summary = run_sweep(sweep, tmp_path / "r", progress=False, isolate=True)
    rows = {r["spec"]["seed"]: r for r in read_jsonl(runs_path(tmp_path / "r", "clf"))}
    assert summary.ran == 1 and [s for _, s, _ in summary.failed] == ["oom", "oom"]
    assert rows[0]["status"] == "ok" and rows[0]["isolated"]
    assert rows[0]["measurements"]["memory_kind"] == "cpu_peak_rss_isolated_cell"
    assert rows[0]["measurements"]["peak_memory_mb"] >= rows[0]["measurements"]["rss_at_cell_start_mb"] > 0
    assert rows[1]["status"] == "oom" and "SIGKILL" in rows[1]["error"]
    assert rows[2]["status"] == "oom" and "MemoryError" in rows[2]["error"]


# ---------------------------------------------------------------- the store


def test_lines_that_parse_but_are_not_records_are_ignored(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_line(path, {"run_id": "a", "status": "ok"})
    with open(path, "ab") as f:
        f.write(b"123\n\x00\x00\x00\x00\n[1, 2]\n")
    append_line(path, {"run_id": "b", "status": "ok"})
    rows, bad = scan_jsonl(path)
    assert [r["run_id"] for r in rows] == ["a", "b"] and bad == [2, 3, 4]


def test_a_rerun_replaces_a_runs_ok_line_and_a_failed_rerun_keeps_it(tmp_path):
    """``--rerun`` (``replace``): a new ok record takes the place of the run's earlier lines, sidecar included;
    a failed one leaves the ok line as it was; other runs' lines are untouched."""
    rid, other = "f" * 64, {"run_id": "a" * 64, "status": "ok"}
    assert commit_run(tmp_path, "clf", dict(other), [{"i": 0, "pred": "x"}])
    assert commit_run(tmp_path, "clf", {"run_id": rid, "status": "ok", "marker": 0}, [{"i": 0, "pred": "a"}])
    assert not commit_run(tmp_path, "clf", {"run_id": rid, "status": "error", "error": "x"}, [], replace=True)
    assert commit_run(tmp_path, "clf", {"run_id": rid, "status": "ok", "marker": 1}, [{"i": 0, "pred": "b"}],
                      replace=True)
    rows = read_jsonl(runs_path(tmp_path, "clf"))
    assert [(r["run_id"], r.get("marker")) for r in rows] == [("a" * 64, None), (rid, 1)]
    assert json.loads(sidecar_path(tmp_path, "clf", rid).read_text())["pred"] == "b"
    assert check_store(tmp_path, "clf") == {"torn_lines": [], "duplicate_ok": [], "missing_sidecar": [],
                                            "sidecar_mismatch": []}


def test_commit_never_records_a_run_id_ok_twice(tmp_path):
    rec = {"run_id": "f" * 64, "status": "ok"}
    assert commit_run(tmp_path, "clf", dict(rec), [{"i": 0, "pred": "a"}])
    assert not commit_run(tmp_path, "clf", dict(rec), [{"i": 0, "pred": "b"}])  # e.g. a second worker
    (row,) = read_jsonl(runs_path(tmp_path, "clf"))
    side = sidecar_path(tmp_path, "clf", rec["run_id"])
    assert json.loads(side.read_text())["pred"] == "a" and content_hash(side.read_bytes()) == row["predictions_sha"]
    assert commit_run(tmp_path, "clf", {"run_id": "e" * 64, "status": "error", "error": "x"}, [])
    assert commit_run(tmp_path, "clf", {"run_id": "e" * 64, "status": "error", "error": "x"}, [])  # retried
    assert done_ids(runs_path(tmp_path, "clf")) == {"f" * 64}
    side.write_text("tampered\n")
    assert check_store(tmp_path, "clf")["sidecar_mismatch"] == ["f" * 64]


# ---------------------------------------------------------------- caches


def test_checked_cache_refuses_stale_truncated_damaged_and_foreign_files(tmp_path):
    path = tmp_path / "c.bin"
    atomic_write_checked(path, b"payload" * 100, "k1")
    assert read_checked(path, "k1") == b"payload" * 100
    with pytest.raises(CacheError, match="stale"):
        read_checked(path, "k2")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CacheError, match="checksum"):
        read_checked(path, "k1")
    path.write_bytes(data[:-1] + b"X")
    with pytest.raises(CacheError, match="checksum"):
        read_checked(path, "k1")
    path.write_bytes(b"PK\x03\x04 an old torch.save file")
    with pytest.raises(CacheError, match="not a ctxbench cache"):
        read_checked(path, "k1")


def test_token_cache_is_rebuilt_when_corrupt_or_stale(tmp_path):
    path = tmp_path / "ids.npz"
    calls = []

    def make():
        calls.append(1)
        return [[1, 2, 3], [], [7] * 5]

    assert cached_id_lists(path, "k", make) == ([[1, 2, 3], [], [7] * 5], "built")
    assert cached_id_lists(path, "k", make) == ([[1, 2, 3], [], [7] * 5], "hit") and len(calls) == 1
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum"):
        ids, how = cached_id_lists(path, "k", make)
    assert ids == [[1, 2, 3], [], [7] * 5] and how.startswith("rebuilt") and len(calls) == 2
    with pytest.warns(UserWarning, match="stale"):
        assert cached_id_lists(path, "other-inputs", make)[1].startswith("rebuilt")


def test_span_cache_round_trip_and_a_damaged_file_is_rebuilt(tmp_path):
    path = tmp_path / "abc123.pt"
    cache = SpanCache(path)
    cache.rows[("test", 0, ((0, 4),))] = (torch.ones(3), 0.5, 6)
    cache.dirty = True
    cache.save()
    again = SpanCache(path)
    assert again.loaded_from_disk == 1 and torch.equal(again.rows[("test", 0, ((0, 4),))][0], torch.ones(3))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="checksum"):
        broken = SpanCache(path)
    assert broken.rows == {} and broken.rebuilt
    with pytest.warns(UserWarning, match="stale"):
        SpanCache(path, key="another")


def test_corrupt_caches_are_rebuilt_through_the_task_with_the_same_results(tiny_model, tiny_data, tmp_path,
                                                                           cache_env):
    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", *GRID, "strategies=[head]",
                               "budgets=[16]", "seeds=[0]"])
    run_sweep(sweep, tmp_path / "one", ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    files = sorted(cache_env.glob("tokenized/*.npz")) + sorted(cache_env.glob("spans/*.pt"))
    assert len(files) == 4  # train/val/test ids and one span cache
    for f in files:
        raw = bytearray(f.read_bytes())
        raw[-20] ^= 0xFF
        f.write_bytes(bytes(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_sweep(sweep, tmp_path / "two", ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    assert sum("checksum" in str(w.message) for w in caught) == 4
    one, two = (read_jsonl(runs_path(tmp_path / d, "clf")) for d in ("one", "two"))
    assert one[0]["metrics"] == two[0]["metrics"] and one[0]["predictions_sha"] == two[0]["predictions_sha"]
    assert two[0]["measurements"]["windows_encoded_now"] == one[0]["measurements"]["windows_encoded_now"] > 0


# ---------------------------------------------------------------- determinism


def test_same_config_and_seed_give_identical_metrics_on_cpu(tiny_model, tiny_data, tmp_path, monkeypatch):
    """Two runs from cold caches: data sampling (limits < data), model init, dropout and data
    order are all seeded; a different data_seed draws other documents."""
    extra = ["limits.train=40", "limits.val=12", "limits.test=20", "train.dropout=0.3", "strategies=[head]",
             "budgets=[16]", "seeds=[3]"]

    def once(name, mode, *more):
        monkeypatch.setenv("CTXBENCH_CACHE", str(tmp_path / name / "cache"))
        sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", *GRID, *extra, f"mode={mode}",
                                   "train.epochs=1", *more])
        assert run_sweep(sweep, tmp_path / name, ctx=Context(device=torch.device("cpu"), progress=False),
                         progress=False).ok
        (r,) = read_jsonl(runs_path(tmp_path / name, "clf"))
        return r

    first = {}
    for mode in ("probe", "finetune"):
        a, b = once(f"{mode}-a", mode), once(f"{mode}-b", mode)
        assert a["metrics"] == b["metrics"] and a["predictions_sha"] == b["predictions_sha"]
        first[mode] = a
    c = once("other-sample", "probe", "data_seed=1")
    assert c["predictions_sha"] != first["probe"]["predictions_sha"]
    # and the seed is really used: another seed (init, dropout, order) gives other predictions
    d = once("other-seed", "finetune", "seeds=[4]")
    assert d["predictions_sha"] != first["finetune"]["predictions_sha"]
    assert set(c["env"]["determinism"]) >= {"deterministic_algorithms", "cudnn_deterministic", "cuda_matmul_tf32"}


def test_a_large_sidecar_is_stored_gzipped_with_stable_bytes_and_read_back(tmp_path):
    from ctxbench.bench.report.tables import read_predictions
    from ctxbench.bench.results import GZIP_OVER, sidecar_bytes

    rows = [{"i": i, "label": "a", "pred": "b", "spans": [[[0, 510]], [[255, 765]]]} for i in range(2000)]
    data, gz = sidecar_bytes(rows)
    assert gz and len(data) < GZIP_OVER and sidecar_bytes(rows)[0] == data  # deterministic: the hash holds
    rec = {"run_id": "f" * 64, "status": "ok", "spec": {}}
    assert commit_run(tmp_path, "clf", rec, rows)
    assert rec["predictions_file"].endswith(".jsonl.gz")
    assert read_predictions(tmp_path / "clf", rec) == rows
    assert check_store(tmp_path, "clf")["sidecar_mismatch"] == []
    small = {"run_id": "e" * 64, "status": "ok", "spec": {}}
    commit_run(tmp_path, "clf", small, rows[:3])
    assert small["predictions_file"].endswith(".jsonl")  # small ones stay readable text
