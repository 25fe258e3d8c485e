"""The results store: one JSON line per run, a sidecar of per-example predictions.

Appends are a single ``write`` of a whole line (``O_APPEND``) followed by
fsync, so a crash leaves at most a torn last line, which readers detect, report
and skip (a strict prefix of one JSON object never parses) and the next append
ends on its own line. A run is committed under an exclusive lock on
``runs.jsonl.lock``: check that no ``ok`` line holds its run_id, write the
sidecar (write-then-rename), then append the line. So a sidecar always exists
before its line, a sidecar orphaned by a crash is overwritten by the rerun, and
two processes sharing one results folder never record one run_id twice as ok.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from ctxbench.tasks.cache import atomic_write_text, canonical, content_hash
from ctxbench.tasks import cache as store

SCHEMA_VERSION = 1
RUNS_FILE = "runs.jsonl"


def run_id(spec: dict[str, Any]) -> str:
    """sha256 of the canonical spec (the task version is part of the spec)."""
    import hashlib

    return hashlib.sha256(canonical(spec).encode()).hexdigest()


def _write_line(fd: int, data: bytes) -> None:
    """One ``write`` of the whole line; loops only if the kernel took part of it
    (a signal or a full disk), which is safe because appends hold the lock."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_line(path: str | os.PathLike, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True, default=_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _heal_torn_tail(fd, path)
        _write_line(fd, line)
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
            _write_line(fd, b"\n")


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def scan_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[int]]:
    """Every whole line that parses to a JSON object, and the numbers of the lines that
    did not (torn by a crash, corrupt, or not an object)."""
    path = Path(path)
    if not path.exists():
        return [], []
    rows, bad = [], []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                if not raw.endswith(b"\n"):
                    raise ValueError("no newline (torn write)")
                row = json.loads(raw)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                bad.append(i)
                continue
            rows.append(row)
    return rows, bad


def read_jsonl(path: str | os.PathLike, report: bool = True) -> list[dict[str, Any]]:
    """Parse every whole line; torn or corrupt lines are reported and skipped."""
    rows, bad = scan_jsonl(path)
    if bad and report:
        warnings.warn(f"{path}: ignored {len(bad)} torn or corrupt line(s): {bad[:10]}", stacklevel=2)
    return rows


def done_ids(path: str | os.PathLike, statuses: Iterable[str] = ("ok",)) -> set[str]:
    keep = set(statuses)
    return {r["run_id"] for r in read_jsonl(path, report=False) if r.get("status", "ok") in keep and "run_id" in r}


def results_dir(root: str | os.PathLike, task: str) -> Path:
    return Path(root) / task


def runs_path(root: str | os.PathLike, task: str) -> Path:
    return results_dir(root, task) / RUNS_FILE


GZIP_OVER = 64 * 1024  # a sidecar larger than this as text is stored gzipped (.jsonl.gz, deterministic bytes)


def sidecar_path(root: str | os.PathLike, task: str, rid: str, gz: bool = False) -> Path:
    return results_dir(root, task) / "predictions" / f"{rid[:16]}.jsonl{'.gz' if gz else ''}"


def sidecar_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True, default=_default) + "\n" for r in rows)


def sidecar_bytes(rows: list[dict[str, Any]]) -> tuple[bytes, bool]:
    """The sidecar as stored, and whether it is gzipped (text over GZIP_OVER bytes: a study's 765-document
    sidecars shrink about tenfold; mtime 0, so the same rows always give the same bytes and hash)."""
    import gzip

    data = sidecar_text(rows).encode()
    if len(data) <= GZIP_OVER:
        return data, False
    return gzip.compress(data, compresslevel=9, mtime=0), True


def sidecar_rows(path: Path, data: bytes | None = None) -> list[dict[str, Any]]:
    """The rows of a stored sidecar (plain or gzipped JSON lines)."""
    import gzip

    data = path.read_bytes() if data is None else data
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def write_sidecar(path: Path, rows: list[dict[str, Any]]) -> str:
    """Per-example predictions, written atomically (plain text: ``sidecar_bytes`` decides gzip in
    ``commit_run``); returns the content hash of the stored bytes, recorded in the run line."""
    text = sidecar_text(rows)
    store.atomic_write_text(path, text)
    return content_hash(text.encode())


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: single-writer only
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def commit_run(root: str | os.PathLike, task: str, record: dict[str, Any], predictions: list[dict[str, Any]],
               replace: bool = False) -> bool:
    """Record one run: sidecar first (ok runs), then the line, under the lock.

    Returns False (and writes nothing) when an ok line for the run_id is already
    there, e.g. written by another process sharing the results folder. ``replace``
    (``--rerun``): an ok record takes the place of every earlier line of its run_id;
    a failed one is not written over an ok line, so a failed rerun loses nothing.
    """
    path = runs_path(root, task)
    with locked(path):
        recorded = record["run_id"] in done_ids(path)
        if recorded and not (replace and record.get("status") == "ok"):
            return False
        if record.get("status") == "ok":
            data, gz = sidecar_bytes(predictions)
            side = sidecar_path(root, task, record["run_id"], gz)
            store.atomic_write_bytes(side, data)
            record["predictions_file"] = str(side.relative_to(results_dir(root, task)))
            record["predictions_sha"] = content_hash(data)
        if replace and path.exists():
            _drop_lines(path, record["run_id"])
        append_line(path, record)
    return True


def _drop_lines(path: Path, rid: str) -> None:
    """Rewrite ``path`` without the lines of run ``rid`` (atomically; other lines, torn ones too, kept as they are)."""
    def ours(line: str) -> bool:
        try:
            return json.loads(line).get("run_id") == rid
        except (ValueError, AttributeError):
            return False

    lines = path.read_text().splitlines(keepends=True)
    keep = [line for line in lines if not ours(line)]
    if len(keep) < len(lines):
        atomic_write_text(path, "".join(keep))


def check_store(root: str | os.PathLike, task: str) -> dict[str, list]:
    """What a reader would trip over: torn lines, run_ids recorded ok more than once,
    and ok runs whose sidecar is missing or differs from its ``predictions_sha``."""
    path = runs_path(root, task)
    rows, bad = scan_jsonl(path)
    seen: dict[str, int] = {}
    dup, missing, mismatch = [], [], []
    for r in rows:
        if r.get("status", "ok") != "ok" or "run_id" not in r:
            continue
        seen[r["run_id"]] = seen.get(r["run_id"], 0) + 1
        if seen[r["run_id"]] == 2:
            dup.append(r["run_id"])
        rel = r.get("predictions_file")
        if not rel:
            continue
        side = results_dir(root, task) / rel
        if not side.exists():
            missing.append(r["run_id"])
        elif content_hash(side.read_bytes()) != r.get("predictions_sha"):
            mismatch.append(r["run_id"])
    return {"torn_lines": bad, "duplicate_ok": dup, "missing_sidecar": missing, "sidecar_mismatch": mismatch}


def merge_records(path: str | Path, rows: list[dict], key) -> None:
    """Write ``rows`` into the JSON list at ``path``: a row replaces the stored one of the same
    ``key(row)``; the others stay (another sweep's rows are never overwritten)."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.exists() else []
    new = {key(r) for r in rows}
    atomic_write_text(path, json.dumps([r for r in old if key(r) not in new] + rows, indent=1) + "\n")
