"""The throughput and memory suite: inference of every strategy x budget, and one
fine-tune step per budget, on fixed synthetic documents (see ``workload.py``).

Run with ``make perf`` (or ``python -m ctxbench.bench.perf.check run``); compared with the
machine's baseline by ``make perf-check``. Each benchmark records in ``extra_info``:
real/padded tokens, tokens/s, model FLOPs and utilisation, the matmul calibration
measured right before each timed round, and peak memory with its method.
"""
from __future__ import annotations

import statistics
from typing import Any

import pytest

from ctxbench.tasks.model.flops import utilisation
from ctxbench.bench.perf.workload import Cell, memory_in_process, memory_isolated, prepare

pytestmark = pytest.mark.perf


def _measure(benchmark: Any, perf: Any, cell: Cell) -> None:
    prepared = prepare(perf.enc, perf.workload, cell, perf.device)
    # memory first: one run in a child that runs only this cell (CPU) or with CUDA peak stats reset
    mem = (memory_isolated(perf.workload, cell, perf.threads) if perf.isolate
           else memory_in_process(prepared, perf.device))
    samples: list[float] = []

    def calibrate_next_to_round() -> None:  # untimed: pytest-benchmark calls setup outside the timer
        samples.append(perf.calibrator.sample())

    benchmark.pedantic(prepared.run, setup=calibrate_next_to_round, rounds=perf.rounds,
                       warmup_rounds=perf.warmup, iterations=1)
    median = benchmark.stats.stats.median
    timed = samples[perf.warmup:] or samples  # the samples taken before the timed rounds
    calib = statistics.median(timed)
    info = prepared.info()
    row = {
        **info,
        "median_s": median,
        "tokens_per_s": prepared.real_tokens / median,
        "docs_per_s": prepared.docs / median,
        "achieved_gflops": prepared.flops / median / 1e9,
        "calib_gflops": calib,
        "calib_samples": timed,
        "round_seconds": list(benchmark.stats.stats.data),  # every timed round: the gate bootstraps them
        "utilisation": utilisation(prepared.flops, median, calib),
        "utilisation_vs_session": utilisation(prepared.flops, median, perf.calibration["gflops"]),
        "threads": perf.threads,
        "device": perf.device.type,
        **mem,
    }
    benchmark.extra_info.update(row)
    perf.rows.append({"name": benchmark.name, **row})


def test_infer(benchmark: Any, perf: Any, cell: Cell) -> None:
    """Encode every window of the fixed documents under one strategy and budget (bench.model.encode)."""
    _measure(benchmark, perf, cell)


def test_finetune_step(benchmark: Any, perf: Any, cell: Cell) -> None:
    """One AdamW step of the clf task's end-to-end model on a fixed batch of windows."""
    _measure(benchmark, perf, cell)
