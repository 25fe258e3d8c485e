"""One attempt at a cell, in this process: every exception becomes an outcome (``oom`` or
``error``), so one failed cell never stops the grid. ``isolate`` runs the same attempt in a child."""
from __future__ import annotations

import gc
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from ctxbench.bench.config import RunSpec
from ctxbench.tasks import CellResult, Context
from ctxbench.tasks.model.cost import measure_cost
from ctxbench.tasks.model.measure import peak_memory


@dataclass
class Outcome:
    """One attempt at a cell (picklable: it crosses the process boundary with ``isolate``)."""

    status: str  # ok | oom | error
    result: CellResult | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str = ""
    traceback: str = ""


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, torch.OutOfMemoryError) or any(m in str(e).lower() for m in OOM_MESSAGES)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cost_key(spec: RunSpec, ctx: Context, res: CellResult) -> tuple:
    """What a cell's cost depends on: not its seed (every seed's run records the one measurement)."""
    kind = spec.train.finetune if spec.mode == "finetune" else None
    return (spec.task, spec.dataset, spec.model, spec.mode, kind, spec.strategy.label,
            res.info.get("budget", spec.budget), spec.precision, str(ctx.device), spec.batch_size, spec.cost_docs,
            spec.cost_repeats, res.cost.key)


def add_cost(spec: RunSpec, ctx: Context, res: CellResult) -> None:
    """Time the cell's strategy alone (tasks/model/cost.py), once per cost key, into ``measurements``:
    ``cost`` (the measured pass) and ``utilisation`` (None, with ``cost.utilisation_error``, above 100%)."""
    if res.cost is None or spec.cost_repeats == 0:
        res.cost = None
        return
    key = cost_key(spec, ctx, res)
    memo = ctx.memo.setdefault("cost", {})
    if key in memo:
        cost = {**memo[key], "measured_in": "an earlier seed's cell of this process (cost does not depend on the seed)"}
    else:
        cost = measure_cost(res.cost, ctx.device, spec.batch_size, spec.precision, repeats=spec.cost_repeats)
        memo[key] = {**cost, "measured_by_seed": spec.seed}
        cost = {**cost, "measured_in": "this cell"}
    res.cost = None  # the probe holds the model; the record holds numbers only
    res.measurements["cost"] = cost
    res.measurements["utilisation"] = cost.get("utilisation")


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
        try:
            add_cost(spec, ctx, res)
        except Exception as e:
            if not is_oom(e):
                raise
            res.cost = None
            res.measurements["cost"] = {"error": f"the cost pass ran out of memory: {e}"}
        return Outcome("ok", result=res, memory=dict(mem), wall_s=time.perf_counter() - t0)
    # outside the except block: the traceback (and the tensors its frames hold) is gone
    free_memory(ctx.device)
    return out



__all__ = ["OOM_MESSAGES", "Outcome", "attempt", "free_memory", "is_oom"]
