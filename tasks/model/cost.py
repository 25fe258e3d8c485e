"""A cell's cost, measured for its strategy alone.

The metric of a cell comes from the shared window cache (a window is encoded once per grid); its
cost must not: a cached window's time is a token share of whatever batch it was first encoded in.
So every task hands :func:`measure_cost` a :class:`CostProbe` (its inference ``forward`` and, per
document of a fixed cost sample, the model inputs its strategy makes), and the pass is timed here:

* **throughput**: the whole sample through the one batched path (tasks/model/encoder.forward_batched)
  at the sweep's batch size; one warm-up pass, then the median of ``repeats`` timed passes (CUDA
  synchronised): documents/s and real tokens/s;
* **latency at batch size 1**: each sample document alone (its windows in one call), p50 / p95;
* **the strategy's own document work** (``CostProbe.prepare``: sentence splitting and selection, for the
  strategies that choose sentences): timed in each repeat right before its pass and per document before its
  batch-1 forward, so documents/s and latency are the whole cost of a document (``cost_select_seconds_median``
  says how much of it is selection); tokens/s, FLOPs and utilisation stay the model's;
* **FLOPs**: counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real forward at each
  distinct real input length (cached per shape), so any architecture (SwiGLU, grouped-query K/V) is
  right and padding is not work;
* **utilisation**: those FLOPs over the median pass time, as a share of a matmul rate sampled right
  before each timed pass (interleaved with it, same dtype). Above 100% it is a measurement error: the
  value is kept as ``utilisation_measured`` and ``utilisation`` is None;
* **memory of this pass alone**: CUDA: peak allocated after a reset (absolute and above the loaded
  model); CPU: a child process forked with the model loaded runs only one pass (on one thread: a fork
  inherits an OpenMP pool it cannot use, see ``child_pass_memory``): it returns freed heap
  to the system (``malloc_trim``), notes its RSS, resets its resident high-water mark
  (``/proc/self/clear_refs``), runs the pass and reports the peak (absolute) and the peak minus that RSS
  (the pass's activation memory). The parent's history never enters it, and its own high-water mark is
  untouched. Where ``fork`` is missing, the same reset runs in process (``cost_memory_kind`` says which).

Cost depends on (model, strategy, budget, precision, device, mode), not on the seed: the runner
measures it once per such key and records it in every seed's run.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ctxbench.tasks.model.encoder import compute_dtype, forward_batched, sync
from ctxbench.tasks.model.flops import Calibrator, count_forward
from ctxbench.tasks.model.measure import current_rss_mb, reset_rss_peak, rss_peak_mb

Forward = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], Any]


@dataclass
class CostProbe:
    """What a task hands the runner to time: ``inputs[d]`` the model inputs (token ids, special tokens
    included) its strategy makes for cost-sample document ``d``; ``types`` their token types (QA pairs)."""

    forward: Forward
    inputs: list[list[list[int]]]
    pad_id: int
    key: tuple  # what the cost depends on besides the cell's (model, strategy, budget, precision, device)
    types: list[list[list[int]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    module: torch.nn.Module | None = None  # the model ``forward`` runs: frozen while its FLOPs are counted
    # the strategy's own work on cost-sample document d before the model sees it (sentence splitting and
    # selection), None where choosing windows is arithmetic on the length (head, sliding ...)
    prepare: Callable[[int], Any] | None = None


def cost_sample(n_docs: int, size: int, seed: int = 0) -> list[int]:
    """The same documents for every cell of a grid: ``size`` test indices drawn once with ``seed``."""
    if size >= n_docs:
        return list(range(n_docs))
    return sorted(np.random.default_rng(seed).choice(n_docs, size=size, replace=False).tolist())


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PassMemory:
    """Peak memory of the block alone (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.out: dict[str, Any] = {}

    def __enter__(self) -> "PassMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _malloc_trim()
        self.base = current_rss_mb()
        self.reset = reset_rss_peak()  # VmHWM back to the current RSS
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.out = {"cost_peak_mb": peak / 2**20, "cost_activation_mb": (peak - self.base) / 2**20,
                        "cost_memory_kind": "cuda max allocated after a reset, and above the loaded model"}
            return
        if not self.reset or self.base is None:
            self.out = {"cost_peak_mb": None, "cost_activation_mb": None,
                        "cost_memory_kind": "unavailable: no /proc/self/clear_refs to reset the RSS high-water mark"}
            return
        peak = rss_peak_mb()
        self.out = {"cost_peak_mb": peak, "cost_activation_mb": peak - self.base,
                    "cost_memory_kind": "cpu resident high-water mark reset before the pass, and above the RSS then"}


def child_pass_memory(run: Callable[[], None], timeout_s: float = 900.0) -> dict[str, Any]:
    """CPU: ``run`` once in a forked child; its peak RSS and the rise above its RSS before the pass.
    The child runs on one thread: a child forked from a process whose OpenMP pool has run deadlocks
    in its first parallel region (seen here, torch 2.13), and a pass's memory does not depend on its
    thread count beyond small per-thread scratch buffers."""
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/clear_refs"):
        with PassMemory(torch.device("cpu")) as mem:
            run()
        return {**mem.out, "cost_memory_kind": mem.out["cost_memory_kind"] + " (in process: no fork or no "
                                                                              "/proc/self/clear_refs here)"}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this pass, then out without running the parent's exit handlers
        code = 0
        try:
            os.close(r)
            torch.set_num_threads(1)  # before any parallel region: the inherited pool is not usable
            _malloc_trim()
            base = current_rss_mb()
            ok = reset_rss_peak()
            with torch.inference_mode():
                run()
            peak = rss_peak_mb()
            out = {"cost_peak_mb": peak if ok else None, "cost_activation_mb": peak - base if ok else None,
                   "cost_memory_kind": "cpu: a child forked with the model loaded ran only this pass (1 thread); "
                                       "peak RSS, and the peak minus its RSS before the pass" if ok else
                                       "unavailable: no /proc/self/clear_refs in the child"}
            os.write(w, json.dumps(out).encode())
        except BaseException as e:  # noqa: BLE001  (reported to the parent, never raised in a fork)
            os.write(w, json.dumps({"error": repr(e)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    blob, deadline = b"", time.monotonic() + timeout_s
    try:
        with os.fdopen(r, "rb") as f:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([f], [], [], left)[0]:
                    raise RuntimeError(f"the cost pass's memory child ran past {timeout_s:.0f} s (killed)")
                chunk = os.read(f.fileno(), 1 << 16)
                if not chunk:
                    break
                blob += chunk
    finally:
        try:
            os.kill(pid, signal.SIGKILL)  # a no-op for a child that already left
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
    try:
        out = json.loads(blob)
    except ValueError:
        out = {"error": f"it wrote no result (wait status {status})"}
    if "error" in out:
        raise RuntimeError(f"the cost pass's memory child failed: {out['error']}")
    return out


def timed_pass(forward: Forward, inputs: list[list[int]], pad_id: int, device: torch.device, batch_size: int,
               precision: str = "auto", types: list[list[int]] | None = None) -> float:
    """Seconds of one pass over ``inputs`` through the batched path, CUDA synchronised around it."""
    sync(device)
    t0 = time.perf_counter()
    forward_batched(forward, inputs, pad_id, device, lambda out, r, i: None, batch_size, None, precision, types)
    sync(device)
    return time.perf_counter() - t0


def side_by_side(forward: Forward, sets: dict[str, list[list[int]]], pad_id: int, device: torch.device,
                 batch_size: int, precision: str = "auto", repeats: int = 3,
                 prepare: dict[str, Callable[[], Any]] | None = None) -> dict[str, float]:
    """Median seconds of one batched pass over each set of inputs, the sets timed in turn (A, B, A, B ...)
    after one warm-up pass each, so a shared machine's drift falls on all of them alike. ``prepare[name]``:
    that set's own document work (a selection strategy's splitting and selection of the sample), timed
    with its pass (``CostProbe.prepare``)."""
    prepare = prepare or {}
    times: dict[str, list[float]] = {k: [] for k in sets}
    with torch.inference_mode():
        for r in range(repeats + 1):
            for name, inputs in sets.items():
                t0 = time.perf_counter()
                if name in prepare:
                    prepare[name]()
                seconds = time.perf_counter() - t0 + timed_pass(forward, inputs, pad_id, device, batch_size, precision)
                if r:
                    times[name].append(seconds)
    return {k: statistics.median(v) for k, v in times.items()}


def measure_cost(probe: CostProbe, device: torch.device, batch_size: int, precision: str = "auto",
                 repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Time ``probe`` alone; returns the measured cost fields (module docstring)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    flat = [x for doc in probe.inputs for x in doc]
    flat_types = [t for doc in probe.types for t in doc] if probe.types is not None else None
    docs = len(probe.inputs)
    real = sum(len(x) for x in flat)
    if not flat:
        return {"cost_docs": docs, "cost_note": "the cost sample made no model inputs"}

    def one_pass(inputs, types, bs) -> float:
        return timed_pass(probe.forward, inputs, probe.pad_id, device, bs, precision, types)

    def prepare(ds) -> float:  # the strategy's document work (selection) on documents ds, in seconds
        if probe.prepare is None:
            return 0.0
        t0 = time.perf_counter()
        for d in ds:
            probe.prepare(d)
        return time.perf_counter() - t0

    cal = Calibrator(device, compute_dtype(device, precision))
    every = range(docs)
    with torch.inference_mode():
        for _ in range(warmup):
            prepare(every)
            one_pass(flat, flat_types, batch_size)
            cal.a @ cal.b
        rates, times, selects = [], [], []
        with PassMemory(device) if device.type == "cuda" else contextlib.nullcontext() as mem:
            for _ in range(repeats):
                selects.append(prepare(every))
                rates.append(cal.sample())  # interleaved: the rate right before each timed pass
                times.append(one_pass(flat, flat_types, batch_size))
        memory = mem.out if mem is not None else child_pass_memory(lambda: one_pass(flat, flat_types, batch_size))
        latency = []
        for d, doc in enumerate(probe.inputs):
            if doc:
                types = probe.types[d] if probe.types is not None else None
                latency.append(prepare([d]) + one_pass(doc, types, max(1, len(doc))))
    seconds = statistics.median(times)
    whole = statistics.median(t + s for t, s in zip(times, selects))  # a document's whole cost: selection + model
    flops = sum(count_forward(probe.forward, len(x), device, ("cost", probe.key), module=probe.module,
                              precision=precision, with_types=flat_types is not None) for x in flat)
    rate = statistics.median(rates)
    util = flops / seconds / (rate * 1e9) if seconds > 0 and rate > 0 else float("nan")
    out = {
        "cost_docs": docs, "cost_inputs": len(flat), "cost_real_tokens": real, "cost_repeats": repeats,
        "cost_batch_size": batch_size, "cost_seconds_median": seconds,
        "cost_seconds_spread": (max(times) - min(times)) / seconds if seconds > 0 else None,
        "cost_docs_per_s": docs / whole, "cost_tokens_per_s": real / seconds,
        "latency_b1_p50_ms": float(np.percentile(latency, 50) * 1e3) if latency else None,
        "latency_b1_p95_ms": float(np.percentile(latency, 95) * 1e3) if latency else None,
        "flops_per_doc": flops / max(1, docs), "flops_counter": "torch.utils.flop_counter.FlopCounterMode",
        "matmul_gflops": rate, "utilisation_measured": util, "utilisation": util if util <= 1.0 else None,
        **memory, **probe.extra,
    }
    if probe.prepare is not None:
        select = statistics.median(selects)
        out.update(cost_select_seconds_median=select, cost_select_share=select / whole,
                   cost_includes="selection + model: documents/s and batch-1 latency include the strategy's "
                                 "sentence splitting and selection; tokens/s, FLOPs and utilisation are the model's")
    if util > 1.0:
        out["utilisation_error"] = (f"measured {util:.0%} of the interleaved matmul rate: above 100% is a timing "
                                    f"or calibration error, not a number")
    return out


__all__ = ["CostProbe", "PassMemory", "child_pass_memory", "cost_sample", "measure_cost", "side_by_side", "timed_pass"]
