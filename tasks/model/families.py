"""What differs between model families, in one place: usable positions and default LoRA targets.

* Position ids. RoBERTa-style models (RoBERTa, XLM-R, CamemBERT, Longformer) number real tokens from
  ``padding_idx + 1``, so of ``max_position_embeddings`` (514 for RoBERTa-base) only
  ``max_position_embeddings - padding_idx - 1`` (512) are usable; a tokenizer without
  ``model_max_length`` must not let budget 512 through to an "index 514 is out of bounds".
* LoRA targets. The attention projections have a different name in every family (ModernBERT has no
  ``query``/``value``); ``train.lora_target_modules`` left unset takes the family's default below,
  else peft's table, else a clear refusal naming the setting.
"""
from __future__ import annotations

from ctxbench.strategies import ConfigError

# model types whose position ids start after the padding index
OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text"})

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "roberta": ("query", "value"),
    "xlm-roberta": ("query", "value"),
    "camembert": ("query", "value"),
    "longformer": ("query", "value"),
    "electra": ("query", "value"),
    "distilbert": ("q_lin", "v_lin"),
    "deberta": ("in_proj",),
    "deberta-v2": ("query_proj", "value_proj"),
    "modernbert": ("Wqkv",),
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
}


def position_offset(config) -> int:
    """Positions before the first real token's (``padding_idx + 1`` on offset families, else 0)."""
    if getattr(config, "model_type", None) not in OFFSET_TYPES:
        return 0
    pad = getattr(config, "pad_token_id", None)
    return (1 if pad is None else int(pad)) + 1


def usable_positions(config) -> int:
    """The tokens (special ones included) a model can take in one window."""
    table = getattr(config, "max_position_embeddings", None) or 512
    return int(table) - position_offset(config)


def default_lora_targets(config) -> tuple[str, ...]:
    """The modules LoRA and AdaLoRA adapt when ``train.lora_target_modules`` is unset."""
    kind = getattr(config, "model_type", None)
    if kind in LORA_TARGETS:
        return LORA_TARGETS[kind]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TABLE

    if kind in PEFT_TABLE:
        return tuple(PEFT_TABLE[kind])
    raise ConfigError(f"no default LoRA target modules for model type {kind!r}: set train.lora_target_modules "
                      f"to the names of its attention projections (e.g. ['query', 'value'])")


__all__ = ["LORA_TARGETS", "OFFSET_TYPES", "default_lora_targets", "position_offset", "usable_positions"]
