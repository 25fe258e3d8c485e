"""Model FLOPs counted by torch, and the device's measured matmul rate.

Why: a tokens/s number alone does not say whether a strategy is slow because it does more work or
because it uses the device badly. FLOPs of the real (non-padding) tokens over the wall time, as a
share of a matmul rate measured in the same process and dtype, gives "utilisation": padding, tiny
batches and Python overhead show up as a low share.

FLOPs are counted, not derived: ``torch.utils.flop_counter.FlopCounterMode`` around the real
forward (and backward, for a training step) on one input of each distinct real length, cached per
(model, length). So any architecture is right (SwiGLU's three matrices, grouped-query K/V, relative
attention), and padding is not work: it shows up as lost utilisation.
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any, Callable, Sequence

import torch

from ctxbench.tasks.model.encoder import autocast, compute_dtype

_COUNTED: dict[Any, float] = {}
_CPU_SDPA: list[bool] = []


def _count_cpu_attention() -> None:
    """torch's counter knows the CUDA attention kernels but not the CPU one that SDPA dispatches to
    (``_scaled_dot_product_flash_attention_for_cpu``): without this, attention FLOPs read 0 on CPU.
    Registered once, with torch's own SDPA formulas, the first time FLOPs are counted."""
    if _CPU_SDPA:
        return
    _CPU_SDPA.append(True)
    from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    fwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        @register_flop_formula(fwd, get_raw=True)
        def _fwd(query, key, value, *args, out_val=None, **kwargs) -> int:
            return sdpa_flop_count(query.shape, key.shape, value.shape)
    if bwd is not None:
        @register_flop_formula(bwd, get_raw=True)
        def _bwd(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def counted(fn: Callable[[], Any], key: Any) -> float:
    """FLOPs torch counts while ``fn`` runs, cached under ``key``."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_attention()
    if key not in _COUNTED:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        _COUNTED[key] = float(counter.get_total_flops())
    return _COUNTED[key]


def count_forward(forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], Any], length: int,
                  device: torch.device, key: Any, module: torch.nn.Module | None = None, precision: str = "auto",
                  with_types: bool = False) -> float:
    """FLOPs of one inference ``forward(ids, mask, types)`` over one input of ``length`` real tokens,
    cached under (``key``, length). ``module``'s parameters are frozen meanwhile: the counter's module
    tracker hooks every input that requires grad, and a trainable parameter passed as a module input
    (DistilBERT + LoRA) breaks it."""
    def fn() -> None:
        ids = torch.full((1, length), 5, dtype=torch.long, device=device)
        params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.inference_mode(), autocast(device, precision):
                forward(ids, torch.ones_like(ids), torch.zeros_like(ids) if with_types else None)
        finally:
            for p in params:
                p.requires_grad_(True)

    return counted(fn, (key, length, with_types, precision))


def architecture_key(model: torch.nn.Module) -> Any:
    """What a model's FLOPs depend on: its class and config (an ``id()`` can be reused by a later model)."""
    config = getattr(model, "config", None)
    return (type(model).__qualname__, config.to_json_string() if config is not None else id(model))


def forward_flops(model: torch.nn.Module, lengths: Sequence[int], device: torch.device, key: Any = None,
                  backward: bool = False) -> float:
    """Counted FLOPs of ``model`` (``input_ids``/``attention_mask`` -> ``last_hidden_state``) over
    inputs of the given real lengths; ``backward``: forward + backward (a training step's matmuls)."""
    key = key if key is not None else architecture_key(model)
    total = 0.0
    for length, n in Counter(int(x) for x in lengths).items():
        if not backward:
            total += n * count_forward(lambda ids, mask, types: model(input_ids=ids, attention_mask=mask), length,
                                       device, key, module=model, precision="float32")
            continue

        def fn(length=length) -> None:
            ids = torch.full((1, length), 5, dtype=torch.long, device=device)
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            out.float().sum().backward()
            model.zero_grad(set_to_none=True)

        total += n * counted(fn, (key, length, backward))
    return total


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


__all__ = ["Calibrator", "architecture_key", "calibrate", "count_forward", "counted", "forward_flops",
           "utilisation"]
