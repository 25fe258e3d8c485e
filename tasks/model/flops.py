"""Model FLOPs for real tokens, and the device's measured matmul peak.

Why: a tokens/s number alone does not say whether a strategy is slow because it
does more work or because it uses the device badly. Dividing the FLOPs of the
real (non-padding) tokens by the wall time, as a share of a matmul rate measured
in the same process and dtype, gives "utilisation %": padding, tiny batches and
Python overhead show up as a low share.

FLOPs of one forward pass over a sequence of ``L`` real tokens (special tokens
count, padding does not), for an encoder with ``n_layers`` layers of width
``d`` and feed-forward width ``ff``::

    forward(L) = 2 * N * L  +  4 * n_layers * L**2 * d
    N          = n_layers * (4 * d**2 + 2 * d * ff)   # non-embedding matmul weights

``2 * N * L`` is the multiply-add of every token through every weight matrix
(Q, K, V, output projection: ``4 d**2``; feed-forward in and out: ``2 d ff``),
as in Kaplan et al. (2020). Embeddings are lookups and biases, LayerNorm,
softmax and GELU are not matmuls, so they are left out (a few % for BERT-sized
models). ``4 * n_layers * L**2 * d`` is the attention itself: ``Q K^T`` and
``A V`` are ``2 * L**2 * d`` each per layer. A training step (forward +
backward) counts ``3 * forward``. Padding FLOPs are not counted, so padding
shows up as lost utilisation, not as work.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class Shape:
    """The encoder dimensions the FLOP formula needs."""

    n_layers: int
    d: int
    ff: int

    @property
    def matmul_params(self) -> int:
        """Non-embedding matmul weights ``N``."""
        return self.n_layers * (4 * self.d * self.d + 2 * self.d * self.ff)


def shape_of(config: Any) -> Shape:
    """Read layers / hidden / intermediate sizes off a Hugging Face config (BERT-style names)."""
    d = int(config.hidden_size)
    ff = int(getattr(config, "intermediate_size", None) or 4 * d)
    return Shape(int(config.num_hidden_layers), d, ff)


def forward_flops(config: Any, lengths: Sequence[int]) -> float:
    """FLOPs of one forward pass over sequences of the given real lengths (see module docstring)."""
    s = shape_of(config)
    n = s.matmul_params
    return float(sum(2 * n * L + 4 * s.n_layers * L * L * s.d for L in lengths))


def train_step_flops(config: Any, lengths: Sequence[int]) -> float:
    """Forward + backward: the usual 3x forward."""
    return 3.0 * forward_flops(config, lengths)


def default_matmul_size(device: torch.device) -> int:
    """Large enough to reach the device's matmul peak, small enough to sample often."""
    return 8192 if device.type == "cuda" else 1024


class Calibrator:
    """Measures the device's matmul rate (GFLOP/s) with preallocated square operands.

    Why preallocated and cheap: the perf suite samples it right before every
    timed round, so a speed change of a shared machine (another job starting,
    clock throttling) moves the calibration and the benchmark together, and
    perf-check can compare ratios measured side by side instead of absolute times.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype | None = None, n: int | None = None,
                 reps: int | None = None) -> None:
        from ctxbench.tasks.model.encoder import compute_dtype

        self.device = device
        self.dtype = dtype or compute_dtype(device)  # the dtype the model's matmuls run in
        self.n = n or default_matmul_size(device)
        # CUDA: several matmuls per sample so one sample is milliseconds, not microseconds
        self.reps = reps or (5 if device.type == "cuda" else 1)
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(self.n, self.n, generator=g).to(device=device, dtype=self.dtype)
        self.b = torch.randn(self.n, self.n, generator=g).to(device=device, dtype=self.dtype)
        self.samples: list[float] = []

    @property
    def flops_per_sample(self) -> float:
        return 2.0 * self.n**3 * self.reps

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def sample(self) -> float:
        """One timed sample (synchronised on CUDA); returns and records GFLOP/s."""
        self._sync()
        t0 = time.perf_counter()
        for _ in range(self.reps):
            self.a @ self.b
        self._sync()
        rate = self.flops_per_sample / (time.perf_counter() - t0) / 1e9
        self.samples.append(rate)
        return rate

    def measure(self, samples: int = 7, warmup: int = 2) -> float:
        """Median GFLOP/s of ``samples`` after ``warmup`` untimed ones."""
        for _ in range(warmup):
            self.a @ self.b
        self._sync()
        return statistics.median(self.sample() for _ in range(samples))

    def autorange(self, min_run_time: float = 1.0) -> float:
        """Median GFLOP/s via ``torch.utils.benchmark`` (handles CUDA sync and thread pinning)."""
        from torch.utils.benchmark import Timer

        timer = Timer("a @ b", globals={"a": self.a, "b": self.b}, num_threads=torch.get_num_threads())
        m = timer.blocked_autorange(min_run_time=min_run_time)
        return 2.0 * self.n**3 / m.median / 1e9

    def record(self, gflops: float, method: str) -> dict[str, Any]:
        return {"gflops": gflops, "n": self.n, "dtype": str(self.dtype).replace("torch.", ""),
                "device": self.device.type, "method": method, "threads": torch.get_num_threads()}


def calibrate(device: torch.device, min_run_time: float = 1.0) -> dict[str, Any]:
    """The session calibration: a ``torch.utils.benchmark`` median of a large matmul."""
    cal = Calibrator(device)
    cal.measure(samples=1, warmup=2)
    gflops = cal.autorange(min_run_time)
    return cal.record(gflops, f"torch.utils.benchmark blocked_autorange median, {cal.n}x{cal.n} matmul")


def utilisation(flops: float, seconds: float, peak_gflops: float) -> float:
    """Share (0..1) of the measured matmul peak that the real-token FLOPs achieved."""
    if seconds <= 0 or peak_gflops <= 0:
        return float("nan")
    return flops / seconds / (peak_gflops * 1e9)


__all__ = ["Calibrator", "Shape", "calibrate", "forward_flops", "shape_of", "train_step_flops",
           "utilisation"]
