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

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ctxbench.bench.config import RunSpec, Sweep
from ctxbench.bench.results import check_store, commit_run, done_ids, merge_records, run_id, runs_path
from ctxbench.bench.run.cell import cell_label, determinism_record, make_deterministic, spec_record
from ctxbench.bench.run.executors import LocalExecutor
from ctxbench.strategies import ConfigError
from ctxbench.tasks import Context, get_task
from ctxbench.tasks.model.encoder import pick_device
from ctxbench.tasks.model.measure import environment


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


def run_line(spec: RunSpec, record: dict[str, Any]) -> str:
    """One line per finished run: the metric, then the measured cost of the strategy alone (the cost
    pass) and how well the device was used; without a cost pass, the grid's estimate, labelled so."""
    m, x = record["metrics"], record["measurements"]
    main = record["main_metric"]
    cost = x.get("cost") or {}
    parts = [f"{main} {m[main]:.3f}"]
    if cost.get("cost_docs_per_s"):
        parts += [f"{cost['cost_docs_per_s']:.1f} docs/s measured", f"{cost['cost_tokens_per_s']:.0f} real tokens/s"]
        if cost.get("latency_b1_p50_ms") is not None:
            parts.append(f"b=1 p50 {cost['latency_b1_p50_ms']:.1f} ms")
        if cost.get("utilisation") is not None:
            parts.append(f"utilisation {100 * cost['utilisation']:.1f}%")
        elif cost.get("utilisation_error"):
            parts.append(f"utilisation ERROR ({100 * cost['utilisation_measured']:.0f}% > 100%)")
        if cost.get("cost_peak_mb"):
            parts.append(f"pass peak {cost['cost_peak_mb']:.0f} MB")
    else:
        parts.append(f"{x.get('docs_per_s', 0):.1f} docs/s (grid estimate)")
        if x.get("peak_memory_mb"):
            parts.append(f"process peak {x['peak_memory_mb']:.0f} MB")
    if "padding_waste" in x:
        parts.append(f"padding waste {100 * x['padding_waste']:.1f}%")
    return f"[ok] {cell_label(spec)}: " + ", ".join(parts)


DATA_FIELDS = ("dataset", "model", "data_seed", "limits", "text_col", "label_col", "empty_docs", "settings")


def check_data_once(task, cells: list, ctx: Context, done: set) -> None:
    """A data-level error stops the sweep once, before the grid, with one message: the task's
    ``check_data`` (optional in the contract) runs on the first pending cell of each data set."""
    check = getattr(task, "check_data", None)
    if check is None:
        return
    seen = set()
    for spec in cells:
        key = tuple(repr(getattr(spec, f, None)) for f in DATA_FIELDS)
        if key in seen or run_id(spec_record(spec, task)) in done:
            continue
        seen.add(key)
        try:
            check(spec, ctx)
        except ConfigError as e:
            raise ConfigError(f"{spec.task} data check, before any cell ran (dataset {spec.dataset!r}, model "
                              f"{spec.model!r}): {e}") from None


def run_sweep(sweep: Sweep, results_root: str | Path = "results", ctx: Context | None = None,
              progress: bool = True, *, isolate: bool = False, oom_retries: int = 0,
              deterministic: bool = False, executor=None, rerun: bool = False) -> GridSummary:
    """Run every cell not yet recorded ok. ``isolate``: each cell in its own child process
    (CPU peak RSS is then that cell's; a child killed by the OS is an oom run).
    ``oom_retries``: halve the batch sizes and retry an OOM cell up to this many times.
    ``deterministic``: ask torch for deterministic kernels (see README, Determinism).
    ``executor``: where cells run (bench/run/executors.py; default: in this process, one by one);
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
    done = set() if rerun else done_ids(path)  # rerun: every cell measured again, its new line replacing the old
    env = {**environment(ctx.device), "determinism": determinism_record()}
    cells = sweep.cells()
    ctx.memo["cells"] = cells  # lets a task plan shared work (e.g. one encoding pass per budget)

    check_data_once(task, cells, ctx, done)
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
                written = commit_run(root, sweep.task, record, preds, replace=rerun)
                if record["status"] != "ok":  # reported even where an ok line of it stays (a failed rerun)
                    summary.failed.append((cell_label(spec), record["status"], record["error"]))
                    tqdm.write(f"[{record['status']}] {cell_label(spec)}: {record['error']}")
                elif not written:
                    summary.skipped += 1  # another process recorded it meanwhile
                else:
                    summary.ran += 1
                    tqdm.write(run_line(spec, record))
                if record["status"] == "ok":
                    done.add(rid)
                if stop.requested:
                    summary.interrupted = True
                    break
        finally:
            results.close()  # a remote executor stops its workers here
    summary.notes += executor.notes()
    if hasattr(task, "summary"):
        report = task.summary(ctx)
        summary.notes += report.lines
        for name, (rows, key) in report.records.items():
            merge_records(root / sweep.task / name, rows, key)
    return summary


__all__ = ["GridSummary", "run_line", "run_sweep"]

