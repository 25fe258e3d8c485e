"""Fine-tuning modes: ``full`` and four parameter-efficient ones through peft.

``train.finetune`` picks one; ``apply_peft`` wraps the encoder, which keeps its
``(input_ids, attention_mask) -> last_hidden_state`` interface, so the task's
model and training loop do not change. Every mode's run records trainable and
total parameters, peak memory and training throughput (tasks/clf.py).

* ``lora``: low-rank updates on ``lora_target_modules`` (Hu et al. 2021).
* ``adalora``: LoRA whose rank budget is re-allocated during training by an
  SVD-style importance score (Zhang et al. 2023): ranks start at
  ``adalora_init_r`` and are pruned to an average of ``lora_r`` between
  ``adalora_tinit`` and ``1 - adalora_tfinal`` of the run's optimizer steps. peft
  needs ``update_and_allocate(step)`` after every optimizer step and adds its
  orthogonality penalty only to a loss the base model returns; our loss lives
  in the task, so ``adalora_schedule`` does both through optimizer step hooks
  (the penalty's gradient is added after gradient clipping). Early stopping can
  end a run before the allocation finishes; the restored best epoch is what is
  scored.
* ``prefix``: prefix-tuning (Li & Liang 2021): ``prefix_tokens`` trained key/value
  vectors per layer (peft's default: no MLP reparameterisation). peft gives the
  real tokens positions after the prefix, so on a model with learned absolute
  positions (BERT) a prefix costs ``prefix_tokens`` positions of the budget;
  ``apply_peft`` refuses inputs that would run past the position table.
* ``ia3``: learned rescaling of keys, values and feed-forward activations
  (Liu et al. 2022); ``ia3_*_modules`` default to peft's per-architecture choice
  (BERT: key, value, output.dense).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn

from ctxbench.strategies import ConfigError

from ctxbench.tasks.model.families import default_lora_targets, usable_positions

KINDS = ("full", "lora", "adalora", "prefix", "ia3")


def lora_targets(encoder: nn.Module, train) -> list[str]:
    """``train.lora_target_modules``, or the family's default (tasks/model/families.py) when unset."""
    given = getattr(train, "lora_target_modules", None)
    return list(given) if given else list(default_lora_targets(encoder.config))


def _lora(encoder: nn.Module, train, total_steps: int):
    from peft import LoraConfig

    # no task_type: the same wrapper (and trainable parameters) as before this module existed
    return LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                      target_modules=lora_targets(encoder, train))


def _adalora(encoder: nn.Module, train, total_steps: int):
    from peft import AdaLoraConfig

    tinit = int(train.adalora_tinit * total_steps)
    tfinal = int(train.adalora_tfinal * total_steps)
    if total_steps < 2 or tinit >= total_steps - tfinal:
        raise ConfigError(
            f"train.finetune=adalora: {total_steps} optimizer steps leave no rank-allocation phase between "
            f"adalora_tinit={train.adalora_tinit} and adalora_tfinal={train.adalora_tfinal} of them "
            f"(tinit={tinit}, tfinal={tfinal}); train longer or lower the fractions")
    return AdaLoraConfig(init_r=train.adalora_init_r, target_r=train.lora_r, lora_alpha=train.lora_alpha,
                         lora_dropout=train.lora_dropout, target_modules=lora_targets(encoder, train),
                         total_step=total_steps, tinit=tinit, tfinal=tfinal, deltaT=1)


def _prefix(encoder: nn.Module, train, total_steps: int):
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=train.prefix_tokens)


def _ia3(encoder: nn.Module, train, total_steps: int):
    from peft import IA3Config

    target = list(train.ia3_target_modules) if train.ia3_target_modules is not None else None
    ff = list(train.ia3_feedforward_modules) if train.ia3_feedforward_modules is not None else None
    if (target is None) != (ff is None):
        raise ConfigError("train.ia3_target_modules and train.ia3_feedforward_modules: give both or neither "
                          "(neither = peft's default for the architecture)")
    return IA3Config(target_modules=target, feedforward_modules=ff)


_BUILDERS: dict[str, Callable] = {"lora": _lora, "adalora": _adalora, "prefix": _prefix, "ia3": _ia3}


def prefix_positions(encoder: nn.Module, train) -> int:
    """Positions a prefix takes from the budget: ``prefix_tokens`` on learned absolute
    positions (they have a fixed table), none on rotary/relative ones."""
    if train.finetune != "prefix":
        return 0
    emb = getattr(getattr(encoder, getattr(encoder, "base_model_prefix", ""), encoder), "embeddings", None)
    return train.prefix_tokens if isinstance(getattr(emb, "position_embeddings", None), nn.Embedding) else 0


def apply_peft(encoder: nn.Module, train, total_steps: int, longest_input: int | None = None) -> nn.Module:
    """Wrap ``encoder`` for ``train.finetune`` (``full`` returns it untouched). ``total_steps``:
    the run's optimizer steps (AdaLoRA's schedule); ``longest_input``: the longest input
    with special tokens, checked against the positions a prefix leaves."""
    kind = train.finetune
    if kind == "full":
        return encoder
    if kind not in _BUILDERS:
        raise ConfigError(f"train.finetune must be one of {KINDS}, got {kind!r}")
    cost = prefix_positions(encoder, train)
    if cost and longest_input is not None:
        cfg = encoder.config
        table = usable_positions(cfg)
        if longest_input + cost > table:
            raise ConfigError(
                f"train.finetune=prefix: peft places the {cost} prefix tokens before the input, so an input of "
                f"{longest_input} tokens needs {longest_input + cost} of this model's {table} learned positions; "
                f"lower the budget by {longest_input + cost - table} or train.prefix_tokens")
    from peft import get_peft_model

    config = _BUILDERS[kind](encoder, train, total_steps)
    try:
        return get_peft_model(encoder, config)
    except ValueError as e:
        if "target modules" not in str(e).lower() and "target_modules" not in str(e).lower():
            raise
        try:
            hint = list(default_lora_targets(encoder.config))
        except ConfigError:
            hint = None
        raise ConfigError(f"train.finetune={kind}: {e}" + (
            f" For {encoder.config.model_type} models the default targets are {hint}: set "
            f"train.lora_target_modules={hint} or leave it unset." if hint else "")) from None


def peft_inside(model: nn.Module, train, total_steps: int, longest_input: int | None = None) -> nn.Module:
    """``apply_peft`` on the encoder inside a transformers head model (``model.<base_model_prefix>``,
    e.g. ``BertForQuestionAnswering.bert``): the task head outside it stays trainable, as with the
    task heads of clf and NER."""
    name = model.base_model_prefix
    setattr(model, name, apply_peft(getattr(model, name), train, total_steps, longest_input))
    return model


ADAPTER = "prefix_adapter"  # where save_finetuned keeps a prefix it cannot merge


def save_finetuned(model: nn.Module, folder) -> None:
    """Save a model trained through ``peft_inside`` as plain weights: LoRA, AdaLoRA and IA3 merged
    into them (inference then costs what full fine-tuning's does); a prefix, which cannot be merged,
    kept beside the unchanged base weights in ``folder/prefix_adapter`` for ``attach_saved``."""
    from pathlib import Path

    from peft import PeftModel

    name = model.base_model_prefix
    inner = getattr(model, name)
    if isinstance(inner, PeftModel):
        if inner.peft_config[inner.active_adapter].is_prompt_learning:
            inner.save_pretrained(str(Path(folder) / ADAPTER))
            setattr(model, name, inner.get_base_model())
        else:
            setattr(model, name, inner.merge_and_unload())
    model.save_pretrained(folder)


def attach_saved(model: nn.Module, folder) -> nn.Module:
    """The inverse of ``save_finetuned`` for a prefix: wrap the encoder with the saved adapter (inference
    only); any other folder is returned as loaded."""
    from pathlib import Path

    adapter = Path(folder) / ADAPTER
    if not adapter.is_dir():
        return model
    from peft import PeftModel

    name = model.base_model_prefix
    setattr(model, name, PeftModel.from_pretrained(getattr(model, name), str(adapter)))
    return model


@contextlib.contextmanager
def adalora_schedule(model: nn.Module) -> Iterator[None]:
    """While open, every optimizer step over ``model``'s AdaLoRA parameters adds the
    orthogonality penalty's gradient before the step and calls ``update_and_allocate``
    after it (grads are still present: ``fit`` zeroes them after stepping). A no-op
    for any other mode."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    tuner = _adalora_tuner(model)
    if tuner is None:
        yield
        return
    mine = {id(p) for p in model.parameters() if p.requires_grad}
    step = [0]
    weight = tuner.peft_config[tuner.trainable_adapter_name].orth_reg_weight

    def ours(opt: torch.optim.Optimizer) -> bool:
        return any(id(p) in mine for g in opt.param_groups for p in g["params"])

    def pre(opt, args, kwargs):
        if ours(opt) and weight > 0:
            with torch.enable_grad():
                (weight * orthogonal_penalty(tuner)).backward()

    def post(opt, args, kwargs):
        if ours(opt):
            tuner.update_and_allocate(step[0])
            step[0] += 1

    handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _adalora_tuner(model: nn.Module):
    from peft.tuners.adalora import AdaLoraModel

    return next((m for m in model.modules() if isinstance(m, AdaLoraModel)), None)


def orthogonal_penalty(tuner) -> torch.Tensor:
    """AdaLoRA's regulariser: mean over adapters of ``||P P^T - I||_F`` (A) and ``||Q^T Q - I||_F`` (B)."""
    name = tuner.trainable_adapter_name
    terms = []
    for n, p in tuner.model.named_parameters():
        if p.requires_grad and ("lora_A" in n or "lora_B" in n) and name in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p  # (r, r)
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=p.device, dtype=p.dtype)))
    return torch.stack(terms).mean() if terms else torch.zeros(())


__all__ = ["KINDS", "apply_peft", "adalora_schedule", "attach_saved", "lora_targets", "orthogonal_penalty",
           "peft_inside", "prefix_positions", "save_finetuned"]
