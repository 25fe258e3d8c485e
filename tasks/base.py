"""The task-adapter contract and registry.

A task adapter is metadata plus a few functions: ``name``, ``version`` (bump it
when preprocessing changes: it is part of every run_id), ``main_metric``,
``higher_is_better``, ``data_label(spec)`` (e.g. "silver") and
``run(spec, ctx) -> CellResult``. The runner owns the grid, run ids, resume,
measurement of memory and wall time, and the results store; the adapter loads
its data (cached), turns strategy windows into model inputs, folds window
outputs back into one prediction per example and scores them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

import torch

from strategies import ConfigError, did_you_mean

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


__all__ = ["CellResult", "ConfigError", "Context", "LENGTH_BUCKETS", "Task", "get_task", "length_bucket",
           "register_task", "task_names"]
