"""The one fit loop: clf, NER and QA train through :func:`fit`.

A task hands over its model and three callables: ``batches(gen)`` (one epoch's batches
of example indices; ``gen=None`` asks for the unshuffled epoch, which fixes the step
count), ``loss(net, idx)`` (the mean loss of those examples, or ``None`` when they carry
no label) and optionally ``evaluate(model)`` (a validation score, higher is better).
The loop owns, once: AdamW with linear warm-up and decay, gradient accumulation and
clipping, data parallelism under a launcher (accelerate), early stopping with the best
epoch's weights restored, full-batch L-BFGS for probes, the AdaLoRA schedule, an equal
optimizer-step budget (``train.steps``) and the training record (steps, examples and
tokens seen, wall seconds, first and last loss).
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ctxbench.strategies import ConfigError
from ctxbench.strategies.sliding import cap as cap_starts
from ctxbench.tasks.model.distributed import accelerator_for, local_share
from ctxbench.tasks.model.encoder import ceil_div, linear_warmup, sync
from ctxbench.tasks.model.peft import adalora_schedule

Batches = Callable[[torch.Generator | None], Sequence[Sequence[int]]]
Loss = Callable[[nn.Module, Sequence[int]], "torch.Tensor | None"]


def capped(windows: Sequence[Sequence], cap: int | None) -> list[list]:
    """Each document's training windows, at most ``cap`` of them spread evenly (``train.max_windows_train``;
    None keeps all)."""
    keep = [list(range(len(ws))) if cap is None or len(ws) <= cap else cap_starts(list(range(len(ws))), cap, "even")
            for ws in windows]
    return [[ws[i] for i in idx] for ws, idx in zip(windows, keep)]


def fixed_steps(train, units: int | None) -> bool:
    """Whether a fixed number of steps ends training (no early stopping; the final weights are scored)."""
    return bool(getattr(train, "steps", None)) or (getattr(train, "schedule", "epochs") == "equal_steps"
                                                   and units is not None)


def optimizer_steps(batches_per_epoch: int, train, units: int | None = None) -> int:
    """Optimizer steps of one :func:`fit` run: ``train.steps`` when set; with ``train.schedule =
    equal_steps``, ``epochs`` passes over the ``units`` training documents (the same for every strategy
    of a grid, however many windows each makes of a document); else every epoch's batches of the
    strategy's own examples over ``grad_accum`` (early stopping may end it sooner)."""
    if getattr(train, "steps", None):
        return int(train.steps)
    if fixed_steps(train, units):
        batches_per_epoch = ceil_div(units, train.batch_size)
    return train.epochs * max(1, ceil_div(batches_per_epoch, train.grad_accum))


def fit(model: nn.Module, batches: Batches, loss: Loss, train, seed: int, device: torch.device, *,
        evaluate: Callable[[nn.Module], float] | None = None, tokens: Callable[[int], int] | None = None,
        data_parallel: bool = False, progress: bool = False, desc: str = "train",
        units: int | None = None) -> dict[str, Any]:
    """Train ``model`` in place; returns the training record. ``tokens(i)``: example ``i``'s
    input tokens (for tokens seen); ``units``: the training documents (what ``equal_steps`` counts);
    ``data_parallel``: under a launcher each process takes its
    share of every batch and DDP averages the gradients (end-to-end models; a probe head trains
    replicated). With one process the model, batches and operations are those without accelerate."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: the model has no trainable parameters")
    acc = accelerator_for(train.grad_accum)
    size, rank = (acc.num_processes, acc.process_index) if data_parallel else (1, 0)
    net = acc.prepare_model(model, device_placement=False) if size > 1 else model
    gen = torch.Generator().manual_seed(seed)
    natural = batches(None)
    per_epoch = len(natural)
    if per_epoch == 0:
        raise ConfigError("nothing to train on: the training split gave no examples")
    total = optimizer_steps(per_epoch, train, units)
    fixed = fixed_steps(train, units)
    lbfgs = train.optimizer == "lbfgs"
    if lbfgs:
        if data_parallel:
            raise ConfigError("train.optimizer=lbfgs is for probe mode; use adamw to fine-tune")
        if fixed:
            raise ConfigError("train.steps and train.schedule=equal_steps count AdamW steps; L-BFGS probes "
                              "train full-batch for train.epochs")
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=20, history_size=10, line_search_fn="strong_wolfe")
    elif train.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
        sched = linear_warmup(opt, int(train.warmup_ratio * total), total)
    else:
        raise ConfigError(f"train.optimizer must be adamw or lbfgs, got {train.optimizer!r}")
    rec = {"seen": 0, "tokens": 0, "steps": 0}
    losses: list[torch.Tensor] = []  # detached, read once at the end: no device sync per step
    best, best_state, bad, epochs_run, t_train = -float("inf"), None, 0, 0, 0.0
    max_epochs = train.epochs if not fixed else ceil_div(total * train.grad_accum, per_epoch)
    everything = sorted(i for b in natural for i in b)  # L-BFGS: one full batch

    def count(idx: Sequence[int]) -> None:
        rec["seen"] += len(idx)
        if tokens is not None:
            rec["tokens"] += sum(tokens(i) for i in idx)

    with adalora_schedule(model):
        for epoch in tqdm(range(max_epochs), desc=desc, disable=not progress, leave=False):
            model.train()
            sync(device)
            t0 = time.perf_counter()
            if lbfgs:
                def closure():
                    opt.zero_grad()
                    value = loss(model, everything) + train.weight_decay * sum(
                        (p**2).sum() for p in params if p.dim() > 1)
                    value.backward()
                    return value

                losses.append(opt.step(closure).detach())
                rec["steps"] += 1
                count(everything)
            else:
                epoch_batches = batches(gen)
                opt.zero_grad()
                for step, idx in enumerate(epoch_batches):
                    last = (step + 1) % train.grad_accum == 0 or step + 1 == len(epoch_batches)
                    mine, weight = local_share(list(idx), rank, size)  # one process: (idx, 1.0)
                    with acc.no_sync(net) if size > 1 and not last else contextlib.nullcontext():
                        value = loss(net, mine)
                        if value is not None:
                            acc.backward(value if weight == 1.0 else value * weight)  # divides by grad_accum
                            losses.append(value.detach())
                    count(idx)
                    if last:
                        acc.clip_grad_norm_(params, 1.0)
                        opt.step()
                        sched.step()
                        opt.zero_grad()
                        rec["steps"] += 1
                        if fixed and rec["steps"] >= total:
                            break
            sync(device)
            t_train += time.perf_counter() - t0
            epochs_run = epoch + 1
            if fixed and rec["steps"] >= total:
                break
            if evaluate is None or fixed:  # fixed steps: only the final weights are scored
                continue
            score = evaluate(model)
            if score > best:
                best, bad = score, 0
                best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
            else:
                bad += 1
                if bad >= train.patience:
                    break
    if evaluate is not None and fixed:  # equal steps: the final weights are what is scored
        best, best_state = evaluate(model), None
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    losses = torch.stack(losses).float().cpu().tolist() if losses else []
    k = max(1, len(losses) // 10)
    return {"epochs_run": epochs_run, "optimizer_steps": rec["steps"], "planned_steps": total,
            "schedule": "steps" if getattr(train, "steps", None) else "equal_steps" if fixed else "epochs",
            "best_val": best if evaluate is not None else None, "train_seconds": t_train,
            "train_processes": size, "train_examples_seen": rec["seen"],
            "train_tokens_seen": rec["tokens"] if tokens is not None else None,
            "train_examples_per_s": rec["seen"] / max(t_train, 1e-9),
            "train_tokens_per_s": rec["tokens"] / max(t_train, 1e-9) if tokens is not None and rec["tokens"] else None,
            "train_loss_first": float(np.mean(losses[:k])) if losses else None,
            "train_loss_last": float(np.mean(losses[-k:])) if losses else None}


__all__ = ["capped", "fit", "fixed_steps", "optimizer_steps"]
