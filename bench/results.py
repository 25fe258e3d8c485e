"""The results store: one JSON line per run, a sidecar of per-example predictions.

Appends are a single ``write`` of a whole line followed by flush + fsync, so a
crash leaves at most a torn last line, which readers detect, report and skip.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

from .store import canonical, content_hash

SCHEMA_VERSION = 1


def run_id(spec: dict[str, Any]) -> str:
    """sha256 of the canonical spec (the task version is part of the spec)."""
    import hashlib

    return hashlib.sha256(canonical(spec).encode()).hexdigest()


def append_line(path: str | os.PathLike, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _heal_torn_tail(fd, path)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _heal_torn_tail(fd: int, path: Path) -> None:
    """If the file does not end in a newline (a crash mid-write), end the torn line
    so the next record starts on its own line; readers skip the torn one."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) != b"\n":
            os.write(fd, b"\n")


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def read_jsonl(path: str | os.PathLike, report: bool = True) -> list[dict[str, Any]]:
    """Parse every whole line; torn or corrupt lines are reported and skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows, bad = [], []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("no newline (torn write)")
                rows.append(json.loads(raw))
            except ValueError:
                bad.append(i)
    if bad and report:
        warnings.warn(f"{path}: ignored {len(bad)} torn or corrupt line(s): {bad[:10]}", stacklevel=2)
    return rows


def done_ids(path: str | os.PathLike, statuses: Iterable[str] = ("ok",)) -> set[str]:
    keep = set(statuses)
    return {r["run_id"] for r in read_jsonl(path, report=False) if r.get("status", "ok") in keep and "run_id" in r}


def results_dir(root: str | os.PathLike, task: str) -> Path:
    return Path(root) / task


def sidecar_path(root: str | os.PathLike, task: str, rid: str) -> Path:
    return results_dir(root, task) / "predictions" / f"{rid[:16]}.jsonl"


def write_sidecar(path: Path, rows: list[dict[str, Any]]) -> str:
    """Per-example predictions, written atomically; returns the content hash recorded in the run line."""
    from .store import atomic_write_text

    text = "".join(json.dumps(r, sort_keys=True, default=_default) + "\n" for r in rows)
    atomic_write_text(path, text)
    return content_hash(text.encode())
