"""The task-adapter contract and registry.

A task adapter is metadata plus a few functions: ``name``, ``version`` (bump it
when preprocessing changes: it is part of every run_id), ``main_metric``,
``higher_is_better``, optionally ``shared_training`` (True where one trained model serves every
strategy of a grid, as QA's: its steps are equal by construction), ``data_label(spec)`` (e.g. "silver") and
``run(spec, ctx) -> CellResult``. The runner owns the grid, run ids, resume,
measurement of memory and wall time, and the results store; the adapter loads
its data (cached), turns strategy windows into model inputs, folds window
outputs back into one prediction per example and scores them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np
import torch

from ctxbench.strategies import ConfigError, did_you_mean

LENGTH_BUCKETS = ("<=b", "b-2b", "2b-4b", ">4b")


def length_bucket(n: int, budget: int) -> str:
    """Bucket a document by its length relative to the budget."""
    if n <= budget:
        return "<=b"
    if n <= 2 * budget:
        return "b-2b"
    if n <= 4 * budget:
        return "2b-4b"
    return ">4b"


def covered(ws: Sequence[Sequence[tuple[int, int]]]) -> int:
    """Distinct document tokens a document's windows saw (overlaps counted once)."""
    spans = sorted(s for w in ws for s in w)
    total, end = 0, 0
    for s, e in spans:
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def cost_measures(input_lengths: Sequence[Sequence[int]], doc_tokens: Sequence[int], head_tokens: Sequence[int],
                  seen_tokens: Sequence[int], per_doc_s: np.ndarray, padded: int, config: Any = None) -> dict[str, Any]:
    """The cost fields every task records, one definition for all. ``input_lengths[d]``: the real
    length (special and question tokens included, padding not) of each model input document d
    made; ``head_tokens[d]``: what ``head`` at the same budget would feed; ``seen_tokens[d]``:
    distinct document tokens its windows covered. ``per_doc_s`` are grid-pass times (in probe mode a
    cached window's token share of the batch it was first encoded in): ``docs_per_s``, ``tokens_per_s``
    and ``latency_p50_ms`` here are that estimate; the strategy's measured cost, FLOPs and utilisation
    are the runner's cost pass (tasks/model/cost.py, ``measurements.cost``). ``config`` is unused (kept
    for callers)."""
    tokens = np.array([sum(x) for x in input_lengths], dtype=float)
    total = float(np.sum(per_doc_s))
    docs = len(input_lengths)
    out = {
        "docs": int(docs),
        "docs_per_s": docs / max(total, 1e-12),
        "tokens_per_s": float(tokens.sum()) / max(total, 1e-12),
        "real_tokens": int(tokens.sum()),
        "padded_tokens": int(padded),
        "padding_waste": 1.0 - float(tokens.sum()) / max(1, padded),
        "latency_p50_ms": float(np.percentile(per_doc_s, 50) * 1e3) if docs else 0.0,
        "latency_p95_ms": float(np.percentile(per_doc_s, 95) * 1e3) if docs else 0.0,
        "windows_per_doc": float(np.mean([len(x) for x in input_lengths])) if docs else 0.0,
        "compute_multiplier": float(tokens.sum() / max(1, float(np.sum(head_tokens)))),
        "coverage": float(np.sum(seen_tokens) / max(1, float(np.sum(doc_tokens)))),
        "inference_seconds": total,
        "timing_kind": "grid estimate (token share of batch time); measured cost: measurements.cost",
    }
    return out


@dataclass
class Context:
    """What persists across the cells of one process: device, loaded models,
    tokenized data and span caches, keyed by whatever the task needs."""

    device: torch.device
    progress: bool = True
    memo: dict[Any, Any] = field(default_factory=dict)

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass
class CellResult:
    metrics: dict[str, Any]
    measurements: dict[str, Any]
    predictions: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)  # budget actually used, attention impl, dtype, counts
    cost: Any = None  # a tasks.model.cost.CostProbe: the runner times the strategy alone on it


@dataclass
class GridReport:
    """What a task says about a whole grid after it ran (optional ``summary(ctx)``): lines for the
    terminal, and rows for files of the results folder, ``{file name: (rows, key)}``. The runner
    writes them (tasks never touch the results store): a row replaces the stored row of the same
    ``key(row)``, and other rows are kept."""

    lines: list[str] = field(default_factory=list)
    records: dict[str, tuple[list[dict[str, Any]], Callable[[dict[str, Any]], str]]] = field(default_factory=dict)


class Task(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    main_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def data_label(self, spec: Any) -> str: ...

    def run(self, spec: Any, ctx: Context) -> CellResult: ...


_TASKS: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in _TASKS:
            raise ValueError(f"task {name!r} already registered")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return deco


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise did_you_mean(name, list(_TASKS), "task")
    return _TASKS[name]()


def task_names() -> list[str]:
    return sorted(_TASKS)


__all__ = ["CellResult", "ConfigError", "Context", "GridReport", "LENGTH_BUCKETS", "Task", "cost_measures",
           "covered", "get_task",
           "length_bucket",
           "register_task", "task_names"]
