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


# ---------------------------------------------------------------- checked cache files
#
# A cache file is one header line, ``ctxbench-cache v1 <key> <sha256 of payload>``, then the payload.
# ``key`` is the content hash of everything the entry was built from; a reader passes the key it
# expects, so a stale entry (other inputs), a truncated or bit-flipped one (checksum) and a file
# from another format (header) are all refused with the reason, and the caller rebuilds it.

CACHE_MAGIC = b"ctxbench-cache v1"


class CacheError(ValueError):
    """A cache entry that must not be used (missing, stale, corrupt)."""


def atomic_write_checked(path: str | os.PathLike, payload: bytes, key: str) -> None:
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"cache key must be a non-empty token, got {key!r}")
    header = b" ".join([CACHE_MAGIC, key.encode(), hashlib.sha256(payload).hexdigest().encode()]) + b"\n"
    atomic_write_bytes(path, header + payload)


def read_checked(path: str | os.PathLike, key: str) -> bytes:
    """The payload, if the file holds a whole entry built for ``key``; else CacheError."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CacheError(f"unreadable ({e})") from None
    head, sep, payload = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 4 or b" ".join(parts[:2]) != CACHE_MAGIC:
        raise CacheError("not a ctxbench cache file (old format or overwritten)")
    if parts[2].decode(errors="replace") != key:
        raise CacheError(f"stale: built for inputs {parts[2].decode(errors='replace')}, expected {key}")
    if hashlib.sha256(payload).hexdigest().encode() != parts[3]:
        raise CacheError("corrupt: checksum mismatch (truncated or damaged)")
    return payload


def cached_id_lists(path: str | os.PathLike, key: str, make: Any) -> tuple[list[list[int]], str]:
    """Token-id lists cached at ``path`` for ``key``: (ids, how) with how = "hit", "built"
    or "rebuilt: <reason>" (a stale or corrupt entry is reported, never used)."""
    import warnings

    import numpy as np

    how = "built"
    if Path(path).exists():
        try:
            with np.load(io.BytesIO(read_checked(path, key)), allow_pickle=False) as z:
                flat, offsets = z["flat"], z["offsets"]
            if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(flat) \
                    or (np.diff(offsets) < 0).any():
                raise CacheError("corrupt: inconsistent offsets")
            return [flat[a:b].tolist() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())], "hit"
        except (CacheError, ValueError, KeyError, OSError) as e:
            warnings.warn(f"token cache {path}: {e}; rebuilding", stacklevel=2)
            how = f"rebuilt: {e}"
    ids = make()
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in ids])
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(offsets[-1]))
    buf = io.BytesIO()
    np.savez(buf, flat=flat, offsets=offsets)
    atomic_write_checked(path, buf.getvalue(), key)
    return ids, how
