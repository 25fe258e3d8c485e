"""One runner for every task: expand the grid, skip finished run_ids, measure each
cell, append one JSON line per run (sidecar first), keep going past failures."""
from __future__ import annotations

import datetime as dt
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tasks import Context, get_task

from .config import RunSpec, Sweep
from .measure import environment, peak_memory
from .model import pick_device
from .results import SCHEMA_VERSION, append_line, done_ids, run_id, sidecar_path, write_sidecar


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


def spec_record(spec: RunSpec, task) -> dict[str, Any]:
    return {**spec.to_dict(), "task_version": task.version}


def cell_label(spec: RunSpec) -> str:
    return f"{spec.task}/{spec.strategy.label}/b={spec.budget}/seed={spec.seed}/{spec.mode}"


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def run_cell(spec: RunSpec, ctx: Context, task, env: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """Run one cell and build its record (status ok, oom or error) and predictions."""
    sd = spec_record(spec, task)
    rid = run_id(sd)
    base = {
        "schema_version": SCHEMA_VERSION, "run_id": rid, "task": spec.task, "task_version": task.version,
        "main_metric": task.main_metric, "higher_is_better": task.higher_is_better,
        "data_label": task.data_label(spec), "spec": sd, "env": env,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    t0 = time.perf_counter()
    try:
        with peak_memory(ctx.device) as mem:
            res = task.run(spec, ctx)
    except Exception as e:  # one failed cell never stops the grid
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        status = "oom" if is_oom(e) else "error"
        return {**base, "status": status, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=8)}, []
    wall = time.perf_counter() - t0
    measurements = {**res.measurements, **mem, "wall_s": wall}
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


def run_sweep(sweep: Sweep, results_root: str | Path = "results", ctx: Context | None = None,
              progress: bool = True) -> GridSummary:
    task = get_task(sweep.task)
    ctx = ctx or Context(device=pick_device(sweep.device), progress=progress)
    if ctx.device.type == "cpu":
        torch.set_num_threads(torch.get_num_threads())  # pinned: recorded in every run line
    runs_path = Path(results_root) / sweep.task / "runs.jsonl"
    done = done_ids(runs_path)
    env = environment(ctx.device)
    summary = GridSummary()
    cells = sweep.cells()
    ctx.memo["cells"] = cells  # lets a task plan shared work (e.g. one encoding pass per budget)
    with _StopAfterCell() as stop:
        for spec in tqdm(cells, desc="grid", disable=not progress):
            rid = run_id(spec_record(spec, task))
            if rid in done:
                summary.skipped += 1
                continue
            record, preds = run_cell(spec, ctx, task, env)
            if record["status"] == "ok":
                path = sidecar_path(results_root, sweep.task, rid)
                record["predictions_file"] = str(path.relative_to(Path(results_root) / sweep.task))
                record["predictions_sha"] = write_sidecar(path, preds)
                summary.ran += 1
            else:
                summary.failed.append((cell_label(spec), record["status"], record["error"]))
                tqdm.write(f"[{record['status']}] {cell_label(spec)}: {record['error']}")
            append_line(runs_path, record)
            done.add(rid)
            if stop.requested:
                summary.interrupted = True
                break
    if hasattr(task, "summary"):
        summary.notes = task.summary(ctx, Path(results_root) / sweep.task)
    return summary
