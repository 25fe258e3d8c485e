"""One cell of the grid: its record (run_id, spec, environment, status, metrics and
measurements) and predictions, with out-of-memory retries at halved batch sizes."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
from typing import Any

import torch
from tqdm.auto import tqdm

from ctxbench.bench.config import RunSpec
from ctxbench.bench.results import SCHEMA_VERSION, run_id
from ctxbench.bench.run.attempt import attempt
from ctxbench.bench.run.isolate import run_isolated
from ctxbench.tasks import Context
from ctxbench.tasks.model.encoder import compute_dtype_name


def spec_record(spec: RunSpec, task) -> dict[str, Any]:
    return {**spec.to_dict(), "task_version": task.version}


def cell_label(spec: RunSpec) -> str:
    return f"{spec.task}/{spec.strategy.label}/b={spec.budget}/seed={spec.seed}/{spec.mode}"


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
    return {**base, "status": "ok", "budget": res.info.get("budget", spec.budget), "metrics": res.metrics,
            "measurements": measurements, "info": res.info}, res.predictions


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


__all__ = ["batch_sizes", "cell_label", "determinism_record", "halve_batch", "make_deterministic",
           "run_cell", "spec_record"]
