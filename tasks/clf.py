"""Document classification: 20 Newsgroups, NewsArticles or any hub text/label dataset.

``probe`` mode freezes the encoder: every distinct window of every document is
encoded once into a span cache shared by all strategies at a budget, and a head
(plus the hierarchical aggregator) is trained on cached vectors. ``finetune``
trains end to end (full or LoRA). Window-level strategies train on windows
labelled with their document's label and pool window logits (mean / max /
vote); document-level ones (hierarchical, or sliding with
``pool_over=embeddings``) aggregate window vectors before the classifier.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from tqdm.auto import tqdm

from ctxbench.tasks.model.encoder import (
    Head, Loaded, autocast, build_input, compute_dtype_name, encode, length_batches, load_encoder,
    ceil_div, model_key, n_params, pack, pad_batch, pool_hidden, seed_everything, sync, usable_budget,
)
from ctxbench.tasks.cache import cache_dir, cached_id_lists, content_hash
from ctxbench.tasks.model.cost import CostProbe, cost_sample, side_by_side
from ctxbench.tasks.model.peft import apply_peft
from ctxbench.tasks.model.train import capped, fit as train_loop, optimizer_steps
from ctxbench.tasks.model.windows import WindowCache
from ctxbench.strategies import ConfigError, Window, needs, window_len
from ctxbench.strategies.select import timed_windows

from ctxbench.tasks.base import (LENGTH_BUCKETS, CellResult, Context, GridReport, cost_measures, covered, length_bucket,
                                 register_task)
from ctxbench.tasks.data.checks import document_counts, problems
from ctxbench.tasks.data.sources import SOURCES, load_clf, sample
from ctxbench.tasks.data.transforms import TRANSFORMS, transform
from ctxbench.tasks.model.distributed import gather_by_index, strided_share, world

SPLITS = ("train", "val", "test")


UNPUNCTUATED = ("error", "words")


@dataclass(frozen=True)
class ClfSettings:
    """The clf task's settings (the YAML key ``clf``).

    ``transform``: reorder each document's sentences before tokenization, in every split (``none`` |
    ``invert`` | ``shuffle_sentences``; tasks/data/transforms.py). A list in the YAML is a grid axis:
    ``clf: {transform: [none, invert]}`` runs every cell once per value.
    ``min_tokens``: keep only the documents of at least this many tokens (of the sweep's tokenizer, no
    special tokens), in every split, before sampling; the dropped ones are counted in each run's info.
    ``window_weight``: how window-level strategies (every window a training example) weigh the windows of
    one document: ``window`` (each window 1, the default: a document cut into 16 windows counts 16 times) or
    ``document`` (each window 1/K, so every document counts once whatever its length; where length and label
    go together, the per-window weighting skews the head towards the long documents' labels).
    ``unpunctuated``: what sentence-based work (selection strategies, transforms) does with text that
    has no sentence punctuation: ``error`` (refused before the grid, with the count) or ``words``
    (pseudo-sentences of 20 words, an explicit fallback; the documents it applied to are counted).
    """

    mode_keys: ClassVar[tuple[str, ...]] = ("transform", "min_tokens", "unpunctuated", "window_weight")
    grid_keys: ClassVar[tuple[str, ...]] = ("transform",)  # a list value expands into the grid
    later_fields: ClassVar[tuple[str, ...]] = ("transform", "min_tokens", "unpunctuated", "window_weight")
    transform: str = "none"
    min_tokens: int = 0
    unpunctuated: str = "error"
    window_weight: str = "window"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"clf.transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.window_weight not in ("window", "document"):
            raise ConfigError(f"clf.window_weight must be 'window' or 'document', got {self.window_weight!r}")
        if self.unpunctuated not in UNPUNCTUATED:
            raise ConfigError(f"clf.unpunctuated must be one of {UNPUNCTUATED}, got {self.unpunctuated!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ConfigError(f"clf.min_tokens must be an integer >= 0, got {self.min_tokens!r}")

    @property
    def fallback_words(self) -> int | None:
        from ctxbench.tasks.data.sentences import FALLBACK_WORDS

        return FALLBACK_WORDS if self.unpunctuated == "words" else None


def settings_of(spec) -> ClfSettings:
    return spec.settings if isinstance(spec.settings, ClfSettings) else ClfSettings()


@dataclass
class ClfData:
    key: str
    labels: list[str]
    texts: dict[str, list[str]]
    y: dict[str, list[int]]
    ids: dict[str, list[list[int]]]  # context token ids, no special tokens
    counts: dict[str, int]


TOKENIZE = "v1: add_special_tokens=False, truncation=False"  # part of the token cache key


def _digest(parts) -> str:
    """Content hash of the sampled texts and labels of every split (not of file names or dates)."""
    import hashlib

    h = hashlib.sha256()
    for s in SPLITS:
        h.update(f"\x1e{s}\x1e".encode())
        for t, lab in zip(parts[s]["text"], parts[s]["label"]):
            h.update(t.encode("utf-8", "surrogatepass") + b"\x1f" + str(lab).encode() + b"\x1d")
    return h.hexdigest()[:16]


def load_data(spec, tokenizer, tok_key: str) -> ClfData:
    """Load, sample, validate labels and tokenize once. The key (and so every cache built
    from the data: token ids, span vectors) is a content hash of the sampled texts and
    labels and of the tokenizer itself; a stale or corrupt token cache is rebuilt."""
    import warnings

    from ctxbench.tasks.data.sentences import punctuated

    cfg = settings_of(spec)
    dd = load_clf(spec.dataset, spec.text_col, spec.label_col)
    dropped = {}
    if cfg.min_tokens:
        for s in SPLITS:
            lengths = [len(x) for x in tokenizer(list(dd[s]["text"]), add_special_tokens=False, truncation=False,
                                                 verbose=False)["input_ids"]]
            keep = [i for i, n in enumerate(lengths) if n >= cfg.min_tokens]
            dropped[f"short_docs_dropped_{s}"] = len(lengths) - len(keep)
            dd[s] = dd[s].select(keep)
    parts = {s: sample(dd[s], getattr(spec.limits, s), spec.data_seed) for s in SPLITS}
    unpunct = {s: sum(1 for t in parts[s]["text"] if t.strip() and not punctuated(t)) for s in SPLITS}
    if cfg.transform != "none":
        parts = {s: p.map(lambda b: {"text": [transform(t, cfg.transform, spec.data_seed, cfg.fallback_words)
                                              for t in b["text"]]}, batched=True, load_from_cache_file=False)
                 for s, p in parts.items()}
    for s in SPLITS:
        missing = sum(1 for lab in parts[s]["label"] if lab is None or not str(lab).strip())
        if missing:
            raise ConfigError(f"dataset {spec.dataset!r}: {missing} {s} document(s) have no label "
                              f"(empty {spec.label_col!r} cell); fix or drop them")
    labels = sorted(set(parts["train"]["label"]))
    if len(labels) < 2:
        raise ConfigError(f"dataset {spec.dataset!r}: the training sample has a single class {labels}; need >= 2")
    for s in ("val", "test"):
        unknown = sorted(set(parts[s]["label"]) - set(labels))
        if unknown:
            raise ConfigError(
                f"dataset {spec.dataset!r}: {s} labels not seen in the training sample: {unknown} "
                f"(raise limits.train or fix the data)"
            )
    index = {lab: i for i, lab in enumerate(labels)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok_fp = content_hash(backend.to_str() if backend is not None else repr(tokenizer), TOKENIZE)
    key = content_hash(_digest(parts), tok_fp)
    out = ClfData(key, labels, {}, {}, {}, {**dropped, **{f"unpunctuated_docs_{s}": n for s, n in unpunct.items()}})
    train_texts = set(parts["train"]["text"])
    for s in SPLITS:
        texts = list(parts[s]["text"])

        def tokenize(texts=texts) -> list[list[int]]:
            ids: list[list[int]] = []
            for i in range(0, len(texts), 256):  # bounded memory for huge documents
                ids += tokenizer(texts[i: i + 256], add_special_tokens=False, truncation=False,
                                 verbose=False)["input_ids"]
            return ids

        out.texts[s] = texts
        out.y[s] = [index[lab] for lab in parts[s]["label"]]
        out.ids[s], _ = cached_id_lists(cache_dir("tokenized") / f"{key}-{s}.npz",
                                        content_hash(key, s, tok_key), tokenize)
        doc_ids = list(parts[s]["id"]) if "id" in parts[s].column_names else None
        out.counts.update(document_counts(s, texts, out.ids[s], doc_ids, train_texts if s != "train" else None))
    for s in SPLITS:
        n, empty = len(out.ids[s]), sum(1 for x in out.ids[s] if not x)
        if n and empty > n // 2:
            raise ConfigError(
                f"dataset {spec.dataset!r}: the tokenizer {type(tokenizer).__name__} "
                f"({getattr(tokenizer, 'name_or_path', '?')!r}) encodes {empty} of {n} {s} documents to zero tokens; "
                f"a leaderboard of them would be chance: check the tokenizer and the text column {spec.text_col!r}")
    if problems(out.counts):
        warnings.warn(f"dataset {spec.dataset!r}: {', '.join(problems(out.counts))} (kept; counted in every run "
                      f"record's info)", stacklevel=2)
    return out


def check_empty(data: ClfData, policy: str) -> None:
    n = sum(data.counts[f"empty_docs_{s}"] for s in SPLITS)
    if n and policy == "error":
        raise ConfigError(f"{n} empty or whitespace-only documents (or with no token; empty_docs=error); "
                          f"set empty_docs=keep to "
                          f"encode them as special tokens only (counted in the run record)")


# ---------------------------------------------------------------- folding


def doc_level(strategy) -> bool:
    return strategy.level == "document" or getattr(strategy, "pool_over", "logits") == "embeddings"


def fold_windows(logits: torch.Tensor, owner: Sequence[int], n_docs: int, pool: str) -> torch.Tensor:
    """Pool window logits (W, C) into document scores (n_docs, C). ``vote`` gives
    one vote per window's argmax; ties break by the mean logit."""
    c = logits.shape[1]
    owner_t = torch.as_tensor(owner, dtype=torch.long)
    if pool == "max":
        out = torch.full((n_docs, c), float("-inf"))
        return out.scatter_reduce(0, owner_t[:, None].expand(-1, c), logits, reduce="amax", include_self=True)
    mean = torch.zeros((n_docs, c)).index_add_(0, owner_t, logits)
    mean = mean / torch.bincount(owner_t, minlength=n_docs).clamp(min=1)[:, None]
    if pool == "mean":
        return mean
    if pool == "vote":
        votes = torch.zeros((n_docs, c)).index_add_(0, owner_t, F.one_hot(logits.argmax(1), c).float())
        return votes + torch.softmax(mean, dim=1) * 0.5  # a softmax share < 1 vote breaks ties only
    raise ConfigError(f"unknown pool {pool!r}")


# ---------------------------------------------------------------- models over groups


class ProbeModel(nn.Module):
    """Head over cached window vectors; a group is a (K, d) tensor."""

    def __init__(self, head: Head, d: int):
        super().__init__()
        self.head, self.d = head, d

    def forward(self, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        x, mask = pack(groups, self.d)  # (B, K, d), (B, K)
        dev = self.head.out.weight.device
        return self.head(x.to(dev), mask.to(dev))


class FinetuneModel(nn.Module):
    """Encoder + head end to end; a group is a list of token-id inputs."""

    def __init__(self, encoder: nn.Module, head: Head, pad_id: int, pooler: str, device: torch.device,
                 precision: str = "auto"):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.pad_id, self.pooler, self.device, self.precision = pad_id, pooler, device, precision

    def forward(self, groups: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
        flat = [inp for g in groups for inp in g]
        ids, mask = pad_batch(flat, self.pad_id)  # (sum K, L)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with autocast(self.device, "auto" if self.training else self.precision):
            hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (sum K, L, d)
        vec = pool_hidden(hidden.float(), mask, self.pooler)  # (sum K, d)
        sizes = [len(g) for g in groups]
        x, m = pack(list(torch.split(vec, sizes)), vec.shape[1])  # (B, K, d)
        return self.head(x.to(self.device), m.to(self.device))


def pooled_forward(encoder: nn.Module, pooler: str) -> Callable:
    """The inference forward the cost pass times for clf: the encoder and pooling of a batch of windows."""
    def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        return pool_hidden(encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float(), mask, pooler)

    return forward


def group_size(g) -> int:
    return int(g.shape[0]) if isinstance(g, torch.Tensor) else sum(len(x) for x in g)


def predict(model: nn.Module, groups: Sequence, batch_size: int, device: torch.device,
            desc: str | None = None) -> tuple[torch.Tensor, list[float], int]:
    """Logits per group, batched by size; each group's share (by tokens) of its batch's
    wall time; and the padded tokens the encoder saw (0 for cached vectors).

    Under a launcher a FinetuneModel's groups are split across processes (every
    world-th, padded to equal counts so every process runs as many batches) and the
    logits gathered back to every process by index, so each group is scored exactly
    once and every process holds the same logits. (``gather_for_metrics`` drops the
    padding of a prepared DataLoader's fixed-size batches; these batches are cut by
    length, so the padding is tagged and dropped here.) One process: all groups, in
    the batches this function always made."""

    model.eval()
    size, rank = world() if isinstance(model, FinetuneModel) else (1, 0)
    sizes = [group_size(g) for g in groups]
    todo, tags = strided_share(len(groups), rank, size)  # one process: range(n), nothing padded
    out: list[torch.Tensor | None] = [None] * len(todo)
    seconds = [0.0] * len(todo)
    padded = 0
    with torch.inference_mode():
        for batch in tqdm(length_batches([sizes[i] for i in todo], batch_size), desc=desc, disable=desc is None,
                          leave=False):
            sync(device)
            t0 = time.perf_counter()
            logits = model([groups[todo[p]] for p in batch]).float().cpu()
            sync(device)
            dt = time.perf_counter() - t0
            total = max(1, sum(sizes[todo[p]] for p in batch))
            if not isinstance(groups[todo[batch[0]]], torch.Tensor):
                inputs = [x for p in batch for x in groups[todo[p]]]
                padded += len(inputs) * max(len(x) for x in inputs)
            for j, p in enumerate(batch):
                out[p] = logits[j]
                seconds[p] = dt * sizes[todo[p]] / total
        if size > 1:
            return gather_by_index(tags, torch.stack(out), seconds, padded, len(groups))
    return torch.stack(out), seconds, padded


def fit(model: nn.Module, groups: Sequence, y: Sequence[int], evaluate: Callable[[nn.Module], float], spec,
        device: torch.device, progress: bool, weights: Sequence[float] | None = None, units: int | None = None
        ) -> dict[str, Any]:
    """Cross-entropy on the groups through the shared loop (tasks/model/train.py): AdamW with warm-up (or
    full-batch L-BFGS for probes); early stopping on validation macro-F1 under the epoch rule, or the steps
    of ``train.epochs`` passes over ``units`` training documents (``train.schedule=equal_steps``, the
    fine-tuning default); an end-to-end model trains data parallel under a launcher. ``weights``: per
    group (a batch's loss is their weighted mean)."""
    y_t = torch.as_tensor(y, dtype=torch.long)
    w_t = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    bs = spec.train.batch_size

    def batches(gen):
        order = torch.randperm(len(groups), generator=gen).tolist() if gen is not None else list(range(len(groups)))
        return [order[i: i + bs] for i in range(0, len(order), bs)]

    def loss(net, idx):
        out = net([groups[j] for j in idx])
        if w_t is None:
            return F.cross_entropy(out, y_t[list(idx)].to(device))
        w = w_t[list(idx)].to(device)
        return (F.cross_entropy(out, y_t[list(idx)].to(device), reduction="none") * w).sum() / w.sum()

    info = train_loop(model, batches, loss, spec.train, spec.seed, device, evaluate=evaluate,
                      tokens=lambda j: group_size(groups[j]), data_parallel=isinstance(model, FinetuneModel),
                      progress=progress, units=units)
    info["best_val_macro_f1"] = info.pop("best_val")
    return info


# ---------------------------------------------------------------- span cache

# The grid's windows are encoded in chunks of this many, and the span cache is saved to disk after any chunk that
# ends CHECKPOINT_S seconds or more after the last save: a sweep stopped in an hour-long encode loses minutes.
ENCODE_CHUNK = 8192
CHECKPOINT_S = 300.0


# ---------------------------------------------------------------- the task


@register_task("clf")
class Classification:
    Settings = ClfSettings
    version = "1"
    main_metric = "macro_f1"
    higher_is_better = True

    def sources(self) -> str:
        """The built-in data sets, for ``ctxbench list``."""

        return ", ".join(f"{k} ({v.description})" for k, v in SOURCES.items()) + " + any hub id (connected)"

    def data_label(self, spec) -> str:
        return "gold"

    @staticmethod
    def provenance(dataset: str) -> str:
        """What the packaged copy of a built-in data set is (printed with its tables; '' for others)."""
        return SOURCES[dataset].provenance if dataset in SOURCES else ""

    def summary(self, ctx: Context) -> GridReport:
        """Encoder cost of every strategy run at a budget (shared span cache) against one
        sliding pass alone, both summed from the same measured per-window times."""
        import json

        lines, rows = [], []
        for key, per_strategy in sorted((k, v) for k, v in ctx.memo.items() if k[0] == "grid-windows"):
            budget = key[1]
            cache = ctx.memo[("span-cache-of", budget)]
            sliding = next((v for k, v in per_strategy.items() if k.startswith("sliding")), None)
            if sliding is None or len(per_strategy) < 2:
                continue
            union = set().union(*per_strategy.values())
            t_all = sum(cache.seconds(k) for k in union)
            t_sliding = sum(cache.seconds(k) for k in sliding)
            ratio = t_all / max(t_sliding, 1e-12)
            tok_all, tok_sliding = (sum(window_len(k[2]) for k in keys) for keys in (union, sliding))
            measured = self._measured_sharing(ctx, budget, union, sliding)
            rows.append({**ctx.memo.get(("grid-of", budget), {}), "budget": budget, **measured,
                         "strategies": sorted(per_strategy), "windows_all": len(union),
                         "windows_sliding": len(sliding), "tokens_all": tok_all, "tokens_sliding": tok_sliding,
                         "token_ratio": tok_all / max(1, tok_sliding), "encoder_s_all": t_all,
                         "encoder_s_sliding": t_sliding, "ratio": ratio})
            lines.append(f"budget {budget}: encoder time of all {len(per_strategy)} strategies = {ratio:.2f}x one "
                         f"sliding pass ({t_all:.1f}s vs {t_sliding:.1f}s; {len(union)} vs {len(sliding)} windows, "
                         f"{tok_all / max(1, tok_sliding):.2f}x its tokens)")
            if measured:
                lines.append(f"budget {budget}: measured side by side on {measured['measured_docs']} test documents: "
                             f"the whole grid's windows take {measured['measured_ratio']:.2f}x one sliding pass "
                             f"({measured['measured_s_all']:.2f}s vs {measured['measured_s_sliding']:.2f}s, medians "
                             f"of {measured['measured_repeats']} interleaved passes)")

        def ident(r: dict) -> str:  # rows written before compute_dtype was recorded are CPU float32 runs
            return json.dumps([r.get(k) for k in ("dataset", "model", "data_seed", "limits", "budget")]
                              + [r.get("compute_dtype", "float32")], sort_keys=True)

        # one row per (sweep sample, compute dtype, budget): another sweep adds rows, never overwrites
        return GridReport(lines, {"encoder_sharing.json": (rows, ident)} if rows else {})

    @staticmethod
    def _measured_sharing(ctx: Context, budget: int, union: set, sliding: set) -> dict[str, Any]:
        """The encoder-sharing ratio measured, not summed from cached shares: the distinct windows of every
        strategy and those of sliding alone, on the cost sample's test documents, timed in turn."""
        if ("encoder-of", budget) not in ctx.memo:
            return {}
        enc, data, spec = ctx.memo[("encoder-of", budget)]
        docs = set(cost_sample(len(data.ids["test"]), spec.cost_docs, spec.data_seed))
        pick = {name: sorted(k for k in keys if k[0] == "test" and k[1] in docs)
                for name, keys in (("all", union), ("sliding", sliding))}
        inputs = {name: [build_input(enc.tokenizer, data.ids["test"][i], w) for _, i, w in keys]
                  for name, keys in pick.items()}
        if not inputs["sliding"]:
            return {}

        forward = pooled_forward(enc.model, spec.pooler)
        repeats = max(3, spec.cost_repeats)  # the cost pass's rule: the median of as many interleaved passes
        t = side_by_side(forward, inputs, enc.tokenizer.pad_token_id, ctx.device, spec.batch_size, spec.precision,
                         repeats)
        return {"measured_docs": len(docs), "measured_repeats": repeats, "measured_windows_all": len(inputs["all"]),
                "measured_windows_sliding": len(inputs["sliding"]), "measured_s_all": t["all"],
                "measured_s_sliding": t["sliding"], "measured_ratio": t["all"] / max(t["sliding"], 1e-12)}

    def cost_side_by_side(self, spec, ctx: Context, strategies: Sequence, repeats: int = 3) -> dict[str, dict]:
        """Every strategy's model inputs for the cost sample at ``spec.budget``, timed in turn in one pass
        (``side_by_side``: A, B, C, A, B, C ... after a warm-up each): on a shared machine the ratios between
        strategies hold where cells timed minutes apart drift. Seconds per batched pass at the sweep's batch
        size; a selection strategy's pass includes splitting and selecting the sample's documents
        (:meth:`select_one`, as in its cell's own cost pass)."""
        enc, _, data = self._data(spec, ctx)
        budget = usable_budget(enc.tokenizer, enc.max_positions, spec.budget)
        idx = cost_sample(len(data.ids["test"]), spec.cost_docs, spec.data_seed)
        ids = [data.ids["test"][i] for i in idx]
        sets: dict[str, list[list[int]]] = {}
        prepare: dict[str, Callable[[], Any]] = {}
        for st_spec in strategies:
            strategy = st_spec.build()
            if needs(strategy):
                one = self.select_one(spec, data, enc, strategy, budget)
                prepare[st_spec.label] = lambda one=one: [one(d) for d in range(len(idx))]
                windows = prepare[st_spec.label]()
            else:
                windows = [strategy.windows(len(x), budget) for x in ids]
            sets[st_spec.label] = [build_input(enc.tokenizer, x, w) for x, ws in zip(ids, windows) for w in ws]
        t = side_by_side(pooled_forward(enc.model, spec.pooler), sets, enc.tokenizer.pad_token_id, ctx.device,
                         spec.batch_size, spec.precision, repeats, prepare)
        return {k: {"seconds": v, "ms_per_doc": 1e3 * v / max(1, len(idx)), "docs": len(idx), "inputs": len(sets[k]),
                    "real_tokens": sum(len(x) for x in sets[k]), "selection_timed": k in prepare}
                for k, v in t.items()}

    @staticmethod
    def _data(spec, ctx: Context) -> tuple[Loaded, str, ClfData]:
        device = ctx.device
        enc: Loaded = ctx.get(("encoder", spec.model, str(device)), lambda: load_encoder(spec.model, device))
        mkey = ctx.get(("model_key", spec.model), lambda: model_key(enc))
        data: ClfData = ctx.get(("clf-data", spec.dataset, spec.text_col, spec.label_col, spec.data_seed, spec.limits,
                                 settings_of(spec), mkey), lambda: load_data(spec, enc.tokenizer, mkey))
        return enc, mkey, data

    def check_data(self, spec, ctx: Context) -> None:
        """The data-level checks (labels, empty documents, a tokenizer that leaves documents empty, text
        without sentence punctuation under sentence-based work), run by the runner once per data set
        before the grid; the loaded data is kept for the cells."""
        _, _, data = self._data(spec, ctx)
        check_empty(data, spec.empty_docs)
        cfg = settings_of(spec)
        same = [c for c in ctx.memo.get("cells", [spec]) if (c.dataset, c.settings) == (spec.dataset, spec.settings)]
        sentence_work = cfg.transform != "none" or any("sentences" in needs(c.strategy.build()) for c in same)
        n = sum(data.counts.get(f"unpunctuated_docs_{s}", 0) for s in SPLITS)
        if sentence_work and n and cfg.unpunctuated == "error":
            total = sum(len(data.ids[s]) for s in SPLITS)
            raise ConfigError(
                f"dataset {spec.dataset!r}: {n} of {total} sampled documents have no sentence punctuation (. ! ?), "
                f"so sentence selection / clf.transform would see one sentence per paragraph; set "
                f"clf.unpunctuated=words for the explicit fallback (pseudo-sentences of 20 words, counted) or drop "
                f"the sentence-based strategies")

    def run(self, spec, ctx: Context) -> CellResult:
        enc, mkey, data = self._data(spec, ctx)
        check_empty(data, spec.empty_docs)
        budget = usable_budget(enc.tokenizer, enc.max_positions, spec.budget)
        strategy = spec.strategy.build()
        windows, select_s, split_s = self._windows(strategy, ctx, data, enc, budget, settings_of(spec).fallback_words)
        seed_everything(spec.seed)
        d = enc.model.config.hidden_size
        head = Head(d, len(data.labels), aggregator=strategy.pool if doc_level(strategy) else "mean",
                    layers=getattr(strategy, "layers", 1), dropout=spec.train.dropout)
        if spec.mode == "probe":
            res = self._probe(spec, ctx, enc, mkey, data, windows, head, budget, strategy)
        else:
            res = self._finetune(spec, ctx, enc, data, windows, head, budget, strategy)
        if needs(strategy):  # sentence selection; for span strategies windows() is arithmetic, not a cost
            res.measurements.update(select_seconds_test=select_s["test"], select_seconds_all=sum(select_s.values()),
                                    sentence_split_seconds=split_s)
            if res.cost is not None:
                res.cost.prepare = self.select_one(spec, data, enc, strategy, budget)
        return res

    @staticmethod
    def select_one(spec, data: ClfData, enc: Loaded, strategy, budget: int) -> Callable[[int], Any]:
        """Cost-sample document ``d``'s sentence splitting and selection, as a reader of it would run them:
        what the cost pass times with the model's (``CostProbe.prepare``)."""
        from ctxbench.tasks.data.sentences import doc_views

        idx = cost_sample(len(data.ids["test"]), spec.cost_docs, spec.data_seed)
        fallback = settings_of(spec).fallback_words

        def prepare(d: int):
            ids = data.ids["test"][idx[d]]
            view = doc_views([data.texts["test"][idx[d]]], enc.tokenizer, lengths=[len(ids)], fallback_words=fallback)
            return strategy.windows(len(ids), budget, view[0])

        return prepare

    @staticmethod
    def _windows(strategy, ctx: Context, data: ClfData, enc: Loaded, budget: int, fallback: int | None = None):
        """Every document's windows, the time the strategy took to choose them per split (selection
        cost, reported apart from model time), and the time sentence splitting took: the views are
        built once per data set and shared by every selection cell (0.0 when none are needed)."""
        views, split_s = None, 0.0
        if "sentences" in needs(strategy):
            from ctxbench.tasks.data.sentences import doc_views

            def build():
                t0 = time.perf_counter()
                v = {s: doc_views(data.texts[s], enc.tokenizer, lengths=[len(x) for x in data.ids[s]],
                                  fallback_words=fallback) for s in SPLITS}
                return v, time.perf_counter() - t0

            views, split_s = ctx.get(("sentences", data.key, id(enc.tokenizer), fallback), build)
        windows, seconds = {}, {}
        for s in SPLITS:
            windows[s], seconds[s] = [], 0.0
            for i, ids in enumerate(data.ids[s]):
                ws, sec = timed_windows(strategy, len(ids), budget, views[s][i] if views else None)
                windows[s].append(ws)
                seconds[s] += sec
        return windows, seconds, split_s

    # groups: a document's windows (doc level) or one window each (window level)
    @staticmethod
    def groups(split: str, windows: list[list[Window]], as_doc: bool, item: Callable) -> tuple[list, list[int]]:
        groups, owner = [], []
        for i, ws in enumerate(windows):
            if as_doc:
                groups.append(item(split, i, ws))
                owner.append(i)
            else:
                for w in ws:
                    groups.append(item(split, i, [w]))
                    owner.append(i)
        return groups, owner

    def _train_eval(self, spec, ctx, model, data, windows, strategy, item, train_windows=None):
        as_doc = doc_level(strategy)
        train_windows = train_windows or windows["train"]
        g_train, own_train = self.groups("train", train_windows, as_doc, item)
        y_train = [data.y["train"][i] for i in own_train]
        g_val, own_val = self.groups("val", windows["val"], as_doc, item)

        def doc_scores(split, groups, owner, desc=None):
            logits, secs, padded = predict(model, groups, spec.batch_size, ctx.device, desc)
            n = len(data.y[split])
            scores = logits if as_doc else fold_windows(logits, owner, n, strategy.pool)
            return scores, secs, padded

        def evaluate(m) -> float:
            scores, _, _ = doc_scores("val", g_val, own_val)
            return f1_score(data.y["val"], scores.argmax(1).numpy(), average="macro", zero_division=0)

        weights = None
        if not as_doc and settings_of(spec).window_weight == "document":
            per_doc = np.bincount(own_train, minlength=len(train_windows))
            weights = [1.0 / per_doc[i] for i in own_train]
        train_info = fit(model, g_train, y_train, evaluate, spec, ctx.device, ctx.progress, weights,
                         units=len(train_windows))  # train.schedule=equal_steps counts documents
        g_test, own_test = self.groups("test", windows["test"], as_doc, item)
        t0 = time.perf_counter()
        scores, secs, padded = doc_scores("test", g_test, own_test, "predict" if ctx.progress else None)
        wall = time.perf_counter() - t0
        per_doc = np.zeros(len(data.y["test"]))
        np.add.at(per_doc, own_test, secs)
        return scores, per_doc, wall, padded, train_info

    def _probe(self, spec, ctx, enc, mkey, data, windows, head, budget, strategy) -> CellResult:
        dtype = compute_dtype_name(ctx.device, spec.precision)  # vectors differ by compute dtype
        cache: WindowCache = ctx.get(("spans", data.key, mkey, spec.pooler, dtype), lambda: WindowCache(
            cache_dir("spans") / f"{content_hash(data.key, mkey, spec.pooler, dtype, self.version)}.pt"))
        keys = [(s, i, w) for s in SPLITS for i, ws in enumerate(windows[s]) for w in ws]
        t0 = time.perf_counter()
        missing = cache.missing(self._grid_keys(spec, ctx, data, enc, budget, keys))
        inputs = [build_input(enc.tokenizer, data.ids[split][i], w) for split, i, w in missing]
        chunks = length_batches([len(x) for x in inputs], ENCODE_CHUNK)  # chunks of like length: little padding
        saved = time.perf_counter()
        for c, part in enumerate(chunks, 1):
            got = encode(enc.model, [inputs[j] for j in part], enc.tokenizer.pad_token_id, ctx.device, spec.pooler,
                         spec.batch_size, precision=spec.precision,
                         progress=f"encode windows {c}/{len(chunks)}" if ctx.progress else None)
            cache.fill([missing[j] for j in part], got.vectors, got.seconds, got.widths)
            if time.perf_counter() - saved > CHECKPOINT_S:  # a stopped encode resumes from here
                cache.save()
                saved = time.perf_counter()
        n_new = len(missing)
        encode_wall = time.perf_counter() - t0
        cache.save()
        ctx.memo.setdefault(("grid-windows", budget), {})[spec.strategy.label] = set(keys)
        ctx.memo[("span-cache-of", budget)] = cache
        ctx.memo[("encoder-of", budget)] = (enc, data, spec)
        ctx.memo[("grid-of", budget)] = {"dataset": spec.dataset, "model": spec.model, "data_seed": spec.data_seed,
                                         "limits": asdict(spec.limits), "compute_dtype": dtype}

        def item(split, i, ws):
            return torch.stack([cache.output((split, i, w)) for w in ws])  # (K, d)

        model = ProbeModel(head, enc.model.config.hidden_size).to(ctx.device)
        scores, head_per_doc, _, _, train_info = self._train_eval(spec, ctx, model, data, windows, strategy, item)
        enc_per_doc = np.array([sum(cache.seconds(("test", i, w)) for w in ws) for i, ws in enumerate(windows["test"])])
        padded = sum(cache.width(("test", i, w)) for i, ws in enumerate(windows["test"]) for w in ws)
        measurements = self.measure(spec, enc, data, windows, budget, enc_per_doc + head_per_doc, padded)
        measurements.update(encode_wall_s=encode_wall, windows_encoded_now=n_new,
                            span_cache_hits=len(set(keys)) - n_new, encoder_seconds_test=float(enc_per_doc.sum()),
                            timing="encoder: tokens-apportioned batch time when the window was encoded "
                                   "(span cache); head: measured now", **train_info)
        res = self.result(spec, enc, data, windows, budget, scores, measurements, head)
        res.cost = self.cost_probe(spec, enc.model, enc.tokenizer, data, windows)
        return res

    @staticmethod
    def _grid_keys(spec, ctx: Context, data: ClfData, enc: Loaded, budget: int, keys: list[tuple]) -> list[tuple]:
        """The first probe cell at a budget encodes the windows of every probe cell of the
        grid that shares its data, model and budget, in one length-sorted pass."""
        memo = ("prefetched", data.key, spec.model, spec.pooler, budget)
        if memo in ctx.memo:
            return keys
        ctx.memo[memo] = True
        same = [c for c in ctx.memo.get("cells", ()) if c.mode == "probe" and c.task == spec.task
                and (c.dataset, c.model, c.pooler, c.budget, c.limits, c.data_seed, c.text_col, c.label_col,
                     c.settings) == (spec.dataset, spec.model, spec.pooler, spec.budget, spec.limits, spec.data_seed,
                                     spec.text_col, spec.label_col, spec.settings)]
        out = list(keys)
        for strat in {c.strategy for c in same} - {spec.strategy}:
            windows, _, _ = Classification._windows(strat.build(), ctx, data, enc, budget,
                                                    settings_of(spec).fallback_words)
            out += [(s, i, w) for s in SPLITS for i, ws in enumerate(windows[s]) for w in ws]
        return out

    def _finetune(self, spec, ctx, enc, data, windows, head, budget, strategy) -> CellResult:
        cap = spec.train.max_windows_train
        train_windows = capped(windows["train"], cap)
        n_groups = len(train_windows) if doc_level(strategy) else sum(len(ws) for ws in train_windows)
        fresh = load_encoder(spec.model, ctx.device)  # a fresh copy: fine-tuning must not touch the shared encoder
        # full | lora | adalora | prefix | ia3 (a "<model>@<n>" name arrives position-extended from resolve_model)
        steps = optimizer_steps(ceil_div(n_groups, spec.train.batch_size), spec.train, units=len(train_windows))
        encoder = apply_peft(fresh.model, spec.train, steps,
                             longest_input=budget + enc.tokenizer.num_special_tokens_to_add(pair=False))
        model = FinetuneModel(encoder, head, enc.tokenizer.pad_token_id, spec.pooler, ctx.device,
                              spec.precision).to(ctx.device)

        def item(split, i, ws):
            return [build_input(enc.tokenizer, data.ids[split][i], w) for w in ws]

        scores, per_doc, wall, padded, train_info = self._train_eval(spec, ctx, model, data, windows, strategy,
                                                                    item, train_windows)
        measurements = self.measure(spec, enc, data, windows, budget, per_doc, padded)
        measurements.update(predict_wall_s=wall, trainable_params=n_params(model, trainable=True),
                            total_params=n_params(model), timing="measured now (tokens-apportioned batch time)",
                            **train_info)
        res = self.result(spec, enc, data, windows, budget, scores, measurements, head)
        res.cost = self.cost_probe(spec, encoder.eval(), enc.tokenizer, data, windows)
        del model, encoder, fresh
        return res

    @staticmethod
    def cost_probe(spec, encoder: nn.Module, tokenizer, data: ClfData, windows) -> CostProbe:
        """The strategy's model inputs for the cost sample, and the inference forward to time on them:
        the encoder and pooling of every window (the head on pooled vectors, a few thousand FLOPs per
        document, is not in it)."""
        idx = cost_sample(len(data.ids["test"]), spec.cost_docs, spec.data_seed)
        inputs = [[build_input(tokenizer, data.ids["test"][i], w) for w in windows["test"][i]] for i in idx]

        return CostProbe(pooled_forward(encoder, spec.pooler), inputs, tokenizer.pad_token_id,
                         key=("clf", spec.model, spec.mode, spec.train.finetune, spec.pooler), module=encoder)

    # ------------------------------------------------------------ measurements and metrics

    def measure(self, spec, enc, data, windows, budget, per_doc_s, padded_tokens) -> dict[str, Any]:
        special = enc.tokenizer.num_special_tokens_to_add(pair=False)
        n = np.array([len(x) for x in data.ids["test"]])
        return cost_measures([[window_len(w) + special for w in ws] for ws in windows["test"]], n,
                             np.minimum(n, budget) + special, [covered(ws) for ws in windows["test"]], per_doc_s,
                             padded_tokens, getattr(enc.model, "config", None))

    def result(self, spec, enc, data, windows, budget, scores, measurements, head) -> CellResult:
        y = np.array(data.y["test"])
        pred = scores.argmax(1).numpy()
        n = [len(x) for x in data.ids["test"]]
        buckets = [length_bucket(k, budget) for k in n]
        metrics = {"accuracy": float(accuracy_score(y, pred)),
                   "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0))}
        for b in LENGTH_BUCKETS:
            idx = [i for i, x in enumerate(buckets) if x == b]
            metrics[f"bucket[{b}].n"] = len(idx)
            if idx:
                metrics[f"bucket[{b}].accuracy"] = float(accuracy_score(y[idx], pred[idx]))
                metrics[f"bucket[{b}].macro_f1"] = float(f1_score(y[idx], pred[idx], average="macro",
                                                                  zero_division=0))
        preds = [{"i": i, "label": data.labels[y[i]], "pred": data.labels[pred[i]], "correct": bool(y[i] == pred[i]),
                  "n_tokens": n[i], "bucket": buckets[i], "spans": [list(map(list, w)) for w in windows["test"][i]]}
                 for i in range(len(y))]
        info = {"budget": budget, "attn_implementation": enc.attn_implementation, "dtype": enc.dtype,
                "labels": len(data.labels), **data.counts}
        if spec.dataset in SOURCES and SOURCES[spec.dataset].provenance:
            info["provenance"] = SOURCES[spec.dataset].provenance
        return CellResult(metrics, measurements, preds, info)
