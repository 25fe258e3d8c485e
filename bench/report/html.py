"""The static leaderboard site: ``results/index.html`` plus ``results/<task>/report.html``
with PNG plots beside it, built from the runs.jsonl files (and their sidecars) alone.

Why static: it opens from disk (file://), needs no server and no JavaScript, and can be
committed with the results. The tables are the very sections :func:`ctxbench.bench.report.tables.leaderboard`
renders as markdown, so the report, the CLI and the golden test cannot disagree.
Plots use matplotlib's object API (``Figure``), so no global backend is touched.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ctxbench.bench.results import read_jsonl
from ctxbench.tasks.cache import atomic_write_bytes, atomic_write_text, content_hash
from ctxbench.bench.report.tables import (BUCKETS, DOWN, REFERENCE, UP, Leaderboard, SummaryBlock, comparison_frame,
                                          context_sections, default_runs, leaderboard, read_predictions,
                                          split_groups, summary_blocks)

# (cells column, axis label) of the cost axes of the Pareto plot, in order
# Measured cost only (tables.COST_FIELDS: each strategy timed alone); the grid's token-share estimate is never
# plotted as latency.
COSTS = (("real_tokens", "tokens processed (test set)"),
         ("cost_latency_ms", "measured latency per document, batch 1, p50 (ms)"),
         ("cost_peak_mb", "measured peak memory of the cost pass (MB)"))

# Buckets with fewer test documents get no error bar: their resamples are too coarse to mean much.
MIN_BUCKET_CI = 10

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222;line-height:1.4}
h1,h2,h3{line-height:1.2} h2{margin-top:2.5rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;white-space:nowrap}
th{background:#f5f5f5} tbody th{text-align:left} tbody tr:nth-child(even){background:#fafafa}
.scroll{overflow-x:auto} figure{margin:1rem 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555} .note{font-size:.85rem;color:#444}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.6rem;font-size:.8rem;font-weight:600}
.silver{background:#e3e3e3;color:#333;border:1px solid #aaa} .gold{background:#fff2c2;color:#6b5200}
.method{background:#f7f9fc;border-left:3px solid #89a;padding:.5rem 1rem;font-size:.85rem}
.summary table{font-size:.8rem} .verdict{font-size:.9rem;margin:.2rem 0 1rem} h1{margin-bottom:.3rem}
"""


@dataclass(frozen=True)
class Plot:
    file: str  # relative to the task page
    title: str
    caption: str


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _table_html(table: pd.DataFrame) -> str:
    return '<div class="scroll">' + table.to_html(escape=True, border=0, na_rep="–", index_names=False) + "</div>"


def _figures(plots: Sequence[Plot]) -> list[str]:
    return [f'<figure><img src="{html.escape(p.file)}" alt="{html.escape(p.title)}">'
            f"<figcaption>{html.escape(p.title)}: {html.escape(p.caption)}</figcaption></figure>" for p in plots]


def _badge(label: str) -> str:
    if not label:
        return ""
    text = "silver data (machine-made labels)" if label == "silver" else f"{label} data"
    return f' <span class="badge {html.escape(label)}">{html.escape(text)}</span>'


# --------------------------------------------------------------------------- plots


def _colors(strategies: Sequence[str]) -> dict[str, Any]:
    """One colour per strategy, the same in every plot of a group; head is black."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    others = [s for s in strategies if s != REFERENCE]
    out: dict[str, Any] = {s: cmap(k % 10) for k, s in enumerate(others)}
    out[REFERENCE] = "black"
    return out


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: reproducible bytes
    atomic_write_bytes(path, buf.getvalue())


def _budget_axis(ax: Any, budgets: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(budgets))
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("token budget b")
    ax.grid(True, alpha=0.3)


def _short(label: str, n: int = 40) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _by_strategy(cells: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    order = [REFERENCE] if REFERENCE in set(cells["strategy"]) else []
    order += sorted(s for s in set(cells["strategy"]) if s != REFERENCE)
    return [(s, cells[cells["strategy"] == s].sort_values("budget")) for s in order]


def plot_metric(cells: pd.DataFrame, path: Path, main: str) -> None:
    """Metric vs budget per strategy, with the 95% CI as a band (± seed std without sidecars)."""
    fig, (ax,) = _figure()
    colors = _colors([s for s, _ in _by_strategy(cells)])
    for s, c in _by_strategy(cells):
        x, y = c["budget"].to_numpy(), c["metric"].to_numpy(float)
        ax.plot(x, y, marker="o", color=colors[s], label=_short(s), lw=2 if s == REFERENCE else 1.5)
        lo, hi = c["ci_lo"].to_numpy(float), c["ci_hi"].to_numpy(float)
        if not np.isfinite(lo).any():
            sd = np.nan_to_num(c["metric_std"].to_numpy(float))
            lo, hi = y - sd, y + sd
        ax.fill_between(x, lo, hi, color=colors[s], alpha=0.15, lw=0)
    _budget_axis(ax, sorted(cells["budget"].unique()))
    ax.set_ylabel(main)
    ax.set_title(f"{main} vs budget (band: 95% CI)")
    ax.legend(fontsize=8)
    _save(fig, path)


def pareto_front(cost: np.ndarray, value: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Indices of the non-dominated points (lower cost, better value), by increasing cost."""
    sign = 1.0 if higher_is_better else -1.0
    ok = np.flatnonzero(np.isfinite(cost) & np.isfinite(value))
    order = ok[np.lexsort((-sign * value[ok], cost[ok]))]
    front, best = [], -math.inf
    for i in order:
        if sign * value[i] > best:
            front.append(i)
            best = sign * value[i]
    return np.array(front, dtype=int)


def _cost_scale(ax: Any, cost: np.ndarray) -> None:
    """Log scale only when costs span an order of magnitude; else tick labels collide."""
    cost = cost[np.isfinite(cost) & (cost > 0)]
    if cost.size and cost.max() / cost.min() >= 10:
        ax.set_xscale("log")


def plot_pareto(cells: pd.DataFrame, path: Path, main: str, higher_is_better: bool) -> bool:
    """Metric vs each cost (tokens, latency, memory); the frontier joins the cells nothing beats."""
    costs = [(k, label) for k, label in COSTS if k in cells and cells[k].notna().any()]
    if not costs:
        return False
    fig, axes = _figure(len(costs), width=5.0)
    colors = _colors([s for s, _ in _by_strategy(cells)])
    for ax, (key, label) in zip(axes, costs):
        for s, c in _by_strategy(cells):
            ax.scatter(c[key], c["metric"], color=colors[s], label=_short(s), s=30, zorder=3)
        cost, value = cells[key].to_numpy(float), cells["metric"].to_numpy(float)
        front = pareto_front(cost, value, higher_is_better)
        if len(front):
            ax.step(cost[front], value[front], where="post", color="grey", ls="--", lw=1, zorder=2,
                    label="Pareto frontier")
            for i in front:
                ax.annotate(f"b={cells['budget'].iloc[i]}", (cost[i], value[i]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        _cost_scale(ax, cost)
        ax.set_xlabel(label)
        ax.set_ylabel(main)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{main} vs cost (each point: one strategy at one budget)")
    _save(fig, path)
    return True


def plot_measure(cells: pd.DataFrame, path: Path, panels: Sequence[tuple[str, str]], title: str) -> bool:
    """Measurements vs budget per strategy (mean over seeds, bars: seed std)."""
    panels = [(k, label) for k, label in panels if k in cells and cells[k].notna().any()]
    if not panels:
        return False
    fig, axes = _figure(len(panels), width=5.5)
    colors = _colors([s for s, _ in _by_strategy(cells)])
    for ax, (key, label) in zip(axes, panels):
        for s, c in _by_strategy(cells):
            sd = np.nan_to_num(c[f"{key}_std"].to_numpy(float)) if f"{key}_std" in c else None
            ax.errorbar(c["budget"], c[key], yerr=sd, marker="o", color=colors[s], label=_short(s), capsize=2)
        _budget_axis(ax, sorted(cells["budget"].unique()))
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
    return True


def plot_buckets(buckets: pd.DataFrame, path: Path, main: str) -> bool:
    """Grouped bars: metric per length bucket and strategy, one panel per budget, n under each bucket."""
    if buckets.empty:
        return False
    budgets = sorted(buckets["budget"].unique())
    fig, axes = _figure(len(budgets), width=4.5, height=3.8)
    strategies = [s for s, _ in _by_strategy(buckets)]
    colors = _colors(strategies)
    width = 0.8 / max(1, len(strategies))
    for ax, budget in zip(axes, budgets):
        sub = buckets[buckets["budget"] == budget]
        present = [b for b in BUCKETS if b in set(sub["bucket"])] + sorted(set(sub["bucket"]) - set(BUCKETS))
        x = np.arange(len(present))
        for j, s in enumerate(strategies):
            c = sub[sub["strategy"] == s].set_index("bucket").reindex(present)
            y = c["metric"].to_numpy(float)
            lo, hi = c["ci_lo"].to_numpy(float), c["ci_hi"].to_numpy(float)
            err = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
            err = np.where(np.isfinite(err) & (c["n"].to_numpy(float) >= MIN_BUCKET_CI), err, 0.0)
            ax.bar(x + (j - (len(strategies) - 1) / 2) * width, np.nan_to_num(y), width, yerr=err,
                   color=colors[s], label=_short(s), capsize=1.5, error_kw={"lw": 0.6})
        counts = sub.groupby("bucket")["n"].first()
        ax.set_xticks(x)
        ax.set_xticklabels([f"{b}\nn={counts.get(b, 0):.0f}" for b in present], fontsize=8)
        ax.set_title(f"b={budget}", fontsize=10)
        ax.set_ylabel(main)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{main} by document length (tokens ≤b, b–2b, 2b–4b, >4b; bars: 95% CI where n ≥ {MIN_BUCKET_CI})")
    _save(fig, path)
    return True


def group_plots(cells: pd.DataFrame, buckets: pd.DataFrame, plot_dir: Path, rel: str) -> list[Plot]:
    """All plots of one group (one table family); returns what was drawn, in page order."""
    gid = cells["group_id"].iloc[0]
    main = cells["main_metric"].iloc[0]
    hib = bool(cells["higher_is_better"].iloc[0])
    out: list[Plot] = []

    def add(kind: str, title: str, caption: str, draw: Callable[[Path], bool | None]) -> None:
        name = f"{gid}-{kind}.png"
        if draw(plot_dir / name) is not False:
            out.append(Plot(f"{rel}/{name}", title, caption))

    add("metric", f"{main} vs budget", "Mean over seeds; band: 95% bootstrap CI over test examples.",
        lambda p: plot_metric(cells, p, main))
    add("pareto", f"{main} vs cost", "Pareto frontier (dashed): cells no other cell beats on both axes.",
        lambda p: plot_pareto(cells, p, main, hib))
    add("throughput", "throughput vs budget", "Documents and real (unpadded) tokens per second.",
        lambda p: plot_measure(cells, p, [("docs_per_s", "docs/s"), ("tokens_per_s", "real tokens/s")],
                               "throughput vs budget"))
    add("memory", "peak memory vs budget",
        "Peak memory of the run: CUDA max allocated, or on CPU the peak RSS of the process "
        "(of the cell alone only with --isolate; otherwise the process's high-water mark so far).",
        lambda p: plot_measure(cells, p, [("peak_memory_mb", "peak memory MB")], "memory vs budget"))
    gb = buckets[buckets["group_id"] == gid] if not buckets.empty else buckets
    add("buckets", f"{main} by document length",
        f"Error bars: 95% CI, drawn where a bucket holds at least {MIN_BUCKET_CI} documents; "
        "n: test documents in the bucket.",
        lambda p: plot_buckets(gb, p, main))
    return out


def plot_forest(cells: pd.DataFrame, path: Path, main: str) -> bool:
    """Δ vs head with its 95% interval, one line per (budget, strategy); ▲ / ▼ (Holm) in colour."""
    c = cells[(cells["strategy"] != REFERENCE) & np.isfinite(cells["diff_vs_head"].to_numpy(float))]
    if c.empty:
        return False
    c = c.sort_values(["budget", "strategy"], ascending=[False, False])
    fig, (ax,) = _figure(width=7.0, height=0.9 + 0.28 * len(c))
    y = np.arange(len(c))
    d = c["diff_vs_head"].to_numpy(float)
    err = np.vstack([d - c["diff_lo"].to_numpy(float), c["diff_hi"].to_numpy(float) - d])
    colour = {UP: "tab:green", DOWN: "tab:red"}
    for j, (_, r) in enumerate(c.iterrows()):
        ax.errorbar(d[j], y[j], xerr=err[:, j:j + 1], fmt="o", color=colour.get(r["mark"], "grey"), capsize=2)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([f"b={r['budget']}  {_short(r['strategy'], 30)}" for _, r in c.iterrows()], fontsize=8)
    ax.set_xlabel(f"{main} minus {REFERENCE} (95% two-level CI)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"Δ vs {REFERENCE}: green ▲ / red ▼ Holm-significant, grey undecided", fontsize=10)
    _save(fig, path)
    return True


def plot_lengths(lengths: Sequence[int], budgets: Sequence[int], path: Path, unit: str = "document") -> bool:
    """Histogram of test lengths in tokens, the budgets marked: how much of the data each budget cuts."""
    x = np.asarray(lengths, dtype=float)
    if not x.size:
        return False
    fig, (ax,) = _figure(width=7.0, height=3.2)
    lo, hi = max(1.0, x.min()), max(x.max(), max(budgets, default=1))
    bins = np.geomspace(lo, hi * 1.01, 40) if hi / lo >= 10 else 40
    ax.hist(x, bins=bins, color="tab:blue", alpha=0.7)
    if hi / lo >= 10:
        ax.set_xscale("log")
    for b in budgets:
        share = float(np.mean(x > b))
        ax.axvline(b, color="tab:red", ls="--", lw=1)
        ax.annotate(f"b={b}: {share:.0%} longer", (b, ax.get_ylim()[1] * 0.9), fontsize=7, rotation=90,
                    ha="right", va="top")
    ax.set_xlabel(f"{unit} length in tokens")
    ax.set_ylabel(f"test {unit}s")
    ax.set_title(f"{len(x):,} test {unit}s; budgets marked", fontsize=10)
    _save(fig, path)
    return True


def group_lengths(cells: pd.DataFrame, frame: pd.DataFrame, root: Path | None) -> list[int]:
    """Token lengths of the test units of one group, from one sidecar (every run saw the same units)."""
    keys = ["task", "dataset", "data_label", "model", "mode", "sample"]
    first = cells.iloc[0]
    mine = frame[np.logical_and.reduce([frame[k] == first[k] for k in keys])]
    for _, run in mine.sort_values(["budget", "strategy"]).iterrows():
        rows = read_predictions(root, run)
        if rows and "n_tokens" in rows[0]:
            return [int(r["n_tokens"]) for r in rows]
    return []


def _bold(text: str) -> str:
    return html.escape(text).replace("**", "\x00").replace("\x00", "<strong>", 1).replace("\x00", "</strong>", 1)


def _summary_html(blocks: Sequence[SummaryBlock], link: str = "") -> list[str]:
    parts = []
    for blk in blocks:
        title = html.escape(blk.title)
        if link:
            title = f'<a href="{html.escape(link)}#{html.escape(blk.group_id)}">{title}</a>'
        parts.append(f"<h3>{title}{_badge(blk.cells['data_label'].iloc[0])}</h3>")
        parts.append(f'<p class="note">{_bold(blk.intro)}</p>')
        head = "".join(f"<th>{html.escape(c)}</th>" for c in blk.table.columns)
        body = "".join("<tr>" + "".join(f"<td>{_bold(str(v))}</td>" for v in row) + "</tr>"
                       for row in blk.table.itertuples(index=False))
        parts.append(f'<div class="scroll summary"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                     "</table></div>")
        parts.append('<ul class="verdict">' + "".join(f"<li>{html.escape(v)}</li>" for v in blk.verdicts) + "</ul>")
        if blk.legend:
            parts.append('<p class="note">Strategies: ' + "; ".join(
                f"<code>{html.escape(n)}</code> = <code>{html.escape(s)}</code>" for n, s in blk.legend.items())
                + ".</p>")
        parts += [f'<p class="note"><em>{html.escape(n)}</em></p>' for n in blk.notes]
    return parts


# --------------------------------------------------------------------------- pages


def _group_details(board: Leaderboard, gid: str, cells: pd.DataFrame, out_dir: Path) -> list[str]:
    """One group's leaderboard, its test against head, the plots, then the breakdowns."""
    title = cells["group"].iloc[0]
    label = cells["data_label"].iloc[0]
    parts = [f'<h2 id="{html.escape(gid)}">{html.escape(title)}{_badge(label)}</h2>']
    if label == "silver":
        parts.append('<p class="note"><strong>Silver data:</strong> labels come from a model or heuristic, '
                     "not from people; compare strategies with each other, not with gold-data numbers.</p>")
    sections = [s for s in board.sections if s.group_id == gid]
    plotted = False
    for s in sorted(sections, key=lambda s: s.kind not in ("metric", "diff")):
        if s.kind not in ("metric", "diff") and not plotted:
            parts += _figures(group_plots(cells, board.buckets, out_dir / "plots", "plots"))
            plotted = True
        parts.append(f"<h3>{html.escape(s.title.split(' — ', 1)[-1])}</h3>")
        parts.append(_table_html(s.table))
        if s.note:
            parts.append(f'<p class="note">{html.escape(s.note)}</p>')
    if not plotted:
        parts += _figures(group_plots(cells, board.buckets, out_dir / "plots", "plots"))
    return parts


def task_page(task: str, board: Leaderboard, out_dir: Path, source: str, runs: Sequence[dict] | None = None,
              root: Path | None = None, n_boot: int | None = None) -> str:
    """The HTML of one task's page, in the order of SUMMARY.md: the default sweep's summary (tables,
    verdicts, a forest plot of Δ vs head, the test lengths with the budgets marked), QA per k, the
    cross-model comparison, then every group's details (the default sweep first, demonstrations
    after). Writes its plots under ``out_dir/plots``."""
    from ctxbench.bench.report import stats

    runs = list(runs or [])
    parts = ['<p><a href="../index.html">← all tasks</a></p>', f"<h1>Leaderboard: {html.escape(task)}</h1>",
             (f'<p class="note">Generated by <code>ctxbench report</code> from {html.escape(source)}; '
              "do not edit.</p>")]
    if board.cells.empty:
        parts.append("<p>No successful runs.</p>")
    default, demos = split_groups(board, runs) if runs else (list(dict.fromkeys(board.cells.get("group_id", []))), [])
    sweep = (default_runs(runs) or runs) if runs else []
    blocks = summary_blocks(sweep, board) if sweep else []
    if blocks:
        parts.append('<h2 id="summary">Summary: the default sweep</h2>')
        parts += _summary_html(blocks)
        for blk in blocks:
            main = blk.cells["main_metric"].iloc[0]
            figs = []
            forest = f"{blk.group_id}-forest.png"
            if plot_forest(blk.cells, out_dir / "plots" / forest, main):
                figs.append(Plot(f"plots/{forest}", f"{blk.title}: Δ vs {REFERENCE}",
                                 "Each line: a strategy at a budget, the 95% two-level interval of its difference "
                                 f"from {REFERENCE}; colour: Holm-adjusted significance."))
            lengths = group_lengths(blk.cells, board.frame, root)
            hist = f"{blk.group_id}-lengths.png"
            unit = "context" if task == "qa" else "document"
            if plot_lengths(lengths, sorted(blk.cells["budget"].unique()), out_dir / "plots" / hist, unit):
                figs.append(Plot(f"plots/{hist}", f"{blk.title}: test {unit} lengths",
                                 "Tokens per test unit (from the predictions sidecar), the budgets marked."))
            parts += _figures(figs)
    if task == "qa" and runs:
        sections, _ = context_sections(runs, root, n_boot or stats.N_BOOT)
        if sections:
            parts.append('<h2 id="by-context">QA per context_paragraphs</h2>')
            for sec in sections:
                parts.append(f"<h3>{html.escape(sec.title)}</h3>")
                parts.append(_table_html(sec.table))
                if sec.note:
                    parts.append(f'<p class="note">{html.escape(sec.note)}</p>')
    comp = comparison_frame(runs) if runs else pd.DataFrame()
    if not comp.empty and comp[["model", "mode"]].drop_duplicates().shape[0] > 1:
        parts.append('<h2 id="models">Every model and mode side by side</h2>')
        parts.append('<p class="note">Times as measured in each run (separate processes): compare them only '
                     "between runs made side by side on one machine.</p>")
        for dataset, block in comp.groupby("dataset", sort=False):
            t = block.drop(columns=["sample"]).round(4).set_index("model")
            parts.append(f"<h3>{html.escape(str(dataset))}</h3>")
            parts.append(_table_html(t))
    groups = dict(list(board.cells.groupby("group_id", sort=False))) if not board.cells.empty else {}
    if default and groups:
        parts.append('<h2 id="details">Details: the default sweep</h2>' if demos else "")
    for gid in default:
        parts += _group_details(board, gid, groups[gid], out_dir)
    if demos:
        parts.append('<h2 id="demos">Demonstration runs (outside the default sweep)</h2>')
        for gid in demos:
            parts += _group_details(board, gid, groups[gid], out_dir)
    if not board.failed.empty:
        parts.append("<h2>Runs that did not finish</h2>")
        parts.append(_table_html(board.failed.set_index("strategy")))
    if board.method:
        parts.append(f'<h2>Method</h2><p class="method">{html.escape(board.method)}</p>')
    for n in board.notes:
        parts.append(f'<p class="note">note: {html.escape(n)}</p>')
    return _page(f"ctxbench · {task}", "\n".join(parts))


def build_report(results_root: str | Path = "results", out_root: str | Path | None = None, *,
                 n_boot: int | None = None) -> Path:
    """Build the site for every ``<results_root>/<task>/runs.jsonl``; returns the index path."""
    from ctxbench.bench.report import stats

    results_root = Path(results_root)
    out_root = Path(out_root) if out_root is not None else results_root
    runs_files = sorted(results_root.glob("*/runs.jsonl"))
    summary: list[str] = []
    failed: dict[str, int] = {}
    method = ""
    for path in runs_files:
        task = path.parent.name
        runs = read_jsonl(path)
        board = leaderboard(runs, root=path.parent, n_boot=n_boot or stats.N_BOOT)
        method = method or board.method
        out_dir = out_root / task
        data = path.read_bytes()
        lines = data.count(b"\n")
        source = f"{path.name} ({lines} lines, sha256 {content_hash(data)})"
        page = task_page(task, board, out_dir, source, runs, path.parent, n_boot)
        atomic_write_text(out_dir / "report.html", page)
        for stale in sorted((out_dir / "plots").glob("*.png")):  # plots of groups that no longer exist
            if f'src="plots/{stale.name}"' not in page:
                stale.unlink()
        summary += _summary_html(summary_blocks(default_runs(runs) or runs, board), f"{task}/report.html")
        failed[task] = len(board.failed)
    parts = ["<h1>ctxbench leaderboards</h1>",
             ('<p class="note">Context-length strategies (head, tail, head+tail, sliding, hierarchical) over '
              "transformer encoders: the default sweep of each task first. Built from the runs.jsonl files alone; "
              "do not edit.</p>")]
    if not runs_files:
        parts.append(f"<p>No runs.jsonl under {html.escape(str(results_root))}/.</p>")
    parts += summary
    parts.append("<h2>Every task (details, demonstration runs)</h2>")
    parts.append("<ul>" + "".join(f'<li><a href="{html.escape(t)}/report.html">{html.escape(t)}</a>'
                                  f"{f' ({n} runs did not finish)' if n else ''}</li>"
                                  for t, n in failed.items()) + "</ul>")
    if method:
        parts.append(f'<h2>Method</h2><p class="method">{html.escape(method)}</p>')
    index = out_root / "index.html"
    atomic_write_text(index, _page("ctxbench leaderboards", "\n".join(parts)))
    return index
