"""The perf suite's fixed workload: synthetic documents, the cells, and how one cell
is run and how its peak memory is measured.

Why a module of its own: the timed rounds (pytest-benchmark, in the pytest
process) and the memory run (on CPU, a child process that runs only that cell)
must execute exactly the same code, and the child imports it by name.

Memory, by device:

- CUDA: ``torch.cuda.reset_peak_memory_stats()`` before one run of the cell,
  ``max_memory_allocated()`` after it, in the pytest process (CUDA's allocator
  statistics are exact per process, so no child is needed).
- CPU with isolation (the default): a fresh child process (forked from a
  forkserver that has only *imported* torch/transformers, so the fork is safe and
  start-up takes a fraction of a second) loads the model, builds the cell's
  inputs, resets the kernel's RSS high-water mark (``/proc/self/clear_refs``),
  runs the cell once and reads ``VmHWM``. ``peak_memory_mb`` is that process's
  peak RSS while running the cell (libraries + weights + the cell's working set);
  ``cell_memory_mb`` is the rise above the RSS just before the cell. Where
  ``clear_refs`` is unavailable it falls back to ``ru_maxrss`` (whole child).
- CPU without isolation: the same high-water-mark reset inside the pytest
  process. Cheaper, but freed-and-kept allocator memory from earlier cells leaks
  into the baseline, which is why isolation is the default.
"""
from __future__ import annotations

import dataclasses
import time

import copy
import os
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import transformers  # noqa: F401  (preloaded in the forkserver)
from transformers import AutoModel, AutoTokenizer  # noqa: F401  (preloaded in the forkserver)

import ctxbench.strategies as strategies
from ctxbench.tasks.model.flops import forward_flops
from ctxbench.tasks.model.measure import current_rss_mb, reset_rss_peak, rss_peak_mb
from ctxbench.tasks.model.encoder import Loaded, build_input, encode, load_encoder, max_positions, sync, usable_budget

# The suite's strategies: the sweep's defaults, with the window caps lowered so a 2-core CPU
# runs the whole suite in a few minutes. (name, params)
STRATEGIES: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
    ("head", ()),
    ("tail", ()),
    ("head_tail", ()),
    ("sliding", (("max_windows", 8),)),
    ("hierarchical", (("max_chunks", 8),)),
)


@dataclass(frozen=True)
class Workload:
    """Everything that fixes what a perf run computes; recorded in every result.

    ``budgets``: ``None`` means the model's whole room (510 for MiniLM's 512 positions).
    """

    model: str = "minilm"
    doc_lengths: tuple[int, ...] = (2048, 384)
    budgets: tuple[int | None, ...] = (64, 128, 256, None)
    seed: int = 0
    batch_size: int = 64
    finetune_batch: int = 4
    n_labels: int = 4
    # test hooks that prove the gate (never defaults): slow every timed run by this share of throughput,
    # and hold this share of the run's starting RSS (or CUDA allocation) extra while it runs
    plant_slowdown: float = 0.0
    plant_memory: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Cell:
    """One benchmark: inference of a strategy at a budget, or one fine-tune step at a budget."""

    kind: str  # "infer" | "finetune"
    strategy: str
    params: tuple[tuple[str, Any], ...]
    budget: int | None

    @property
    def label(self) -> str:
        if not self.params:
            return self.strategy
        return self.strategy + "[" + ",".join(f"{k}={v}" for k, v in self.params) + "]"

    @property
    def id(self) -> str:
        return f"{self.strategy}-b{self.budget if self.budget is not None else 'max'}"


def cells(workload: Workload) -> list[Cell]:
    """Inference for every strategy x budget, then one fine-tune step per budget."""
    out = [Cell("infer", name, params, b) for name, params in STRATEGIES for b in workload.budgets]
    out += [Cell("finetune", "sliding", (), b) for b in workload.budgets]
    return out


# ------------------------------------------------------------------ models and inputs


def load_model(name: str, device: torch.device) -> Loaded:
    """The packaged model (or any ``load_encoder`` name), or ``tiny``: a random 2-layer
    BertConfig model (hidden size 32, 130 positions) with MiniLM's tokenizer, for tests."""
    if name != "tiny":
        return load_encoder(name, device)
    from transformers import BertConfig

    from ctxbench.tasks.model.packaged import minilm_path

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, attn_implementation="sdpa").to(device)
    attn = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    return Loaded(tokenizer, model, "tiny-random-bert", max_positions(tokenizer, config), attn, "float32")


def synthetic_ids(tokenizer: Any, lengths: tuple[int, ...] | list[int], seed: int) -> list[list[int]]:
    """Fixed random token ids (never special tokens): the same documents on every machine."""
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    g = torch.Generator().manual_seed(seed)
    return [allowed[torch.randint(len(allowed), (n,), generator=g)].tolist() for n in lengths]


def resolve_budget(enc: Loaded, budget: int | None) -> int:
    return usable_budget(enc.tokenizer, enc.max_positions, budget)


@dataclass
class Prepared:
    """A cell ready to run: ``run()`` is what gets timed (one round)."""

    cell: Cell
    budget: int
    run: Callable[[], None]
    lengths: list[int]  # real lengths (specials included) of the model inputs of one round
    flops: float  # model FLOPs of one round's real tokens (bench.flops)
    padded_width: Callable[[], int]  # padded tokens of the last round
    docs: int
    windows: int

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    def info(self) -> dict[str, Any]:
        padded = self.padded_width()
        return {"kind": self.cell.kind, "strategy": self.cell.label, "budget": self.budget, "docs": self.docs,
                "windows": self.windows, "real_tokens": self.real_tokens, "padded_tokens": padded,
                "padding_waste": 1.0 - self.real_tokens / padded if padded else None, "flops": self.flops}


def busy(device: torch.device, seconds: float) -> None:
    """The planted slowdown's extra time, spent computing as a slower forward would (matmuls on the
    same device and threads) rather than sleeping: the gate reads rounds per unit of machine work, with
    a matmul rate sampled right after the previous round, and a plant should load the machine the way
    the regression it stands for does. (A slowdown spent idle, e.g. waiting on a lock, is not modelled.)"""
    a = torch.randn(256, 256, device=device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)  # (256, 256): bounded values, never inf
        sync(device)


def prepare(enc: Loaded, workload: Workload, cell: Cell, device: torch.device) -> Prepared:
    """Build the cell's inputs once (untimed) and return its timed callable (with the workload's
    planted slowdown or memory, when a gate test asks for them)."""
    prepared = _prepare(enc, workload, cell, device)
    if not (workload.plant_slowdown or workload.plant_memory):
        return prepared
    run = prepared.run

    def planted() -> None:
        extra = None
        if workload.plant_memory:
            have = (torch.cuda.memory_allocated(device) if device.type == "cuda"
                    else (current_rss_mb() or 0.0) * 2**20)
            extra = torch.ones(int(workload.plant_memory * have) // 4 + 1, dtype=torch.float32, device=device)
        t0 = time.perf_counter()
        run()
        if workload.plant_slowdown:  # throughput x (1 - s): the run takes 1 / (1 - s) as long
            busy(device, (time.perf_counter() - t0) * workload.plant_slowdown / (1.0 - workload.plant_slowdown))
        del extra

    return dataclasses.replace(prepared, run=planted)


def _prepare(enc: Loaded, workload: Workload, cell: Cell, device: torch.device) -> Prepared:
    budget = resolve_budget(enc, cell.budget)
    docs = synthetic_ids(enc.tokenizer, workload.doc_lengths, workload.seed)
    strategy = strategies.build(cell.strategy, **dict(cell.params))
    windows = [(ids, w) for ids in docs for w in strategy.windows(len(ids), budget)]
    pad_id = enc.tokenizer.pad_token_id
    if cell.kind == "infer":
        inputs = [build_input(enc.tokenizer, ids, w) for ids, w in windows]
        last: dict[str, int] = {"padded": 0}

        def run() -> None:
            out = encode(enc.model, inputs, pad_id, device, batch_size=workload.batch_size)
            last["padded"] = out.padded_tokens

        lengths = [len(x) for x in inputs]
        return Prepared(cell, budget, run, lengths, forward_flops(enc.model, lengths, device),
                        lambda: last["padded"], len(docs), len(inputs))
    if cell.kind == "finetune":
        return _prepare_finetune(enc, workload, cell, device, budget, docs, strategy)
    raise ValueError(f"unknown cell kind {cell.kind!r}")


def _prepare_finetune(enc: Loaded, workload: Workload, cell: Cell, device: torch.device, budget: int,
                      docs: list[list[int]], strategy: Any) -> Prepared:
    """One AdamW step of the clf task's end-to-end model (``ctxbench.tasks.clf.FinetuneModel``) on a
    fixed batch of ``finetune_batch`` windows, taken round-robin over the documents' windows."""
    from ctxbench.tasks.model.encoder import Head
    from ctxbench.tasks.clf import FinetuneModel  # the real fine-tune path, not a copy of it

    per_doc = [[build_input(enc.tokenizer, ids, w) for w in strategy.windows(len(ids), budget)] for ids in docs]
    picked: list[list[int]] = []
    i = 0
    while len(picked) < workload.finetune_batch:
        doc = per_doc[i % len(per_doc)]
        k = i // len(per_doc)
        if k < len(doc):
            picked.append(doc[k])
        i += 1
        if i > workload.finetune_batch * len(per_doc) * 64:
            raise ValueError("not enough windows for the fine-tune batch")
    groups = [[x] for x in picked]  # window-level training: each window is one example
    encoder = copy.deepcopy(enc.model)  # fine-tuning must not change the shared encoder
    head = Head(enc.model.config.hidden_size, workload.n_labels)
    model = FinetuneModel(encoder, head, enc.tokenizer.pad_token_id, "mean", device).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    y = torch.arange(len(groups), device=device) % workload.n_labels

    def run() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(groups), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)

    lengths = [len(x) for x in picked]
    width = len(lengths) * max(lengths)
    return Prepared(cell, budget, run, lengths, forward_flops(encoder, lengths, device, backward=True), lambda: width,
                    len(docs), len(picked))


# ------------------------------------------------------------------ memory


def memory_in_process(prepared: Prepared, device: torch.device) -> dict[str, Any]:
    """Peak memory of one run of an already prepared cell in this process."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        prepared.run()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_memory_mb": peak / 2**20, "cell_memory_mb": (peak - before) / 2**20,
                "memory_method": "cuda_max_allocated (reset_peak_memory_stats before one run)"}
    before = current_rss_mb()
    ok = reset_rss_peak()
    prepared.run()
    peak = rss_peak_mb()
    return {"peak_memory_mb": peak, "cell_memory_mb": peak - before if ok and before is not None else None,
            "memory_method": "cpu_rss_hwm_in_process (clear_refs reset before one run)" if ok
            else "cpu_ru_maxrss_in_process (whole process lifetime)"}


def _child(conn: Any, workload: Workload, cell: Cell, threads: int) -> None:
    """Child process: load, prepare, reset the RSS peak, run the cell once, report."""
    try:
        torch.set_num_threads(threads)
        device = torch.device("cpu")
        enc = load_model(workload.model, device)
        prepared = prepare(enc, workload, cell, device)
        before = current_rss_mb()
        ok = reset_rss_peak()
        prepared.run()
        peak = rss_peak_mb()
        conn.send({
            "peak_memory_mb": peak,
            "cell_memory_mb": peak - before if ok and before is not None else None,
            "rss_before_cell_mb": before,
            "memory_method": ("cpu_peak_rss_isolated_child (clear_refs reset after model load, one run)" if ok
                              else "cpu_ru_maxrss_isolated_child (whole child lifetime)"),
            "child_pid": os.getpid(),
        })
    except BaseException:  # report anything, including MemoryError, to the parent
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


_CONTEXT: Any = None


def _mp_context() -> Any:
    """A forkserver that has imported this module (torch, transformers, bench) but run no
    torch op: children fork from it in milliseconds and start with no OpenMP pool to break."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing as mp

        # the forkserver is a fresh interpreter of this venv: it finds the installed ctxbench itself;
        # tokenizers must not start threads before forking
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["ctxbench.bench.perf.workload", "ctxbench.tasks.clf"])
        except ValueError:  # no forkserver on this platform
            ctx = mp.get_context("spawn")
        _CONTEXT = ctx
    return _CONTEXT


def memory_isolated(workload: Workload, cell: Cell, threads: int, timeout: float = 600.0) -> dict[str, Any]:
    """Peak RSS of a child process that ran only this cell (CPU)."""
    ctx = _mp_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, workload, cell, threads), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            proc.kill()
            raise RuntimeError(f"memory child for {cell.id} ({cell.kind}) did not finish in {timeout:.0f}s")
        try:
            out = recv.recv()
        except EOFError:
            proc.join(5)
            raise RuntimeError(f"memory child for {cell.id} ({cell.kind}) died (exit code {proc.exitcode})") from None
    finally:
        proc.join(30)
        recv.close()
    if "error" in out:
        raise RuntimeError(f"memory child for {cell.id} ({cell.kind}) failed:\n{out['error']}")
    return out

