"""The model side: loading, window inputs, batched encoding, heads and aggregators.

Strategies give spans; this module turns spans into model inputs (special tokens
from the tokenizer), encodes them in length-sorted batches, and combines window
outputs (pooling for window-level strategies, a trained aggregator for
document-level ones).
"""
from __future__ import annotations

import math
import time
import weakref
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ctxbench.strategies import ConfigError, Window

from ctxbench.tasks.cache import content_hash, file_hash
from ctxbench.tasks.model.families import usable_positions
from ctxbench.tasks.model.packaged import resolve_model
from ctxbench.tasks.model.peft import attach_saved


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Loaded:
    tokenizer: object
    model: nn.Module
    path: str
    max_positions: int
    attn_implementation: str
    dtype: str


def max_positions(tokenizer, config) -> int:
    """Usable positions: the model family's (tasks/model/families.py: RoBERTa's 514 are 512 usable),
    capped by the tokenizer's ``model_max_length`` where it sets a real one."""
    usable = usable_positions(config)
    tok = getattr(tokenizer, "model_max_length", None)
    if tok and tok < 1_000_000:
        return min(usable, tok)
    return usable


def load_encoder(name: str, device: torch.device, auto_class: str = "AutoModel", **kwargs) -> Loaded:
    import transformers
    from transformers import AutoTokenizer

    path = resolve_model(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"model {name!r}: a fast tokenizer is needed (offsets and word ids)")
    if tokenizer.pad_token_id is None:  # decoder models (e.g. Llama) have none
        tokenizer.pad_token = tokenizer.eos_token
    cls = getattr(transformers, auto_class)
    try:
        model = cls.from_pretrained(path, attn_implementation="sdpa", **kwargs)
        attn = "sdpa"
    except (ValueError, ImportError):
        model = cls.from_pretrained(path, attn_implementation="eager", **kwargs)
        attn = "eager"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = attach_saved(model, path)  # a fine-tuned folder with a prefix adapter (tasks/model/peft.py)
    model.to(device)
    attn = getattr(model.config, "_attn_implementation", attn) or attn
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return Loaded(tokenizer, model, path, max_positions(tokenizer, model.config), attn, dtype)


MODEL_FILES = ("*.safetensors", "*.bin", "tokenizer.json", "vocab.txt", "merges.txt", "*.model",
               "tokenizer_config.json", "special_tokens_map.json")


def model_key(enc: Loaded) -> str:
    """What a model computes, for cache keys: its config and the hashes of its weight and tokenizer
    files. A local folder is known by its content, not its place, so two checkouts (or venvs) holding
    the same files share caches; a model without local weight files (a hub id) is known by its name."""
    folder = Path(enc.path)
    files = sorted({f for pat in MODEL_FILES for f in folder.glob(pat)}) if folder.is_dir() else []
    config = {k: v for k, v in enc.model.config.to_dict().items() if k != "_name_or_path"}
    named = [] if any(f.suffix in (".safetensors", ".bin") for f in files) else [enc.path]
    return content_hash(*named, config, [(f.name, file_hash(f)) for f in files])


def special_tokens(tokenizer, pair: bool = False) -> int:
    return tokenizer.num_special_tokens_to_add(pair=pair)


def usable_budget(tokenizer, max_pos: int, budget: int | None, pair: bool = False, question_len: int = 0) -> int:
    """``budget = max positions - special tokens - question``: refused when it does not fit."""
    room = max_pos - special_tokens(tokenizer, pair) - question_len
    if room < 1:
        raise ConfigError(
            f"no room for context: {max_pos} positions - {special_tokens(tokenizer, pair)} special tokens "
            f"- {question_len} question tokens = {room}"
        )
    if budget is None:
        return room
    if not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"budget must be an integer >= 1, got {budget!r}")
    if budget > room:
        raise ConfigError(
            f"budget {budget} exceeds the model's room of {room} tokens ({max_pos} positions - "
            f"{special_tokens(tokenizer, pair)} special tokens - {question_len} question tokens)"
        )
    return budget


def window_ids(ids: Sequence[int], window: Window) -> list[int]:
    out: list[int] = []
    for s, e in window:
        out.extend(ids[s:e])
    return out


@dataclass(frozen=True)
class Template:
    """Where the tokenizer puts its special tokens, read off the tokenizer itself
    (never hard-coded ids): ``prefix + a + middle + b + suffix`` for a pair,
    ``prefix + a + suffix`` for one sequence."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pair_prefix: tuple[int, ...]
    pair_middle: tuple[int, ...]
    pair_suffix: tuple[int, ...]

    def single(self, ids: Sequence[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]

    def pair(self, a: Sequence[int], b: Sequence[int]) -> list[int]:
        return [*self.pair_prefix, *a, *self.pair_middle, *b, *self.pair_suffix]


# per tokenizer object, dropped with it (an id() key could be reused by a later tokenizer)
_TEMPLATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _locate(full: list[int], part: list[int], start: int = 0) -> int:
    for i in range(start, len(full) - len(part) + 1):
        if full[i: i + len(part)] == part:
            return i
    raise ConfigError("could not locate the text inside the tokenizer's special-token template")


def template(tokenizer) -> Template:
    key = tokenizer
    if key not in _TEMPLATES:
        a = tokenizer("hello", add_special_tokens=False)["input_ids"]
        b = tokenizer("world", add_special_tokens=False)["input_ids"]
        one = tokenizer("hello")["input_ids"]
        i = _locate(one, a)
        two = tokenizer("hello", "world")["input_ids"]
        j = _locate(two, a)
        k = _locate(two, b, j + len(a))
        _TEMPLATES[key] = Template(tuple(one[:i]), tuple(one[i + len(a):]), tuple(two[:j]),
                                   tuple(two[j + len(a): k]), tuple(two[k + len(b):]))
    return _TEMPLATES[key]


def build_input(tokenizer, ids: Sequence[int], window: Window) -> list[int]:
    """Join a window's spans and add the tokenizer's own special tokens."""
    return template(tokenizer).single(window_ids(ids, window))


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices sorted by length (longest first) and cut into batches, to cut padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur = [], []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= batch_size or (max_tokens and (len(cur) + 1) * width > max_tokens)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooler: str) -> torch.Tensor:
    # hidden (B, L, d), mask (B, L) -> (B, d)
    if pooler == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Batched:
    outputs: list[Any]  # per input: what ``take`` kept of its row of the batch output
    seconds: list[float]  # per input: its token share of its batch's forward time (an estimate, not its own cost)
    widths: list[int]  # per input: the padded width of its batch (its padded tokens)
    padded_tokens: int
    real_tokens: int


@torch.inference_mode()
def forward_batched(forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], Any],
                    inputs: Sequence[Sequence[int]], pad_id: int, device: torch.device,
                    take: Callable[[Any, int, int], Any], batch_size: int = 64, progress: str | None = None,
                    precision: str = "auto", token_types: Sequence[Sequence[int]] | None = None) -> Batched:
    """The one batched inference path of every task: inputs grouped by length (longest first, at most
    ``batch_size`` inputs and ``batch_size * 256`` tokens a batch), padded, run through ``forward(ids,
    mask, types)`` under the run's precision, CUDA synchronised around the clock; ``take(out, row,
    index)`` keeps what the task needs of input ``index`` (batch row ``row``)."""
    from tqdm.auto import tqdm

    lengths = [len(x) for x in inputs]
    out: list[Any] = [None] * len(inputs)
    seconds = [0.0] * len(inputs)
    widths = [0] * len(inputs)
    padded = 0
    for batch in tqdm(length_batches(lengths, batch_size, max_tokens=batch_size * 256), desc=progress or "forward",
                      disable=progress is None, leave=False):
        ids, mask = pad_batch([inputs[i] for i in batch], pad_id)  # (B, W) each
        types = pad_batch([token_types[i] for i in batch], 0)[0].to(device) if token_types is not None else None
        padded += ids.numel()
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            result = forward(ids.to(device), mask.to(device), types)
        kept = [take(result, r, i) for r, i in enumerate(batch)]  # reading the output waits for the device
        sync(device)
        dt = time.perf_counter() - t0
        real = max(1, sum(lengths[i] for i in batch))
        for r, i in enumerate(batch):
            out[i], seconds[i], widths[i] = kept[r], dt * lengths[i] / real, ids.shape[1]
    return Batched(out, seconds, widths, padded, sum(lengths))


@dataclass
class Encoded:
    vectors: torch.Tensor  # (N, d) float32 on CPU
    seconds: list[float]  # per input: its token share of its batch's wall time
    widths: list[int]  # per input: the padded width of its batch (its padded tokens)
    padded_tokens: int
    real_tokens: int


def encode(
    model: nn.Module,
    inputs: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    pooler: str = "mean",
    batch_size: int = 64,
    progress: str | None = None,
    precision: str = "auto",
) -> Encoded:
    """Encode token-id inputs into one pooled vector each (``forward_batched``)."""
    model.eval()

    def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, W, d)
        return pool_hidden(hidden.float(), mask, pooler).cpu()  # (B, d)

    got = forward_batched(forward, inputs, pad_id, device, lambda vec, r, i: vec[r], batch_size,
                          progress or None, precision)
    d = model.config.hidden_size
    vectors = torch.stack(got.outputs) if got.outputs else torch.zeros((0, d))
    return Encoded(vectors, got.seconds, got.widths, got.padded_tokens, got.real_tokens)


PRECISIONS = ("auto", "float32", "bfloat16")  # what a run records and computes in
SWEEP_PRECISIONS = (*PRECISIONS, "native")  # a sweep may also ask for ``native``, resolved when it is loaded


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX
    (elsewhere torch emulates bf16 on a CPU, slower than float32). ``CTXBENCH_NATIVE_BF16=0`` or ``1`` overrides
    the detection (the tests set 0, so they take the same path on every machine)."""
    import os

    forced = os.environ.get("CTXBENCH_NATIVE_BF16", "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(f"CTXBENCH_NATIVE_BF16 must be 0 or 1, got {forced!r}")
        return forced == "1"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """A sweep's ``precision`` as its runs record it. ``native`` becomes ``bfloat16`` on a CPU that runs bf16
    natively (:func:`native_bf16`) and ``auto`` everywhere else (bf16 autocast on CUDA, float32 on other CPUs),
    so a run_id names what was computed: on a CPU without native bf16 the cells are ``auto``'s, run_ids
    included. The other values are kept."""
    if precision not in SWEEP_PRECISIONS:
        raise ConfigError(f"precision must be one of {SWEEP_PRECISIONS}, got {precision!r}")
    if precision != "native":
        return precision
    return "bfloat16" if device.type == "cpu" and native_bf16(device) else "auto"


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype an inference forward pass's matmuls run in: the one precision rule of every task.

    ``auto`` (the default): bf16 autocast on CUDA, float32 elsewhere; ``bfloat16``: bf16 autocast on any device (CPUs
    with AVX512-BF16 or AMX run it natively; on others it is emulated and slower);
    ``float32``: no autocast (``native``, a sweep's choice, is resolved to one of these first:
    :func:`resolve_precision`). Weights stay float32; only the autocast region (the
    encoder's forward) changes. Training always runs ``auto`` (a run's ``precision``
    is its inference precision, so the trained model is the same for every value).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def compute_dtype_name(device: torch.device, precision: str = "auto") -> str:
    """:func:`compute_dtype` as run records and cache keys name it: ``float32`` or ``bfloat16``."""
    return str(compute_dtype(device, precision)).removeprefix("torch.")


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """The autocast context of :func:`compute_dtype` (disabled for float32)."""
    dtype = compute_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


class AttentionPool(nn.Module):
    """Learned attention pooling over chunk vectors (one query vector)."""

    def __init__(self, d: int):
        super().__init__()
        self.score = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, K, d), mask (B, K) -> (B, d)
        s = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=-1).unsqueeze(-1)
        return (w * x).sum(1)


class TransformerAgg(nn.Module):
    """ToBERT: a small transformer over chunk vectors, then mean over chunks."""

    def __init__(self, d: int, layers: int = 1, max_chunks: int = 512, dropout: float = 0.1):
        super().__init__()
        heads = next(h for h in (8, 6, 4, 2, 1) if d % h == 0)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pos = nn.Embedding(max_chunks, d)
        nn.init.zeros_(self.pos.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, K, d) -> (B, K, d) -> masked mean (B, d)
        k = min(x.shape[1], self.pos.num_embeddings)
        x = x[:, :k] + self.pos(torch.arange(k, device=x.device))
        mask = mask[:, :k]
        h = self.encoder(x, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_reduce(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    # x (B, K, d), mask (B, K) -> (B, d)
    if how == "max":
        return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class Head(nn.Module):
    """Aggregator over a document's window vectors (K=1 for window-level) + linear classifier."""

    def __init__(self, d: int, n_labels: int, aggregator: str = "mean", layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.aggregator = aggregator
        if aggregator == "attention":
            self.agg = AttentionPool(d)
        elif aggregator == "transformer":
            self.agg = TransformerAgg(d, layers, dropout=dropout)
        elif aggregator in ("mean", "max"):
            self.agg = None
        else:
            raise ConfigError(f"unknown aggregator {aggregator!r}")
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d, n_labels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x (B, K, d), mask (B, K) bool -> logits (B, C)
        z = self.agg(x, mask) if self.agg is not None else masked_reduce(x, mask, self.aggregator)
        return self.out(self.drop(z))


def pack(groups: Sequence[torch.Tensor], d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (K_i, d) tensors -> padded (B, K, d) and mask (B, K)."""
    k = max(1, max((g.shape[0] for g in groups), default=1))
    x = torch.zeros((len(groups), k, d))
    mask = torch.zeros((len(groups), k), dtype=torch.bool)
    for i, g in enumerate(groups):
        x[i, : g.shape[0]] = g
        mask[i, : g.shape[0]] = True
    return x, mask


def linear_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def n_params(module: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [
    "Head", "Loaded", "encode", "build_input", "window_ids", "usable_budget", "load_encoder", "pick_device",
    "pack", "pad_batch", "length_batches", "linear_warmup", "n_params", "seed_everything", "math",
]
