"""The Ray executor on a local, loopback-only Ray instance (2 CPUs): the same run_ids and
metrics as the local executor, with a worker killed mid-grid and the driver stopped and
restarted, and nothing lost or recorded twice. Plus the shared-cache write discipline
that lets several workers write one cache file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import check_store, read_jsonl
from ctxbench.bench.run.cell import cell_label
from ctxbench.bench.run.runner import run_sweep
from ctxbench.tasks import Context

# Loopback only, set before Ray is imported: Ray reads these at import. On Linux Ray resolves
# _node_ip_address="127.0.0.1" to the machine's routable address (and binds 0.0.0.0) unless
# its single-machine mode is on, which is what this switch does.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

STRATEGIES = "strategies=[head, tail, {name: sliding, pool: max}, {name: hierarchical, pool: mean}]"


def sweep_for(model: str, data: str):
    return load_sweep("clf", [f"model={model}", f"dataset={data}", "limits.train=null", "limits.val=null",
                              "limits.test=null", "train.epochs=4", "train.patience=4", "seeds=[0]",
                              "budgets=[16,64]", STRATEGIES])


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'ctxbench[ray]'")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=200 * 1024 * 1024, log_to_driver=False)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()


@pytest.fixture()
def one_thread():
    """Ray workers run with one thread each (num_cpus=1); so does the local reference run,
    so that float reductions, and so metrics, are bit for bit comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class DriverDied(KeyboardInterrupt):
    """What a second Ctrl-C raises in the driver: it stops without recording anything more."""


def kill_then_stop():
    from ctxbench.bench.run.executors import RayExecutor

    class KillThenStop(RayExecutor):
        """After the first result, SIGKILL a worker that is running a cell; once that death has
        been seen and three results are recorded, die like a driver that crashed."""

        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.killed = []

        def run(self, cells, *args, **kwargs):
            inner = super().run(cells, *args, **kwargs)
            try:
                for i, out in enumerate(inner):
                    yield out
                    if i == 0:
                        victims = self.running()
                        assert victims, "no worker busy after the first result"
                        pid, spec = next(iter(victims.items()))
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append((pid, spec))
                    if i >= 2 and self.crashes:
                        raise DriverDied
            finally:
                inner.close()

    return KillThenStop()


def test_ray_matches_local_despite_a_killed_worker_and_a_driver_restart(
        ray_local, tiny_model, tiny_data, tmp_path, cache_env, one_thread):
    from ctxbench.bench.run.executors import RayExecutor

    sweep = sweep_for(tiny_model, tiny_data)
    cells = sweep.cells()
    local = run_sweep(sweep, tmp_path / "local", ctx=Context(device=torch.device("cpu"), progress=False),
                      progress=False)
    assert local.ok and local.ran == len(cells) == 8

    root = tmp_path / "ray"
    killer = kill_then_stop()
    with pytest.raises(DriverDied):
        run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False,
                  executor=killer)
    first = read_jsonl(root / "clf" / "runs.jsonl")
    assert 3 <= len(first) < len(cells) and all(r["status"] == "ok" for r in first)  # recorded as they came
    assert len(killer.killed) == 1 and len(killer.crashes) == 1  # the kill hit a running cell
    assert killer.crashes[0][0] == cell_label(killer.killed[0][1])

    again = run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False,
                      executor=RayExecutor())
    assert again.ok and again.skipped == len(first) and again.ran == len(cells) - len(first)

    runs = read_jsonl(root / "clf" / "runs.jsonl")
    ref = {r["run_id"]: r for r in read_jsonl(tmp_path / "local" / "clf" / "runs.jsonl")}
    assert len(runs) == len(ref) == len({r["run_id"] for r in runs})  # nothing lost, nothing twice
    assert {r["run_id"] for r in runs} == set(ref)
    for r in runs:
        assert r["status"] == "ok" and r["metrics"] == ref[r["run_id"]]["metrics"], r["spec"]["strategy"]["label"]
        assert r["predictions_sha"] == ref[r["run_id"]]["predictions_sha"]
        assert r["executor"]["name"] == "ray" and r["executor"]["pid"] != os.getpid()
        assert r["env"]["threads"] == 1
    state = check_store(root, "clf")
    assert not any(state.values()), state
    # a rerun on Ray repeats nothing
    third = run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False,
                      executor=RayExecutor())
    assert third.ran == 0 and third.skipped == len(cells)
    assert len(read_jsonl(root / "clf" / "runs.jsonl")) == len(cells)


def test_a_cell_whose_worker_keeps_dying_is_recorded_as_error(ray_local, tiny_model, tiny_data, tmp_path,
                                                               cache_env, one_thread):
    """With max_retries=0, the killed worker's cell is an error run (a rerun retries it);
    every other cell is ok."""
    from ctxbench.bench.run.executors import RayExecutor

    class KillOnce(RayExecutor):
        def run(self, cells, *args, **kwargs):
            inner = super().run(cells, *args, **kwargs)
            try:
                for i, out in enumerate(inner):
                    yield out
                    if i == 0:
                        pid = next(iter(self.running()))
                        os.kill(pid, signal.SIGKILL)
            finally:
                inner.close()

    sweep = load_sweep("clf", [f"model={tiny_model}", f"dataset={tiny_data}", "limits.train=null",
                               "limits.val=null", "limits.test=null", "train.epochs=2", "seeds=[0]",
                               "budgets=[16]", STRATEGIES])
    summary = run_sweep(sweep, tmp_path / "r", ctx=Context(device=torch.device("cpu"), progress=False),
                        progress=False, executor=KillOnce(max_retries=0))
    runs = read_jsonl(tmp_path / "r" / "clf" / "runs.jsonl")
    assert len(runs) == 4 and summary.ran == 3 and len(summary.failed) == 1
    bad = next(r for r in runs if r["status"] != "ok")
    assert bad["status"] == "error" and "died 1 time" in bad["error"] and len(bad["worker_crashes"]) == 1
    assert bad["run_id"] not in {r["run_id"] for r in runs if r["status"] == "ok"}


def test_unknown_executor_and_missing_address_use_are_config_errors():
    from ctxbench.bench.run.executors import make_executor
    from ctxbench.strategies import ConfigError

    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ConfigError, match="--address is for --executor ray"):
        make_executor("local", "auto")


WRITER = textwrap.dedent("""
    import sys
    from ctxbench.tasks.cache import atomic_write_checked
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(n):
        payload = (tag * (1000 + 997 * (i % 50))).encode()  # sizes vary: a torn file would show
        atomic_write_checked(path, payload, "k")
""")


def test_concurrent_cache_writers_never_show_a_reader_half_a_file(tmp_path):
    """Two processes rewrite one checked cache file while this one reads it: every read is
    a whole entry of one writer (write-then-rename), never a mix or a prefix."""
    from ctxbench.tasks.cache import CacheError, read_checked

    path = tmp_path / "spans.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, "300"], env=env) for tag in "ab"]
    reads = 0
    try:
        while any(p.poll() is None for p in procs):
            if not path.exists():
                continue
            try:
                data = read_checked(path, "k")
            except CacheError as e:
                pytest.fail(f"a reader saw a damaged cache file: {e}")
            assert set(data) in ({ord("a")}, {ord("b")}) and (len(data) - 1000) % 997 == 0
            reads += 1
    finally:
        for p in procs:
            p.wait(timeout=60)
    assert all(p.returncode == 0 for p in procs) and reads > 0
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
