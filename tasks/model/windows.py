"""One cache design for window outputs, in every task.

A window's output (a pooled vector in clf's probe, hidden states in NER's probe, start/end logits
in QA) depends only on (data, model, compute dtype, what is kept) and the window, never on the
strategy or budget that asked for it: every strategy and budget of a sweep shares one
``WindowCache``, so a window is run once. Keys are ``(part, document id, window)``, where ``part``
is a split or a context size and ``window`` a tuple of ``(start, end)`` spans. Rows are
``(output, seconds, padded width)``, filled from ``forward_batched``. The cache lives for the
process; with a ``path`` (tensor outputs of one shape) it is also kept on disk, written atomically
with its key and a checksum, so a stale, truncated or damaged file is reported and rebuilt, never used.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ctxbench.tasks.cache import atomic_write_checked, read_checked


def _to_list(k: Any) -> Any:
    return [_to_list(x) for x in k] if isinstance(k, (tuple, list)) else k


def _from_list(k: Any) -> Any:
    return tuple(_from_list(x) for x in k) if isinstance(k, list) else k


class WindowCache:
    def __init__(self, path: str | Path | None = None, key: str | None = None):
        self.path = Path(path) if path is not None else None
        self.key = key or (self.path.stem if self.path is not None else "")
        self.rows: dict[tuple, tuple[Any, float, int]] = {}
        self.dirty = False
        self.loaded_from_disk = 0
        self.rebuilt: str | None = None
        if self.path is not None and self.path.exists():
            try:
                blob = torch.load(io.BytesIO(read_checked(self.path, self.key)), weights_only=True)
                n = len(blob["keys"])
                if not (len(blob["vectors"]) == len(blob["seconds"]) == len(blob["padded"]) == n):
                    raise ValueError(f"inconsistent lengths ({n} keys)")
                for k, v, s, p in zip(blob["keys"], blob["vectors"], blob["seconds"], blob["padded"]):
                    self.rows[_from_list(k)] = (v, float(s), int(p))
                self.loaded_from_disk = len(self.rows)
            except Exception as e:  # stale, corrupt or incompatible: rebuild
                warnings.warn(f"window cache {self.path} not used ({e}); rebuilding", stacklevel=2)
                self.rows, self.rebuilt = {}, str(e)

    def __contains__(self, key: tuple) -> bool:
        return key in self.rows

    def output(self, key: tuple) -> Any:
        return self.rows[key][0]

    def seconds(self, key: tuple) -> float:
        return self.rows[key][1]

    def width(self, key: tuple) -> int:
        return self.rows[key][2]

    def missing(self, keys: Iterable[tuple]) -> list[tuple]:
        """The distinct keys not cached yet, in first-seen order."""
        return [k for k in dict.fromkeys(keys) if k not in self.rows]

    def fill(self, keys: list[tuple], outputs: Sequence[Any], seconds: Sequence[float], widths: Sequence[int]) -> int:
        """Store the outputs of ``keys`` (what ``forward_batched`` returned for their inputs)."""
        for k, out, s, w in zip(keys, outputs, seconds, widths, strict=True):
            self.rows[k] = (out.clone() if isinstance(out, torch.Tensor) else out, s, w)
        self.dirty = self.dirty or bool(keys)
        return len(keys)

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        keys = list(self.rows)
        buf = io.BytesIO()
        torch.save({
            "keys": [_to_list(k) for k in keys],
            "vectors": torch.stack([self.rows[k][0] for k in keys]),
            "seconds": torch.tensor([self.rows[k][1] for k in keys], dtype=torch.float64),
            "padded": torch.tensor([self.rows[k][2] for k in keys], dtype=torch.long),
        }, buf)
        atomic_write_checked(self.path, buf.getvalue(), self.key)
        self.dirty = False


__all__ = ["WindowCache"]
