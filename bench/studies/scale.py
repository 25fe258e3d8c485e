"""``ctxbench scale``: how the work and the inference time of each strategy grow with document length.

Why: the strategies trade coverage for compute. Head, tail and head+tail read a
fixed ``budget`` whatever the document's length; sliding windows and
hierarchical chunks read all of it, so their cost must grow linearly. This
command measures that on synthetic documents of 512 ... 65,536 tokens at a fixed
budget, fits the growth, and writes a table and a plot.

For each strategy and length it encodes every window (``ctxbench.tasks.model.encoder.encode``:
length-sorted batches, real tokens counted apart from padding) and reports the
median time of up to ``--repeats`` runs after a warm-up. Cells whose runs add up
to more than ``--cell-seconds`` stop early (the number of runs is in the table):
the longest sliding cells take tens of seconds on a laptop CPU, where the
median of one long run is already stable. A matmul calibration sample
(``ctxbench.tasks.model.flops.Calibrator``) is taken right before every timed run, so each
cell's time can be rescaled to the run's median machine speed (``norm_s``): on
a shared machine the speed drifts during a 10-minute run. Growth is fitted on
log-log axes (``log2 y = e * log2 n + c``) over the upper half of the lengths:
an exponent near 0 is flat, near 1 linear. The linear slopes (tokens per
document token, ms per 1,000 document tokens) are reported too. Utilisation is
the model FLOPs of the real tokens (``ctxbench.tasks.model.flops``) per second, as a share of
the matmul rate measured next to the cell.

Cost: the default range (to 65,536 tokens, MiniLM, budget 510) needs about 4
CPU-minutes per core pair (about 10 minutes wall on a busy shared 2-core VM) and
seconds on a GPU; ``--max-len 16384`` takes about a quarter of that.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

STRATEGIES = ("head", "tail", "head_tail", "sliding", "hierarchical")


@dataclass(frozen=True)
class ScaleConfig:
    model: str = "minilm"
    budget: int | None = None  # None: the model's room (510 for MiniLM's 512 positions)
    min_len: int = 512
    max_len: int = 65536
    strategies: tuple[str, ...] = STRATEGIES
    repeats: int = 3
    cell_seconds: float = 20.0
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    threads: int | None = None


def lengths(min_len: int, max_len: int) -> list[int]:
    """Powers of two from ``min_len`` to ``max_len`` (both rounded to powers of two)."""
    if min_len < 1 or max_len < min_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    lo, hi = math.ceil(math.log2(min_len)), math.floor(math.log2(max_len))
    return [2**k for k in range(lo, hi + 1)]


def growth(exponent: float) -> str:
    if math.isnan(exponent):
        return "–"
    if abs(exponent) < 0.15:
        return "flat"
    if abs(exponent - 1.0) < 0.15:
        return "linear"
    return f"~n^{exponent:.2f}"


def measure(cfg: ScaleConfig, progress: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Time every strategy x length; returns the long table and the run's metadata."""
    import torch

    import ctxbench.strategies as strategies
    from ctxbench.tasks.model.flops import Calibrator, forward_flops, utilisation
    from ctxbench.tasks.model.measure import device_name, versions
    from ctxbench.tasks.model.encoder import build_input, encode, pick_device
    from ctxbench.bench.perf.workload import load_model, resolve_budget, synthetic_ids
    from ctxbench.bench.perf.check import machine_id, usable_cpus

    device = pick_device(cfg.device)
    threads = cfg.threads or usable_cpus()
    torch.set_num_threads(threads)
    enc = load_model(cfg.model, device)
    budget = resolve_budget(enc, cfg.budget)
    (doc,) = synthetic_ids(enc.tokenizer, [cfg.max_len], cfg.seed)  # prefixes give the shorter documents
    pad_id = enc.tokenizer.pad_token_id
    calibrator = Calibrator(device)
    cal_before = calibrator.measure()

    def inputs_for(name: str, n: int) -> list[list[int]]:
        strat = strategies.build(name)
        ids = doc[:n]
        return [build_input(enc.tokenizer, ids, w) for w in strat.windows(n, budget)]

    def run(inputs: list[list[int]]) -> Any:
        return encode(enc.model, inputs, pad_id, device, batch_size=cfg.batch_size)

    for name in cfg.strategies:  # warm-up: every batch shape the cells will use
        run(inputs_for(name, min(cfg.min_len * 2, cfg.max_len)))
    rows = []
    for name in cfg.strategies:
        for n in lengths(cfg.min_len, cfg.max_len):
            inputs = inputs_for(name, n)
            times: list[float] = []
            out = None
            cals: list[float] = []
            while len(times) < cfg.repeats:
                cals.append(calibrator.sample())  # untimed, right before the run it normalises
                t0 = time.perf_counter()
                out = run(inputs)  # encode synchronises CUDA before returning
                times.append(time.perf_counter() - t0)
                if sum(times) > cfg.cell_seconds:
                    break
            med = statistics.median(times)
            lens = [len(x) for x in inputs]
            flops = forward_flops(enc.model, lens, device)
            row = {"strategy": name, "doc_len": n, "windows": len(inputs), "real_tokens": out.real_tokens,
                   "padded_tokens": out.padded_tokens, "padding_waste": 1 - out.real_tokens / max(1, out.padded_tokens),
                   "median_s": med, "runs": len(times), "tokens_per_s": out.real_tokens / med,
                   "flops": flops, "achieved_gflops": flops / med / 1e9,
                   "calib_gflops": statistics.median(cals),
                   "utilisation": utilisation(flops, med, statistics.median(cals))}
            rows.append(row)
            if progress:
                print(f"  {name:<13} n={n:>6}: {row['windows']:>4} windows, {row['real_tokens']:>7} tokens, "
                      f"{med:8.3f} s (median of {len(times)}), {row['tokens_per_s']:>8.0f} tok/s, "
                      f"utilisation {row['utilisation']:.1%}, padding waste {row['padding_waste']:.1%}", flush=True)
    cal_after = calibrator.measure()
    df = pd.DataFrame(rows)
    # calibrated time: each cell's time at the run's median matmul rate (slower machine -> lower calib -> scaled down)
    df["norm_s"] = df["median_s"] * df["calib_gflops"] / df["calib_gflops"].median()
    v = versions()
    meta = {
        "config": asdict(cfg), "budget": budget, "machine_id": machine_id(str(device)),
        "device_name": device_name(device), "threads": threads, "model_path": enc.path,
        "attn_implementation": enc.attn_implementation,
        "dtype": "bfloat16 autocast" if device.type == "cuda" else enc.dtype,
        "torch": v.get("torch"), "transformers": v.get("transformers"),
        "calibration_gflops": {"before": cal_before, "after": cal_after, "n": calibrator.n,
                               "dtype": str(calibrator.dtype).replace("torch.", "")},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return df, meta


def fit(df: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per strategy: log-log growth exponents and linear slopes of tokens and time vs document length.

    Only lengths at or above the budget count (below it every strategy reads the whole
    document). The exponents are fitted over the upper half of those lengths (when there are
    at least four), where fixed per-document costs (the end-aligned last window, per-call
    overhead) no longer hide the asymptotic growth; the linear slopes use all of them. Time is
    the calibrated time (``norm_s``) when present, so a shared machine that speeds up or slows
    down during the run does not bend the curve; the raw exponent is reported alongside.
    """
    out = []
    for name, g in df.groupby("strategy", sort=False):
        g = g[g["doc_len"] >= budget] if (g["doc_len"] >= budget).sum() >= 2 else g
        upper = g.iloc[len(g) // 2:] if len(g) >= 4 else g
        tcol = "norm_s" if "norm_s" in g else "median_s"

        def exponent(frame: pd.DataFrame, col: str) -> float:
            return float(np.polyfit(np.log2(frame["doc_len"].to_numpy(float)),
                                    np.log2(frame[col].to_numpy(float)), 1)[0])

        def slope(frame: pd.DataFrame, col: str) -> float:
            v = float(np.polyfit(frame["doc_len"].to_numpy(float), frame[col].to_numpy(float), 1)[0])
            return 0.0 if abs(v) < 1e-9 else v

        if len(g) >= 2:
            e_tok, e_time, e_raw = exponent(upper, "real_tokens"), exponent(upper, tcol), exponent(upper, "median_s")
            s_tok, s_time = slope(g, "real_tokens"), slope(g, tcol) * 1e3 * 1e3  # s per doc token -> ms per 1k
        else:
            e_tok = e_time = e_raw = s_tok = s_time = float("nan")
        out.append({"strategy": name, "tokens exponent": e_tok, "tokens growth": growth(e_tok),
                    "time exponent": e_time, "time growth": growth(e_time), "raw time exponent": e_raw,
                    "tokens per doc token": s_tok, "ms per 1k doc tokens": s_time,
                    "median utilisation": float(g["utilisation"].median())})
    return pd.DataFrame(out)


def _fits_display(fits: pd.DataFrame) -> pd.DataFrame:
    out = fits.copy()
    def num(v: float, fmt: str) -> str:
        text = fmt.format(v)
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"

    for col in ("tokens exponent", "time exponent", "raw time exponent"):
        out[col] = out[col].map(lambda v: num(v, "{:.2f}"))
    for col in ("tokens per doc token", "ms per 1k doc tokens"):
        out[col] = out[col].map(lambda v: num(v, "{:.3g}"))
    out["median utilisation"] = out["median utilisation"].map(lambda v: f"{v:.1%}")
    return out


def render(df: pd.DataFrame, fits: pd.DataFrame, meta: dict[str, Any]) -> str:
    from tabulate import tabulate

    cal = meta["calibration_gflops"]
    lines = [
        f"# Scaling with document length ({meta['machine_id']})", "",
        f"Model `{meta['config']['model']}` ({meta['attn_implementation']}, {meta['dtype']}), budget {meta['budget']} "
        f"tokens, {meta['device_name']}, {meta['threads']} threads, torch {meta['torch']}, "
        f"transformers {meta['transformers']}. Matmul calibration {cal['before']:.1f} GFLOP/s before, "
        f"{cal['after']:.1f} after ({cal['n']}x{cal['n']} {cal['dtype']}). Generated by `ctxbench scale` "
        f"on {meta['created_at']}.", "",
        "## Growth fit (log-log, upper half of the lengths >= budget; exponent 0 = flat, 1 = linear)", "",
        "Time is calibrated: each cell's median time rescaled to the run's median matmul rate, measured "
        "right before each timed run; `raw time exponent` uses the wall times as measured.", "",
        tabulate(_fits_display(fits), headers="keys", tablefmt="github", showindex=False, disable_numparse=True), "",
    ]
    pivots = [("Real tokens processed", "real_tokens", "{:.0f}"), ("Median inference time (s)", "median_s", "{:.3f}"),
              ("Calibrated time (s, at the run's median matmul rate)", "norm_s", "{:.3f}"),
              ("Utilisation (% of the matmul rate measured next to the cell)", "utilisation", "{:.1%}"),
              ("Timed runs per cell", "runs", "{:.0f}")]
    order = list(dict.fromkeys(df["strategy"]))
    for title, col, fmt in pivots:
        p = df.pivot(index="strategy", columns="doc_len", values=col).reindex(order)
        body = [[s, *[fmt.format(v) for v in p.loc[s]]] for s in p.index]
        lines += [f"## {title}", "", tabulate(body, headers=["strategy \\ doc length", *map(str, p.columns)],
                                              tablefmt="github"), ""]
    return "\n".join(lines)


def plot(df: pd.DataFrame, fits: pd.DataFrame, meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    exps = fits.set_index("strategy")
    for name, g in df.groupby("strategy", sort=False):
        for ax, col, ecol in ((axes[0], "real_tokens", "tokens exponent"), (axes[1], "norm_s", "time exponent")):
            ax.plot(g["doc_len"], g[col], marker="o", label=f"{name} (n^{exps.loc[name, ecol]:.2f})")
    for ax, ylabel in ((axes[0], "real tokens processed"), (axes[1], "calibrated median inference time (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("document length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{meta['config']['model']}, budget {meta['budget']}, {meta['machine_id']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(df: pd.DataFrame, fits: pd.DataFrame, meta: dict[str, Any], out: Path) -> dict[str, Path]:
    """results/scale/<machine-id>/scale.{md,png,csv,json}."""
    folder = out / meta["machine_id"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"md": folder / "scale.md", "png": folder / "scale.png", "csv": folder / "scale.csv",
             "json": folder / "scale.json"}
    paths["md"].write_text(render(df, fits, meta))
    df.to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps({"meta": meta, "fits": fits.to_dict(orient="records")}, indent=2,
                                        default=str) + "\n")
    plot(df, fits, meta, paths["png"])
    return paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ScaleConfig()
    p.add_argument("--model", default=d.model, help="minilm (default), a local model folder, or tiny (random, tests)")
    p.add_argument("--budget", type=int, default=None, help="token budget (default: the model's room, 510 for MiniLM)")
    p.add_argument("--min-len", type=int, default=d.min_len, help=f"shortest document (default {d.min_len})")
    p.add_argument("--max-len", type=int, default=d.max_len,
                   help=f"longest document (default {d.max_len}; 16384 takes about a minute on 2 CPU cores)")
    p.add_argument("--strategies", default=",".join(d.strategies), help="comma-separated (default: all five)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed runs per cell (median; default 3)")
    p.add_argument("--cell-seconds", type=float, default=d.cell_seconds,
                   help="stop repeating a cell once its runs add up to this (default 20)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all usable CPUs)")
    p.add_argument("--out", default=None,
                   help="output folder (default: <results>/scale, files under <out>/<machine-id>/)")


def run(args: argparse.Namespace) -> int:
    """The ``ctxbench scale`` command."""
    import ctxbench.strategies as strategies

    names = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    for s in names:
        strategies.strategy_class(s)  # unknown name: ConfigError with "did you mean"
    cfg = ScaleConfig(args.model, args.budget, args.min_len, args.max_len, names, args.repeats, args.cell_seconds,
                      args.batch_size, 0, args.device, args.threads)
    print(f"ctxbench scale: {len(names)} strategies x {len(lengths(cfg.min_len, cfg.max_len))} lengths "
          f"({cfg.min_len}..{cfg.max_len})", flush=True)
    df, meta = measure(cfg)
    fits = fit(df, meta["budget"])
    out = Path(args.out) if args.out else Path(getattr(args, "results", "results")) / "scale"
    paths = write(df, fits, meta, out)
    print()
    print(render(df, fits, meta))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
