"""Data-parallel fine-tuning across processes (``accelerate launch`` or ``torchrun``).

Every process runs every cell of the grid. Inside a fine-tuning cell, ``ctxbench.tasks.clf.fit``
gives each process its share of every batch and averages gradients across processes
(DDP through accelerate); ``ctxbench.tasks.clf.predict`` gives each process every world-th
group and gathers the logits back to every process by index, so each process scores
every example exactly once, and all processes take the same early-stopping decisions.
Only the main process (rank 0) yields results, so only it writes ``runs.jsonl`` and
the sidecars. With one process all of this reduces to the single-process code path:
the same batches, the same operations, the same numbers.

Probe mode trains a small head on cached vectors: it runs replicated (every process
computes the same thing), so a launcher buys it nothing; use ``--executor ray`` to
spread a probe grid. Precision is the model's own (bf16 autocast around the encoder
on CUDA, fp32 elsewhere; accelerate's ``--mixed_precision bf16`` is that already).
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from ctxbench.strategies import ConfigError

LAUNCHER_ENV = "WORLD_SIZE"  # set by accelerate launch and torchrun for every process they start


def launched_world_size() -> int:
    """How many processes a distributed launcher started (1 when none did)."""
    try:
        return int(os.environ.get(LAUNCHER_ENV, "1"))
    except ValueError:
        return 1


def cpu_only() -> bool:
    """accelerate's ``cpu`` flag: forced by ``accelerate launch --cpu`` (ACCELERATE_USE_CPU) or
    because torch sees no CUDA. Without it accelerate treats CPU-only ranks as one process each."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def state():
    from accelerate import PartialState

    return PartialState(cpu=cpu_only())


def world() -> tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) without a launcher."""
    if launched_world_size() <= 1:
        return 1, 0
    st = state()
    return st.num_processes, st.process_index


def accelerator_for(grad_accum: int):
    """The Accelerator one ``fit`` call trains with. Precision stays the model's own
    (``mixed_precision="no"`` here; FinetuneModel autocasts its encoder to bf16 on CUDA and
    keeps pooling and head in fp32, with or without a launcher). Device placement stays
    the runner's. Unused parameters (e.g. BERT's pooler) are allowed by DDP."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if asked not in ("no", "bf16"):
        raise ConfigError(f"accelerate launch asked for mixed_precision={asked}; ctxbench's precision is the "
                          f"model's (bf16 autocast of the encoder on CUDA, fp32 elsewhere): launch without it")
    acc = Accelerator(cpu=cpu_only(), mixed_precision="no", gradient_accumulation_steps=grad_accum,
                      device_placement=False,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if acc.gradient_accumulation_steps != grad_accum:  # accelerate lets its launcher's setting win
        raise ConfigError(f"accelerate's gradient_accumulation_steps ({acc.gradient_accumulation_steps}, from "
                          f"accelerate launch or ACCELERATE_GRADIENT_ACCUMULATION_STEPS) differs from the spec's "
                          f"train.grad_accum ({grad_accum}); set train.grad_accum instead (it is part of the run_id)")
    return acc


def local_share(batch: Sequence[int], rank: int, size: int) -> tuple[list[int], float]:
    """This process's contiguous part of a batch and the weight that makes the DDP average
    of the per-process mean losses equal the whole batch's mean loss: n_local * size / n.
    A process left without an example computes one with weight 0 (every process must
    take part in each gradient all-reduce)."""
    batch = list(batch)
    if size == 1:
        return batch, 1.0
    per, extra = divmod(len(batch), size)
    start = rank * per + min(rank, extra)
    mine = batch[start: start + per + (1 if rank < extra else 0)]
    if not mine:
        return batch[-1:], 0.0
    return mine, len(mine) * size / len(batch)


def strided_share(n: int, rank: int, size: int) -> tuple[list[int], list[int]]:
    """Items ``rank, rank+size, ...`` of ``range(n)``, padded to ``ceil(n/size)`` so every
    process runs as many batches; returns (indices to compute, their tags: -1 = padding)."""
    mine = list(range(rank, n, size))
    m = -(-n // size)
    pad = m - len(mine)
    return mine + [mine[-1] if mine else 0] * pad, mine + [-1] * pad


def gather_by_index(tags: list[int], logits: torch.Tensor, seconds: list[float], padded: int,
                    n: int) -> tuple[torch.Tensor, list[float], int]:
    """Every process's (tag, logits, seconds) rows, put back in item order; padding rows
    (tag -1) are dropped, so each item is counted exactly once whatever the split."""
    from accelerate.utils import gather

    dev = state().device  # NCCL gathers CUDA tensors; gloo CPU ones
    t = gather(torch.as_tensor(tags, dtype=torch.long, device=dev)).cpu()
    lg = gather(logits.to(dev)).cpu()
    sec = gather(torch.as_tensor(seconds, dtype=torch.float64, device=dev)).cpu()
    pad = int(gather(torch.as_tensor([padded], dtype=torch.long, device=dev)).sum())
    keep = t >= 0
    order = t[keep]
    if order.numel() != n or not torch.equal(order.sort().values, torch.arange(n)):
        raise RuntimeError(f"gathered predictions cover {order.unique().numel()} of {n} items "
                           f"({order.numel()} rows): processes disagree on the split")
    out = torch.empty((n, lg.shape[1]), dtype=lg.dtype)
    out[order] = lg[keep]
    secs = torch.empty(n, dtype=torch.float64)
    secs[order] = sec[keep]
    return out, secs.tolist(), pad


__all__ = ["accelerator_for", "cpu_only", "gather_by_index", "launched_world_size",
           "local_share", "state", "strided_share", "world"]
