"""One runner for every task: expand the grid, skip finished run_ids, measure each
cell, commit one JSON line per run (sidecar first), keep going past failures.

Faults stay inside their cell: an out-of-memory error (CUDA OOM, ``MemoryError``,
a failed CPU allocation, or, with ``isolate``, a child killed by SIGKILL, which
is what the OS out-of-memory killer sends) is recorded as ``status: "oom"``, any
other exception as ``status: "error"`` with its message, and the grid goes on.
Only ``ok`` runs count as done, so a rerun retries the failed ones. With
``oom_retries=k`` an OOM cell is retried up to k times with its batch sizes
halved (the training batch keeps its effective size through gradient
accumulation); the sizes it finally ran with are recorded under ``batch``.
The run_id is always the one of the spec as configured.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from strategies import ConfigError
from tasks import CellResult, Context, get_task

from .config import RunSpec, Sweep
from .measure import environment, peak_memory
from .model import compute_dtype, compute_dtype_name, pick_device
from .results import SCHEMA_VERSION, check_store, commit_run, done_ids, run_id, runs_path, scan_jsonl


@dataclass
class GridSummary:
    ran: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (label, status, message)
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


@dataclass
class Outcome:
    """One attempt at a cell (picklable: it crosses the process boundary with ``isolate``)."""

    status: str  # ok | oom | error
    result: CellResult | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str = ""
    traceback: str = ""


def spec_record(spec: RunSpec, task) -> dict[str, Any]:
    return {**spec.to_dict(), "task_version": task.version}


def cell_label(spec: RunSpec) -> str:
    return f"{spec.task}/{spec.strategy.label}/b={spec.budget}/seed={spec.seed}/{spec.mode}"


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, torch.OutOfMemoryError) or any(m in str(e).lower() for m in OOM_MESSAGES)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def attempt(spec: RunSpec, ctx: Context, task) -> Outcome:
    """Run the task once on this spec; every exception becomes an outcome."""
    t0 = time.perf_counter()
    try:
        with peak_memory(ctx.device) as mem:
            res = task.run(spec, ctx)
    except Exception as e:  # one failed cell never stops the grid
        out = Outcome("oom" if is_oom(e) else "error", error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=8))
    else:
        return Outcome("ok", result=res, memory=dict(mem), wall_s=time.perf_counter() - t0)
    # outside the except block: the traceback (and the tensors its frames hold) is gone
    free_memory(ctx.device)
    return out


def batch_sizes(spec: RunSpec) -> dict[str, int]:
    return {"batch_size": spec.batch_size, "train_batch_size": spec.train.batch_size,
            "grad_accum": spec.train.grad_accum}


def halve_batch(spec: RunSpec) -> RunSpec | None:
    """The spec with its inference batch halved and its training micro-batch halved
    (when even) with twice the gradient accumulation; None when nothing can shrink."""
    bs = max(1, spec.batch_size // 2)
    train = spec.train
    if train.batch_size > 1 and train.batch_size % 2 == 0:
        train = dataclasses.replace(train, batch_size=train.batch_size // 2, grad_accum=train.grad_accum * 2)
    if bs == spec.batch_size and train == spec.train:
        return None
    return dataclasses.replace(spec, batch_size=bs, train=train)


def run_cell(spec: RunSpec, ctx: Context, task, env: dict[str, Any], oom_retries: int = 0,
             isolate: bool = False) -> tuple[dict[str, Any], list[dict]]:
    """Run one cell and build its record (status ok, oom or error) and predictions."""
    sd = spec_record(spec, task)
    rid = run_id(sd)
    base = {
        "schema_version": SCHEMA_VERSION, "run_id": rid, "task": spec.task, "task_version": task.version,
        "main_metric": task.main_metric, "higher_is_better": task.higher_is_better,
        "data_label": task.data_label(spec), "spec": sd, "env": env,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "isolated": isolate,
    }
    cur, retries = spec, []
    while True:
        if isolate:
            from .isolate import run_isolated

            out = run_isolated(cur, task, ctx)
        else:
            out = attempt(cur, ctx, task)
        smaller = halve_batch(cur) if out.status == "oom" and len(retries) < oom_retries else None
        if smaller is None:
            break
        retries.append({**batch_sizes(cur), "error": out.error})
        tqdm.write(f"[oom] {cell_label(spec)}: {out.error}; retrying with batch sizes {batch_sizes(smaller)}")
        cur = smaller
    base["batch"] = {**batch_sizes(cur), "halvings": len(retries)}
    if retries:
        base["oom_retries"] = retries
    if out.status != "ok":
        return {**base, "status": out.status, "error": out.error, "traceback": out.traceback}, []
    res = out.result
    measurements = {**res.measurements, **out.memory, "wall_s": out.wall_s,
                    "compute_dtype": compute_dtype_name(ctx.device, spec.precision)}
    if "model_flops" in measurements:  # real-token FLOPs per second as a share of the matmul rate measured now
        from .flops import utilisation

        peak = matmul_rate(ctx.device, spec.precision)
        measurements.update(matmul_gflops=peak, utilisation=utilisation(
            measurements["model_flops"], measurements.get("inference_seconds", 0.0), peak))
    return {**base, "status": "ok", "budget": res.info.get("budget", spec.budget), "metrics": res.metrics,
            "measurements": measurements, "info": res.info}, res.predictions


class _StopAfterCell:
    """First Ctrl-C: finish the current run, then stop. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self):
        self.old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self.handle)
        except ValueError:  # not the main thread
            self.old = None
        return self

    def handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: stopping after the current run (press again to stop now)")

    def __exit__(self, *a):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


def make_deterministic() -> None:
    """Ask torch for deterministic kernels (warn where none exists). Set before the
    first CUDA call: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when its handle is created."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def determinism_record() -> dict[str, Any]:
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def _store_notes(root: Path, task: str) -> list[str]:
    """Report what an earlier crash or an older version left in the store."""
    state = check_store(root, task)
    notes = []
    if state["torn_lines"]:
        notes.append(f"{runs_path(root, task)}: ignored {len(state['torn_lines'])} torn or corrupt line(s) "
                     f"(a crash mid-write?): line(s) {state['torn_lines'][:10]}")
    if state["duplicate_ok"]:
        notes.append(f"{len(state['duplicate_ok'])} run_id(s) recorded ok more than once; tables keep one")
    for key, what in (("missing_sidecar", "missing"), ("sidecar_mismatch", "not matching predictions_sha")):
        if state[key]:
            notes.append(f"{len(state[key])} ok run(s) with a sidecar {what}: {[r[:12] for r in state[key][:5]]}")
    return notes


def matmul_rate(device: torch.device, precision: str = "auto") -> float:
    """The device's matmul rate (GFLOP/s, median of 5 after a warm-up, in the dtype the model runs in),
    measured right after each cell: on a shared machine the rate moves, so each run's "utilisation"
    divides by a rate taken next to it, in the same process (bench/flops.py)."""
    from .flops import Calibrator

    return Calibrator(device, compute_dtype(device, precision)).measure(samples=5, warmup=1)


def run_line(spec: RunSpec, record: dict[str, Any]) -> str:
    """One line per finished run: the metric, then the cost and how well the device was used."""
    m, x = record["metrics"], record["measurements"]
    main = record["main_metric"]
    parts = [f"{main} {m[main]:.3f}", f"{x.get('docs_per_s', 0):.1f} docs/s",
             f"{x.get('tokens_per_s', 0):.0f} real tokens/s"]
    if "utilisation" in x:
        parts.append(f"utilisation {100 * x['utilisation']:.1f}%")
    if "padding_waste" in x:
        parts.append(f"padding waste {100 * x['padding_waste']:.1f}%")
    if x.get("peak_memory_mb"):
        parts.append(f"peak {x['peak_memory_mb']:.0f} MB")
    return f"[ok] {cell_label(spec)}: " + ", ".join(parts)


def run_sweep(sweep: Sweep, results_root: str | Path = "results", ctx: Context | None = None,
              progress: bool = True, *, isolate: bool = False, oom_retries: int = 0,
              deterministic: bool = False, executor=None) -> GridSummary:
    """Run every cell not yet recorded ok. ``isolate``: each cell in its own child process
    (CPU peak RSS is then that cell's; a child killed by the OS is an oom run).
    ``oom_retries``: halve the batch sizes and retry an OOM cell up to this many times.
    ``deterministic``: ask torch for deterministic kernels (see README, Determinism).
    ``executor``: where cells run (bench/executors.py; default: in this process, one by one);
    whatever runs them, this process alone records them, as each one finishes."""
    if not isinstance(oom_retries, int) or oom_retries < 0:
        raise ConfigError(f"oom_retries must be an integer >= 0, got {oom_retries!r}")
    if deterministic:
        make_deterministic()
    task = get_task(sweep.task)
    ctx = ctx or Context(device=pick_device(sweep.device), progress=progress)
    if ctx.device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={sweep.device!r} asks for CUDA, but torch sees no CUDA device here "
                          f"(torch {torch.__version__}); use device=cpu or auto")
    root = Path(results_root)
    path = runs_path(root, sweep.task)
    summary = GridSummary(notes=_store_notes(root, sweep.task))
    for note in summary.notes:
        tqdm.write(note)
    done = done_ids(path)
    env = {**environment(ctx.device), "determinism": determinism_record()}
    cells = sweep.cells()
    ctx.memo["cells"] = cells  # lets a task plan shared work (e.g. one encoding pass per budget)
    from .executors import LocalExecutor

    executor = executor or LocalExecutor()

    def pending():  # read lazily: the local executor asks for the next cell after recording the last
        for spec in cells:
            if run_id(spec_record(spec, task)) in done:
                summary.skipped += 1
                bar.update()
                continue
            yield spec

    with _StopAfterCell() as stop, tqdm(total=len(cells), desc="grid", disable=not progress) as bar:
        results = executor.run(pending(), ctx, task, env, oom_retries=oom_retries, isolate=isolate)
        try:
            for spec, record, preds in results:
                bar.update()
                rid = record["run_id"]
                if not commit_run(root, sweep.task, record, preds):
                    summary.skipped += 1  # another process recorded it meanwhile
                elif record["status"] == "ok":
                    summary.ran += 1
                    tqdm.write(run_line(spec, record))
                else:
                    summary.failed.append((cell_label(spec), record["status"], record["error"]))
                    tqdm.write(f"[{record['status']}] {cell_label(spec)}: {record['error']}")
                if record["status"] == "ok":
                    done.add(rid)
                if stop.requested:
                    summary.interrupted = True
                    break
        finally:
            results.close()  # a remote executor stops its workers here
    summary.notes += executor.notes()
    if hasattr(task, "summary"):
        summary.notes += task.summary(ctx, root / sweep.task)
    return summary


__all__ = ["GridSummary", "Outcome", "attempt", "cell_label", "run_line", "halve_batch", "is_oom", "run_cell",
           "run_sweep",
           "scan_jsonl", "spec_record"]
