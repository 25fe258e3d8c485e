"""The cache directory, content hashes and atomic writes.

Every cache (packaged data, tokenized datasets, span embeddings) lives under one
directory: ``$CTXBENCH_CACHE`` if set, else ``~/.cache/ctxbench``. ``results/``
holds only generated outputs meant to be committed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "CTXBENCH_CACHE"


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ctxbench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(*objs: Any, n: int = 16) -> str:
    h = hashlib.sha256()
    for o in objs:
        h.update(o if isinstance(o, bytes) else canonical(o).encode())
        h.update(b"\0")
    return h.hexdigest()[:n]


def file_hash(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write-then-rename, so a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; caches may be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
