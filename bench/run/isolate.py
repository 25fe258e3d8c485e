"""Run one grid cell in a child process (``run_sweep(isolate=True)``, ``--isolate``).

Why: on CPU the only honest peak memory of a cell is the peak RSS of a process
that ran that cell alone, and a cell that exhausts memory is killed by the OS
(SIGKILL) instead of raising: in a child that kills the cell, not the grid.

Children come from a ``forkserver`` that has already imported torch, the
runner and the task adapters, so a cell starts in milliseconds rather than the
seconds an interpreter takes to import them; the server never runs a torch op
or touches CUDA, so forking it is safe. Each child gets the parent's
environment variables, thread count, device and grid, loads its model and data
itself (from the disk caches), ignores Ctrl-C (the parent decides: the first
Ctrl-C lets the cell finish, the second kills it) and sends its outcome back
through a pipe. A child that dies without one is recorded as ``oom`` when the
signal was SIGKILL, else as ``error``.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import Any

import torch
from ctxbench.bench.run.attempt import Outcome, attempt
from ctxbench.tasks import Context
from ctxbench.tasks.model.measure import peak_rss_mb
from ctxbench.tasks.model.packaged import resolve_model

PRELOAD = ["ctxbench.bench.run.cell", "ctxbench.tasks", "transformers.models.auto.modeling_auto",
           "transformers.models.auto.tokenization_auto", "transformers.tokenization_utils_tokenizers",
           "datasets.packaged_modules.csv.csv", "datasets.packaged_modules.json.json"]
_CONTEXT: Any = None


def preload_for(model: str) -> list[str]:
    """The modules a cell on ``model`` imports lazily (transformers imports a model's code
    on first use: seconds per child otherwise). Unknown or hub models: the generic list."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(resolve_model(model)) / "config.json").read_text())
        mt = str(cfg["model_type"]).replace("-", "_")
    except Exception:  # a hub id, an unreadable folder: the cell reports it
        return list(PRELOAD)
    pkg = f"transformers.models.{mt}"
    return [*PRELOAD, f"{pkg}.modeling_{mt}", f"{pkg}.tokenization_{mt}_fast", f"{pkg}.tokenization_{mt}"]


def context(model: str | None = None) -> Any:
    """The forkserver context shared by every isolated cell of this process; the modules
    it preloads are fixed when it starts (for the first cell's model)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(preload_for(model) if model else list(PRELOAD))
    return _CONTEXT


def run_isolated(spec, task, ctx) -> Any:
    """Run ``attempt(spec)`` in a fresh child; returns its Outcome (or one describing its death)."""
    mpc = context(spec.model)
    recv, send = mpc.Pipe(duplex=False)
    child = mpc.Process(target=_child, name=f"ctxbench-cell-{spec.strategy.label}-b{spec.budget}-s{spec.seed}",
                        args=(send, spec, task, str(ctx.device), ctx.progress, torch.get_num_threads(),
                              list(ctx.memo.get("cells", ())), dict(os.environ)))
    child.start()
    send.close()  # the child holds the only writer: its death ends recv() with EOFError
    out = None
    try:
        try:
            out = recv.recv()
        except EOFError:
            pass
        child.join()
    except BaseException:  # second Ctrl-C: stop the cell now
        child.kill()
        child.join()
        raise
    finally:
        recv.close()
    if out is not None:
        return out
    code = child.exitcode
    if code is not None and code < 0:
        sig = signal.Signals(-code)
        if sig == signal.SIGKILL:
            return Outcome("oom", error="the cell's child process was killed by SIGKILL before it finished "
                                        "(most likely the OS out-of-memory killer)")
        return Outcome("error", error=f"the cell's child process died of {sig.name}")
    return Outcome("error", error=f"the cell's child process exited with code {code} without a result")


def _child(conn, spec, task, device: str, progress: bool, threads: int, cells: list, environ: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    torch.set_num_threads(threads)

    ctx = Context(device=torch.device(device), progress=progress)
    ctx.memo["cells"] = cells
    rss0 = peak_rss_mb()
    out = attempt(spec, ctx, task)
    if out.status == "ok" and out.memory.get("memory_kind", "").startswith("cpu"):
        out.memory.update(memory_kind="cpu_peak_rss_isolated_cell", rss_at_cell_start_mb=rss0)
    try:
        conn.send(out)
    except Exception as e:  # an unpicklable result
        conn.send(Outcome("error", error=f"could not send the cell's result to the parent: {type(e).__name__}: {e}"))
    conn.close()
