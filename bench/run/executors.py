"""Where grid cells run: in this process (``local``, the default) or as Ray tasks (``ray``).

The driver (``run_sweep``) decides which cells are still to run and alone writes
``runs.jsonl``; an executor only turns cells into ``(spec, record, predictions)``
triples, yielded as they finish. So results reach the store one by one: a crash
of a worker, or of the driver, loses at most the cells then running, and a
rerun skips every run_id already recorded ``ok``.

``LocalExecutor`` runs ``run_cell`` in process, one cell after the other (the
behaviour ctxbench always had). ``RayExecutor`` keeps a pool of Ray actors, one
cell at a time each: "cell = task" (see the README, Scaling out). Ray is an
optional extra (``pip install 'ctxbench[ray]'``), imported only here and only
when a ``RayExecutor`` runs.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from collections import deque
from typing import Any, Iterable, Iterator, Protocol

from ctxbench.strategies import ConfigError
from ctxbench.bench.results import SCHEMA_VERSION, run_id
from ctxbench.bench.run.cell import (batch_sizes, cell_label, determinism_record, make_deterministic, run_cell,
                                     spec_record)
from ctxbench.tasks import Context, get_task
from ctxbench.tasks.model.distributed import launched_world_size, state
from ctxbench.tasks.model.encoder import pick_device
from ctxbench.tasks.model.measure import environment

Result = tuple[Any, dict[str, Any], list[dict]]  # (RunSpec, run record, per-example predictions)

# Forwarded from the driver to every Ray worker when set: where the caches live and whether the hub may be used.
FORWARDED_ENV = ("CTXBENCH_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                 "HF_HUB_DISABLE_TELEMETRY", "CUBLAS_WORKSPACE_CONFIG")


class Executor(Protocol):
    name: str

    def run(self, cells: Iterable, ctx, task, env: dict[str, Any], *, oom_retries: int = 0,
            isolate: bool = False) -> Iterator[Result]: ...

    def notes(self) -> list[str]: ...


class LocalExecutor:
    """Every cell in this process, in grid order, lazily: the driver records a cell before
    the next one starts (and reads ``cells`` one at a time, so its skip test is current)."""

    name = "local"

    def run(self, cells: Iterable, ctx, task, env: dict[str, Any], *, oom_retries: int = 0,
            isolate: bool = False) -> Iterator[Result]:
        for spec in cells:
            record, preds = run_cell(spec, ctx, task, env, oom_retries=oom_retries, isolate=isolate)
            yield spec, record, preds

    def notes(self) -> list[str]:
        return []


def share_key(spec) -> tuple | None:
    """Cells with one key share expensive per-process state: in probe mode, the encoding pass
    of every window at one budget (clf's span cache prefetch). None: nothing worth sharing."""
    if spec.mode != "probe":
        return None
    return (spec.task, spec.dataset, spec.model, spec.pooler, spec.budget, spec.limits, spec.data_seed,
            spec.text_col, spec.label_col)


def failure_record(spec, task, env: dict[str, Any], status: str, error: str, tb: str = "") -> dict[str, Any]:
    """The record ``run_cell`` would have written for a failed cell, for a cell whose worker died."""
    sd = spec_record(spec, task)
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id(sd), "task": spec.task, "task_version": task.version,
            "main_metric": task.main_metric, "higher_is_better": task.higher_is_better,
            "data_label": task.data_label(spec), "spec": sd, "env": env,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "isolated": False,
            "batch": {**batch_sizes(spec), "halvings": 0}, "status": status, "error": error, "traceback": tb}


class CellWorker:
    """A Ray actor's body: runs one cell at a time and keeps one Context per device
    (loaded encoder, tokenized data, span caches) across the cells it is given."""

    def __init__(self, cells: list, settings: dict[str, Any]) -> None:
        os.environ.update(settings["env_vars"])  # before anything reads them (HF offline flags, the cache)
        import torch

        torch.set_num_threads(settings["threads"])
        if settings["deterministic"]:
            make_deterministic()
        self.cells, self.settings = cells, settings
        self.contexts: dict[str, Any] = {}
        self.tasks: dict[str, Any] = {}
        self.envs: dict[str, dict] = {}
        self.where = {"pid": os.getpid(), "node": _node_ip()}

    def run(self, spec, oom_retries: int, isolate: bool) -> tuple[dict, list, dict]:
        device = pick_device(spec.device)  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPUs ("" for none)
        key = str(device)
        if key not in self.contexts:
            self.contexts[key] = Context(device=device, progress=False, memo={"cells": self.cells})
            # this worker's machine, device and threads; the code version is the driver's
            self.envs[key] = {**environment(device), "determinism": determinism_record(), **self.settings["git"]}
        task = self.tasks.setdefault(spec.task, get_task(spec.task))
        record, preds = run_cell(spec, self.contexts[key], task, self.envs[key], oom_retries=oom_retries,
                                 isolate=isolate)
        return record, preds, self.where


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'ctxbench[ray]' (or pip install ray)") from None
    return ray


class RayExecutor:
    """Each pending cell becomes one Ray actor task. A pool of actors (one per GPU when the
    cluster has GPUs and the sweep's device is not cpu, else one per ``num_cpus`` CPUs)
    runs one cell at a time each and keeps its Context, so a worker loads the model and
    the data once. Results come back as they finish; the driver records them.

    A cell whose worker process dies (killed, the node lost, the OS OOM killer) is run
    again on a fresh actor, up to ``max_retries`` times, then recorded as ``error`` (or
    ``oom`` when Ray says memory). An exception inside the cell is the cell's record, as
    locally. Idle actors take a cell of a budget they already encoded (probe mode) or
    one nobody has started, before they take work from another actor's budget.

    ``address``: None starts a local Ray instance (or uses the one ``ray.init`` already
    started in this process); ``"auto"`` joins the cluster on this machine;
    ``"ray://host:10001"`` connects a Ray client.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float | None = None,
                 max_retries: int = 2, pool_size: int | None = None, runtime_env: dict | None = None,
                 init_kwargs: dict | None = None) -> None:
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.max_retries, self.pool_size = max_retries, pool_size
        self.runtime_env, self.init_kwargs = runtime_env, dict(init_kwargs or {})
        self.busy: dict[Any, tuple[Any, Any]] = {}  # object ref -> (actor, spec) while a cell runs
        self.pids: dict[Any, int] = {}  # actor -> its process id (known after its first cell)
        self.crashes: list[tuple[str, str]] = []  # (cell label, error) for every worker death
        self._notes: list[str] = []

    # ------------------------------------------------------------ cluster

    def connect(self):
        """Join ``address``, or start a private Ray on this machine that listens on loopback only
        (Ray reads that switch when imported: a Ray imported earlier binds every interface)."""
        private = self.address is None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if private:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's single-machine mode
        ray = import_ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"log_to_driver": False}
            if private:
                kw.update(include_dashboard=False, _node_ip_address="127.0.0.1")
            ray.init(address=self.address, **{**kw, **self.init_kwargs})
        return ray

    def resources(self, ray, cells: list) -> tuple[float, float, int]:
        """(CPUs, GPUs) per actor and the pool size."""
        total = ray.cluster_resources()
        wants_gpu = all(s.device != "cpu" for s in cells)
        gpus = self.num_gpus if self.num_gpus is not None else (1 if wants_gpu and total.get("GPU", 0) >= 1 else 0)
        if gpus:
            fits = int(total.get("GPU", 0) // gpus)
        else:
            fits = int(total.get("CPU", 0) // self.num_cpus) if self.num_cpus else len(cells)
        size = min(len(cells), self.pool_size or fits)
        if size < 1:
            raise ConfigError(f"the Ray cluster ({dict(total)}) cannot fit one cell's request "
                              f"(num_cpus={self.num_cpus}, num_gpus={gpus})")
        return self.num_cpus, gpus, size

    def running(self) -> dict[int, Any]:
        """Process id -> the cell it runs now, for workers whose id is known (tests, diagnostics)."""
        return {self.pids[a]: spec for a, spec in self.busy.values() if a in self.pids}

    # ------------------------------------------------------------ the grid

    def run(self, cells: Iterable, ctx, task, env: dict[str, Any], *, oom_retries: int = 0,
            isolate: bool = False) -> Iterator[Result]:
        pending, seen = [], set()
        for spec in cells:  # what the driver still wants, each run_id once
            rid = run_id(spec_record(spec, task))
            if rid not in seen:
                seen.add(rid)
                pending.append(spec)
        if not pending:
            return
        ray = self.connect()
        cpus, gpus, size = self.resources(ray, pending)
        settings = {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ},
                    "threads": max(1, int(cpus)), "deterministic": bool(env.get("determinism", {}).get(
                        "deterministic_algorithms")), "git": {k: env[k] for k in ("git_sha", "git_dirty") if k in env}}
        options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 0}
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        actor_cls = ray.remote(CellWorker).options(**options)
        grid = ray.put(list(ctx.memo.get("cells", pending)))  # the whole grid: a task may plan shared work

        def spawn():
            return actor_cls.remote(grid, settings)

        idle = [spawn() for _ in range(size)]
        warm: dict[Any, set] = {a: set() for a in idle}
        queue: deque = deque((s, []) for s in pending)
        attempts: dict[Any, list[str]] = {}

        def pick(actor):
            """This actor's own budget first, then one no actor has started, then any."""
            keys = [share_key(s) for s, _ in queue]
            started = set().union(*warm.values())
            for rule in (lambda k: k is not None and k in warm[actor], lambda k: k is None or k not in started,
                         lambda k: True):
                for i, k in enumerate(keys):
                    if rule(k):
                        item = queue[i]
                        del queue[i]
                        return item
            return None

        def dispatch():
            while idle and queue:
                actor = idle.pop()
                spec, crashes = pick(actor)
                warm[actor].add(share_key(spec))
                ref = actor.run.remote(spec, oom_retries, isolate)
                self.busy[ref] = (actor, spec)
                attempts[ref] = crashes

        t0, n_done, nodes = time.perf_counter(), 0, set()
        try:
            dispatch()
            while self.busy:
                ready, _ = ray.wait(list(self.busy), num_returns=1)
                ref = ready[0]
                actor, spec = self.busy.pop(ref)
                crashes = attempts.pop(ref)
                try:
                    record, preds, where = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # raised outside run_cell's own guard: the cell's error
                    idle.append(actor)
                    dispatch()
                    n_done += 1
                    cause = getattr(e, "cause", None) or e
                    yield spec, failure_record(spec, task, env, "error", f"{type(cause).__name__}: {cause}"[:2000],
                                               str(e)[-4000:]), []
                    continue
                except ray.exceptions.RayError as e:  # the worker process died: replace it, retry the cell
                    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                    self.crashes.append((cell_label(spec), msg))
                    crashes = [*crashes, msg]
                    ray.kill(actor, no_restart=True)
                    warm.pop(actor, None)
                    self.pids.pop(actor, None)
                    if len(crashes) <= self.max_retries:
                        queue.appendleft((spec, crashes))
                    if queue:  # a fresh worker in its place, if there is work for it
                        fresh = spawn()
                        warm[fresh] = set()
                        idle.append(fresh)
                        dispatch()
                    if len(crashes) <= self.max_retries:
                        continue
                    n_done += 1
                    status = "oom" if "memory" in msg.lower() else "error"
                    out = failure_record(spec, task, env, status, f"the Ray worker running this cell died "
                                         f"{len(crashes)} time(s); last: {msg}")
                    out["worker_crashes"] = crashes
                    yield spec, out, []
                    continue
                self.pids[actor] = where["pid"]
                nodes.add(where["node"])
                record["executor"] = {"name": "ray", **where}
                if crashes:
                    record["worker_crashes"] = crashes
                idle.append(actor)
                dispatch()  # before yielding: the worker is busy again while the driver records
                n_done += 1
                yield spec, record, preds
        finally:
            for actor in list(warm):  # also ends the cells still running (Ctrl-C, an error in the driver)
                ray.kill(actor, no_restart=True)
            self.busy.clear()
            self._notes.append(f"ray: {n_done} of {len(pending)} cell(s) in {time.perf_counter() - t0:.1f}s on a pool "
                               f"of {size} worker(s) ({cpus} CPU, {gpus} GPU each) on {len(nodes)} node(s)"
                               + (f"; {len(self.crashes)} worker death(s), cells rerun: "
                                  f"{[c for c, _ in self.crashes][:5]}" if self.crashes else ""))

    def notes(self) -> list[str]:
        return list(self._notes)


def make_executor(name: str = "local", address: str | None = None, **kwargs: Any) -> Executor:
    """The executor a ``--executor`` flag names."""
    if address and name != "ray":
        raise ConfigError("--address is for --executor ray")
    if name == "local":
        if launched_world_size() > 1:  # every process would run and record every cell on its own
            raise ConfigError(f"this is one of {launched_world_size()} processes started by a distributed launcher "
                              f"(accelerate launch, torchrun): use --executor accelerate")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, **kwargs)
    if name == "accelerate":
        return DistributedExecutor()
    raise ConfigError(f"unknown executor {name!r}; valid: local, ray, accelerate")


__all__ = ["CellWorker", "Executor", "LocalExecutor", "RayExecutor", "failure_record", "make_executor", "share_key"]


class DistributedExecutor:
    """Every process runs every cell, in the same order; the main process alone yields
    results, so only it writes. The cell list is fixed on every process before any
    process records anything (a barrier), and after each cell the main process tells
    the others whether the driver goes on (a Ctrl-C or an error stops all of them)."""

    name = "accelerate"

    def __init__(self) -> None:
        # joins the process group; on CUDA it also makes "cuda" mean this process's GPU,
        # before the runner loads anything
        self.state = state()

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def _go_on(self, flag: bool) -> bool:
        if self.state.num_processes == 1:
            return flag
        import torch.distributed as dist

        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def run(self, cells: Iterable, ctx, task, env: dict[str, Any], *, oom_retries: int = 0,
            isolate: bool = False) -> Iterator:
        size = self.state.num_processes
        cells = list(cells)  # decided now, on every process, from the same runs.jsonl
        if size > 1:
            if isolate:
                raise ConfigError("isolate=True cannot run under a distributed launcher: a cell's child process "
                                  "would not be part of the process group")
            if oom_retries:
                raise ConfigError("oom_retries cannot run under a distributed launcher: an out-of-memory error on "
                                  "one process would leave the others waiting in a collective")
            if any(s.task != "clf" or s.mode != "finetune" for s in cells):
                raise ConfigError("--executor accelerate trains data parallel in clf finetune mode only; other "
                                  "tasks and probe mode would run replicated on every process: use --executor ray "
                                  "or a single process")
        self.state.wait_for_everyone()
        env = {**env, "distributed": {"num_processes": size, "backend": str(self.state.backend),
                                      "distributed_type": str(self.state.distributed_type)}}
        for spec in cells:
            record, preds = run_cell(spec, ctx, task, env, oom_retries=oom_retries, isolate=isolate)
            if self.is_main:
                try:
                    yield spec, record, preds
                except GeneratorExit:  # the driver stopped (Ctrl-C, an error): stop everyone
                    self._go_on(False)
                    raise
                self._go_on(True)
            elif not self._go_on(True):
                return

    def notes(self) -> list[str]:
        n = self.state.num_processes
        return [f"accelerate: {n} process(es), data parallel fine-tuning; rank 0 recorded the results"] if n > 1 else []
