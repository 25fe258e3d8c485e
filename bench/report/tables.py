"""Tables are one pure function of the JSONL (and the sidecars it names):
runs -> long DataFrames -> pivots (strategy × budget) -> markdown / CSV.

The CLI, the report and the tests all call :func:`leaderboard`. Statistics come from
the per-example sidecars (``predictions_file``, relative to the runs.jsonl folder):
bootstrap CIs, a paired test against ``head`` and the length-bucket breakdown; see
:mod:`ctxbench.bench.report.stats` for the method. Without sidecars a cell falls back to mean ± std
over seeds.
"""
from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from ctxbench.bench.report import stats
from ctxbench.tasks.cache import canonical, content_hash



@functools.lru_cache(maxsize=None)
def _mode_defaults(task: str) -> dict[str, Any]:
    """The defaults of the task settings that name a run's mode (``Settings.mode_keys``): a run
    whose settings differ there is scored another way and never averages with the defaults."""
    from ctxbench.tasks import get_task, task_names

    if task not in task_names():
        return {}
    cls = getattr(get_task(task), "Settings", None)
    return {k: getattr(cls(), k) for k in getattr(cls, "mode_keys", ())} if cls else {}

# (column in the long frame, heading, format)
COLUMNS = {
    "metric": ("{main}", "{:.3f}"),
    "docs_per_s": ("docs/s", "{:.1f}"),
    "tokens_per_s": ("real tokens/s", "{:.0f}"),
    "peak_memory_mb": ("peak memory MB", "{:.0f}"),
    "compute_multiplier": ("tokens vs head", "{:.2f}"),
    "coverage": ("coverage", "{:.2f}"),
    "utilisation": ("utilisation (real-token FLOPs/s over the measured matmul peak)", "{:.1%}"),
    "padding_waste": ("padding waste", "{:.1%}"),
    "select_seconds_test": ("sentence selection seconds (test set, apart from model time)", "{:.2f}"),
    "sentence_split_seconds": ("sentence splitting seconds (clf: once per data set, shared)", "{:.2f}"),
}
# Measurements the report plots besides COLUMNS (cost axes of the Pareto plots).
EXTRA_MEASURES = ("real_tokens", "latency_p50_ms", "latency_p95_ms")
MEASURES = tuple(k for k in COLUMNS if k != "metric") + EXTRA_MEASURES

# Mirrors tasks.base.LENGTH_BUCKETS (a test checks it): importing tasks would load torch.
BUCKETS = ("<=b", "b-2b", "2b-4b", ">4b")
REFERENCE = "head"
GROUP_KEYS = ["task", "dataset", "data_label", "model", "mode", "sample"]
NOT_SIGNIFICANT = "≈"


def length_bucket(n: int, budget: int) -> str:
    """Same rule as tasks.base.length_bucket, for sidecars that carry n_tokens but no bucket."""
    if n <= budget:
        return BUCKETS[0]
    if n <= 2 * budget:
        return BUCKETS[1]
    if n <= 4 * budget:
        return BUCKETS[2]
    return BUCKETS[3]


def sample_key(r: dict[str, Any]) -> str:
    """Which test sample a run saw: runs are only compared (and paired) within one."""
    spec = r.get("spec", {})
    return canonical({"task_version": r.get("task_version", spec.get("task_version")),
                      "data_seed": spec.get("data_seed"), "limits": spec.get("limits")})


def _dedupe(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last line of each run_id wins (a store should hold one, but be safe)."""
    by_id: dict[Any, dict[str, Any]] = {}
    for k, r in enumerate(runs):
        by_id[r.get("run_id", ("line", k))] = r
    return list(by_id.values())


def long_frame(runs: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per successful run with the fields tables need."""
    rows = []
    for r in _dedupe(runs):
        if r.get("status", "ok") != "ok":
            continue
        spec, m, meas = r["spec"], r["metrics"], r["measurements"]
        row = {
            "task": spec["task"],
            "dataset": spec["dataset"],
            "model": spec["model"],
            "mode": table_mode(spec),
            "strategy": spec["strategy"]["label"],
            "budget": r.get("budget", spec.get("budget")),
            "seed": spec["seed"],
            "main_metric": r["main_metric"],
            "higher_is_better": bool(r.get("higher_is_better", True)),
            "metric": m[r["main_metric"]],
            **{f"m.{k}": v for k, v in m.items() if isinstance(v, (int, float))},
            **{k: meas.get(k) for k in MEASURES},
            "data_label": r.get("data_label") or "",
            "sample": sample_key(r),
            "run_id": r.get("run_id", ""),
            "predictions_file": r.get("predictions_file"),
            "predictions_sha": r.get("predictions_sha"),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def failed_frame(runs: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Runs that did not finish (oom, error): the report lists them."""
    rows = []
    for r in _dedupe(runs):
        if r.get("status", "ok") == "ok":
            continue
        spec = r.get("spec", {})
        rows.append({"task": spec.get("task", r.get("task")), "strategy": spec.get("strategy", {}).get("label"),
                     "budget": spec.get("budget"), "seed": spec.get("seed"), "mode": spec.get("mode"),
                     "status": r.get("status"), "error": str(r.get("error", ""))[:160]})
    return pd.DataFrame(rows, columns=["task", "strategy", "budget", "seed", "mode", "status", "error"])


def read_predictions(root: str | Path | None, run: pd.Series | dict[str, Any]) -> list[dict[str, Any]] | None:
    """A run's sidecar rows, or None when there is none or it is not the one the run recorded."""
    rel = run.get("predictions_file")
    if root is None or not isinstance(rel, str) or not rel:
        return None
    path = Path(root) / rel
    if not path.exists():
        warnings.warn(f"{path}: sidecar missing; its cell gets no CI", stacklevel=3)
        return None
    data = path.read_bytes()
    sha = run.get("predictions_sha")
    if isinstance(sha, str) and sha and content_hash(data) != sha:
        warnings.warn(f"{path}: content hash differs from the run's predictions_sha; not used", stacklevel=3)
        return None
    return [json.loads(line) for line in data.splitlines() if line.strip()]


# --------------------------------------------------------------------------- cell statistics


@dataclass
class _BudgetStats:
    """Bootstrap results of every strategy at one budget of one group."""

    n_examples: int = 0
    ci: dict[str, stats.Interval] = field(default_factory=dict)
    vs_ref: dict[str, stats.Comparison] = field(default_factory=dict)
    buckets: dict[tuple[str, str], tuple[int, stats.Interval]] = field(default_factory=dict)


def _budget_stats(task: str, main: str, sub: pd.DataFrame, root: str | Path | None, n_boot: int, seed: int,
                  alpha: float, notes: list[str]) -> _BudgetStats:
    """CIs, tests against head and buckets for all strategies at one budget, on shared resamples."""
    out = _BudgetStats()
    preds = {rid: read_predictions(root, run) for rid, run in sub.set_index("run_id", drop=False).iterrows()}
    first = next((rows[0] for rows in preds.values() if rows), None)
    if first is None:
        return out
    stat = stats.statistic_for(task, main, first)
    if stat is None:
        notes.append(f"{task}: no per-example statistic for {main!r} from sidecar fields {sorted(first)}; no CIs")
        return out
    usable: dict[str, list[str]] = {}  # strategy -> run ids, only when every seed's sidecar reproduces the metric
    for strategy, runs in sub.groupby("strategy", sort=True):
        ids = list(runs.sort_values("seed")["run_id"])
        ok = True
        for rid, recorded in zip(ids, runs.sort_values("seed")["metric"]):
            rows = preds.get(rid)
            if not rows or not all(f in rows[0] for f in stat.fields):
                ok = False
                break
            value = stat.value(stat.features([rows])[0])
            if not np.isclose(value, recorded, rtol=1e-6, atol=1e-9):
                notes.append(f"{task} {strategy} b={runs['budget'].iloc[0]}: sidecar gives {main}={value:.6f}, "
                             f"the run recorded {recorded:.6f}; no CI for this cell")
                ok = False
                break
        if ok:
            usable[strategy] = ids
    if not usable:
        return out
    all_ids = [rid for ids in usable.values() for rid in ids]
    common = set.intersection(*({r["i"] for r in preds[rid]} for rid in all_ids))
    order = sorted(common)
    if any(len(preds[rid]) != len(order) for rid in all_ids):
        notes.append(f"{task} b={sub['budget'].iloc[0]}: runs saw different test examples; "
                     f"statistics use the {len(order)} they share")
    aligned = {rid: {r["i"]: r for r in preds[rid]} for rid in all_ids}
    features = stat.features([[aligned[rid][i] for i in order] for rid in all_ids])  # (R, n, k)
    offsets = np.cumsum([0] + [len(ids) for ids in usable.values()])
    cells = {(s, None): features[offsets[j]:offsets[j + 1]] for j, s in enumerate(usable)}  # (S, n, k) each
    rows0 = [aligned[all_ids[0]][i] for i in order]
    budget = int(sub["budget"].iloc[0])
    labels = [r.get("bucket") or (length_bucket(int(r["n_tokens"]), budget) if "n_tokens" in r else None)
              for r in rows0]
    members = {b: np.flatnonzero([x == b for x in labels]) for b in _bucket_order(labels)}
    subsets: dict[tuple[str, str | None], Any] = dict(cells)
    for s in usable:
        for b, idx in members.items():
            subsets[(s, b)] = (cells[(s, None)][:, idx], idx)  # (S, m, k), (m,)
    dists = stats.bootstrap(stat, subsets, n_boot, seed)
    feats = {key: c[0] if isinstance(c, tuple) else c for key, c in subsets.items()}
    points = {key: stats.seed_mean_point(stat, f) for key, f in feats.items()}
    jacks = {key: stats.jackknife(stat, f) for key, f in feats.items()}
    out.n_examples = len(order)
    for s in usable:
        out.ci[s] = stats.bca_interval(points[(s, None)], dists[(s, None)], jacks[(s, None)], alpha)
        for b, idx in members.items():
            iv = stats.bca_interval(points[(s, b)], dists[(s, b)], jacks[(s, b)], alpha)
            out.buckets[(s, b)] = (len(idx), iv)
    if REFERENCE in usable:
        for s in usable:
            if s != REFERENCE:
                key, ref = (s, None), (REFERENCE, None)
                out.vs_ref[s] = stats.compare(points[key] - points[ref], dists[key] - dists[ref],
                                              jacks[key] - jacks[ref], alpha)
    return out


def _bucket_order(labels: Iterable[Any]) -> list[str]:
    present = {x for x in labels if x is not None}
    return [b for b in BUCKETS if b in present] + sorted(present - set(BUCKETS))


def _record_buckets(runs: pd.DataFrame, main: str) -> dict[str, tuple[float, float]]:
    """Fallback without sidecars: the bucket metrics the run itself recorded, mean over seeds."""
    out = {}
    for b in BUCKETS:
        v, n = f"m.bucket[{b}].{main}", f"m.bucket[{b}].n"
        if n in runs and runs[n].notna().any():
            value = runs[v].mean() if v in runs else float("nan")
            out[b] = (float(runs[n].mean()), float(value))
    return out


def _strategy_order(names: Iterable[str]) -> list[str]:
    names = sorted(set(names))
    return ([REFERENCE] if REFERENCE in names else []) + [s for s in names if s != REFERENCE]


def _slug(text: str) -> str:
    """A file-name-safe id for a group; the hash keeps two similar titles apart."""
    return f'{re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60]}-{content_hash(text, n=6)}'


def group_title(keys: dict[str, Any], show_sample: bool) -> str:
    label = keys["data_label"]
    data = f"{keys['dataset']}{' (' + label + ')' if label else ''}"
    title = f"{keys['task']} · {data} · {keys['model']} · {keys['mode']}"
    if show_sample:
        s = json.loads(keys["sample"])
        limits = ",".join(f"{k}:{v}" for k, v in sorted((s.get("limits") or {}).items()))
        title += f" · v{s.get('task_version')} data_seed={s.get('data_seed')} limits={limits}"
    return title


def cell_frames(df: pd.DataFrame, root: str | Path | None, n_boot: int = stats.N_BOOT, seed: int = 0,
                alpha: float = stats.ALPHA) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Runs -> one row per (group, strategy, budget) and one per (…, length bucket)."""
    cells, buckets, notes = [], [], []
    if df.empty:
        return pd.DataFrame(), pd.DataFrame(), notes
    base_keys = ["task", "dataset", "data_label", "model", "mode"]
    samples_per_base = df.groupby(base_keys)["sample"].nunique()
    for keys, group in df.groupby(GROUP_KEYS, sort=True):
        kd = dict(zip(GROUP_KEYS, keys))
        title = group_title(kd, samples_per_base[tuple(kd[k] for k in base_keys)] > 1)
        main = group["main_metric"].iloc[0]
        common = {**kd, "group": title, "group_id": _slug(title), "main_metric": main,
                  "higher_is_better": bool(group["higher_is_better"].iloc[0])}
        for budget, sub in group.groupby("budget", sort=True):
            bs = _budget_stats(kd["task"], main, sub, root, n_boot, seed, alpha, notes)
            for strategy in _strategy_order(sub["strategy"]):
                runs = sub[sub["strategy"] == strategy].sort_values("seed")
                ci, cmp = bs.ci.get(strategy), bs.vs_ref.get(strategy)
                row = {**common, "budget": int(budget), "strategy": strategy, "n_seeds": len(runs),
                       "seeds": ",".join(str(s) for s in runs["seed"]),
                       "n_examples": bs.n_examples if ci else np.nan,
                       "metric": runs["metric"].mean(), "metric_std": runs["metric"].std(ddof=1),
                       "ci_lo": ci.lo if ci else np.nan, "ci_hi": ci.hi if ci else np.nan,
                       "diff_vs_head": cmp.diff if cmp else np.nan, "diff_lo": cmp.lo if cmp else np.nan,
                       "diff_hi": cmp.hi if cmp else np.nan, "p_vs_head": cmp.p if cmp else np.nan,
                       "significant": cmp.significant(alpha) if cmp else None}
                for k in MEASURES:
                    values = pd.to_numeric(runs[k], errors="coerce")
                    row[k] = values.mean()
                    row[f"{k}_std"] = values.std(ddof=1)
                cells.append(row)
                if any(s == strategy for s, _ in bs.buckets):
                    for (s, b), (n, iv) in bs.buckets.items():
                        if s == strategy:
                            buckets.append({**common, "budget": int(budget), "strategy": strategy, "bucket": b,
                                            "n": n, "metric": iv.estimate, "ci_lo": iv.lo, "ci_hi": iv.hi,
                                            "source": "sidecar"})
                else:
                    for b, (n, value) in _record_buckets(runs, main).items():
                        buckets.append({**common, "budget": int(budget), "strategy": strategy, "bucket": b,
                                        "n": n, "metric": value, "ci_lo": np.nan, "ci_hi": np.nan,
                                        "source": "record"})
    return pd.DataFrame(cells), pd.DataFrame(buckets), notes


# --------------------------------------------------------------------------- pivots and sections


def _cell(values: pd.Series, fmt: str) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return fmt.format(values.iloc[0])
    return f"{fmt.format(values.mean())} ± {fmt.format(values.std(ddof=1))}"


def pivot(df: pd.DataFrame, column: str, fmt: str) -> pd.DataFrame:
    """strategy × budget, each cell mean ± std over seeds."""
    table = df.groupby(["strategy", "budget"])[column].apply(lambda s: _cell(s, fmt)).unstack("budget")
    return _tidy(table)


def _tidy(table: pd.DataFrame) -> pd.DataFrame:
    table = table.reindex(sorted(table.columns), axis=1)
    table = table.reindex(_strategy_order(table.index))
    table.columns = [f"b={c}" for c in table.columns]
    table.index.name = "strategy"
    return table.fillna("–")


def pivot_cells(cells: pd.DataFrame, render: Callable[[pd.Series], str]) -> pd.DataFrame:
    """strategy × budget of one rendered string per cell row."""
    if cells.empty:
        return pd.DataFrame()
    table = cells.assign(_s=cells.apply(render, axis=1)).pivot(index="strategy", columns="budget", values="_s")
    return _tidy(table)


def _num(x: float, fmt: str, sign: bool = False) -> str:
    s = fmt.format(x)
    return ("+" + s if sign and x >= 0 and not s.startswith("+") else s) if np.isfinite(x) else "–"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def render_metric(row: pd.Series, fmt: str = "{:.3f}") -> str:
    """mean [lo, hi] with ≈ when not significantly different from head; mean ± std without CI."""
    if not np.isfinite(row["ci_lo"]):
        if row["n_seeds"] > 1 and np.isfinite(row["metric_std"]):
            return f"{_num(row['metric'], fmt)} ± {_num(row['metric_std'], fmt)}"
        return _num(row["metric"], fmt)
    mark = f" {NOT_SIGNIFICANT}" if row["significant"] is False else ""
    return f"{_num(row['metric'], fmt)} [{_num(row['ci_lo'], fmt)}, {_num(row['ci_hi'], fmt)}]{mark}"


def render_diff(row: pd.Series, fmt: str = "{:.3f}") -> str:
    if not np.isfinite(row["p_vs_head"]):
        return "–"
    return (f"{_num(row['diff_vs_head'], fmt, True)} [{_num(row['diff_lo'], fmt, True)}, "
            f"{_num(row['diff_hi'], fmt, True)}] {_p(row['p_vs_head'])}")


def bucket_table(buckets: pd.DataFrame, fmt: str = "{:.3f}") -> pd.DataFrame:
    """(strategy, length bucket) × budget; each cell the metric and how many test documents fall there."""
    if buckets.empty:
        return pd.DataFrame()
    b = buckets.assign(_s=[f"{_num(m, fmt)} (n={n:.0f})" for m, n in zip(buckets["metric"], buckets["n"])],
                       _o=[BUCKETS.index(x) if x in BUCKETS else len(BUCKETS) for x in buckets["bucket"]])
    order = {s: k for k, s in enumerate(_strategy_order(b["strategy"]))}
    b = b.assign(_r=b["strategy"].map(order))
    table = b.pivot_table(index=["_r", "strategy", "_o", "bucket"], columns="budget", values="_s", aggfunc="first")
    table = table.reindex(sorted(table.columns), axis=1).fillna("–")
    table.columns = [f"b={c}" for c in table.columns]
    table = table.reset_index().drop(columns=["_r", "_o"]).set_index("strategy")
    return table.rename(columns={"bucket": "length"})


class Section(tuple):
    """``(title, table)``: still a 2-tuple, so callers may unpack it or ``dict()`` the
    sections, with the note printed under the table and what the report needs to place it."""

    note: str
    group_id: str
    kind: str

    def __new__(cls, title: str, table: pd.DataFrame, note: str = "", group_id: str = "", kind: str = ""):
        self = super().__new__(cls, (title, table))
        self.note, self.group_id, self.kind = note, group_id, kind
        return self

    @property
    def title(self) -> str:
        return self[0]

    @property
    def table(self) -> pd.DataFrame:
        return self[1]


@dataclass
class Leaderboard:
    frame: pd.DataFrame  # one row per successful run
    sections: list[Section]
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (group, strategy, budget)
    buckets: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (…, length bucket)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    method: str = ""

    def markdown(self) -> str:
        out = []
        for s in self.sections:
            out.append(f"### {s.title}\n")
            out.append(tabulate(s.table, headers="keys", tablefmt="github", stralign="right") + "\n")
            if s.note:
                out.append(s.note + "\n")
        if self.method:
            out.append(f"**Method.** {self.method}\n")
        for n in self.notes:
            out.append(f"- note: {n}")
        return "\n".join(out)

    def csv(self) -> str:
        """The leaderboard cells (CIs, tests against head, measurements), one row each."""
        return self.cells.to_csv(index=False)

    def buckets_csv(self) -> str:
        return self.buckets.to_csv(index=False)


def leaderboard(runs: Iterable[dict[str, Any]], root: str | Path | None = None, *, n_boot: int = stats.N_BOOT,
                seed: int = 0, alpha: float = stats.ALPHA) -> Leaderboard:
    """The leaderboard of a list of run records; ``root`` is the folder their
    ``predictions_file`` paths are relative to (the runs.jsonl folder). Pure: same
    records and sidecars, same tables (the bootstrap is seeded)."""
    runs = list(runs)
    df = long_frame(runs)
    failed = failed_frame(runs)
    if df.empty:
        return Leaderboard(df, [], failed=failed)
    cells, buckets, notes = cell_frames(df, root, n_boot, seed, alpha)
    method = stats.METHOD.format(n_boot=n_boot, alpha=alpha) if cells["ci_lo"].notna().any() else ""
    sections: list[Section] = []
    for (title, gid), group in cells.groupby(["group", "group_id"], sort=False):
        main = group["main_metric"].iloc[0]
        fmt = COLUMNS["metric"][1]
        seeds = group["n_seeds"].max()
        seed_text = f"mean over {seeds} seeds" if seeds > 1 else "1 seed"
        has_ci = group["ci_lo"].notna().any()
        if has_ci:
            note = (f"Cells: {main}, {seed_text}, [95% BCa bootstrap CI over test examples]. "
                    f"{NOT_SIGNIFICANT}: difference from {REFERENCE} at the same budget not significant at {alpha} "
                    f"(paired bootstrap).")
            sections.append(Section(f"{title} — {main} ({seed_text}, 95% CI)",
                                    pivot_cells(group, lambda r, f=fmt: render_metric(r, f)), note, gid,
                                    "metric"))
            if group["p_vs_head"].notna().any():
                sections.append(Section(f"{title} — {main} minus {REFERENCE} (paired bootstrap: Δ [95% CI], p)",
                                        pivot_cells(group[group["strategy"] != REFERENCE],
                                                    lambda r, f=fmt: render_diff(r, f)), "", gid, "diff"))
        else:
            stat = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
            sections.append(Section(f"{title} — {main} ({stat})",
                                    pivot_cells(group, lambda r, f=fmt: render_metric(r, f)), "", gid, "metric"))
        gb = buckets[buckets["group_id"] == gid] if not buckets.empty else buckets
        if not gb.empty:
            sections.append(Section(f"{title} — {main} by document length in tokens "
                                    f"(≤b, b–2b, 2b–4b, >4b; {seed_text}; n = test documents)",
                                    bucket_table(gb, fmt), "", gid, "buckets"))
        runs_g = df[df["sample"].eq(group["sample"].iloc[0]) & df["task"].eq(group["task"].iloc[0])
                    & df["dataset"].eq(group["dataset"].iloc[0]) & df["model"].eq(group["model"].iloc[0])
                    & df["mode"].eq(group["mode"].iloc[0]) & df["data_label"].eq(group["data_label"].iloc[0])]
        stat = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
        for column, (heading, cfmt) in COLUMNS.items():
            if column == "metric" or runs_g[column].isna().all() or not runs_g[column].fillna(0).any():
                continue  # absent from these runs, or zero for all (e.g. no selection strategy)
            sections.append(Section(f"{title} — {heading} ({stat})", pivot(runs_g, column, cfmt), "", gid, column))
    for n in notes:
        warnings.warn(n, stacklevel=2)
    return Leaderboard(df, sections, cells, buckets, failed, notes, method)


# ---------------------------------------------------------------- one table across models


def table_mode(spec: dict) -> str:
    """The mode a leaderboard groups by: a peft method is a method of its own (its runs are never
    averaged with full fine-tuning's as if they were seeds); plain ``finetune`` means full."""
    label = mode_label(spec)
    return "finetune" if label == "finetune:full" else label


def mode_label(spec: dict) -> str:
    """``probe``, or ``finetune`` with its kind (``finetune:lora``): the kinds are different methods.
    A non-default inference precision or NER setting is appended (``probe+bfloat16``,
    ``finetune:full+stitch=longest_entity``), so such runs never average with the defaults'."""
    kind = (spec.get("train") or {}).get("finetune", "full")
    label = spec["mode"] if spec["mode"] != "finetune" else f"finetune:{kind}"
    extras = [spec["precision"]] if spec.get("precision", "auto") != "auto" else []
    task = spec.get("task", "")
    own = spec.get(task) or {}
    extras += [f"{k}={own[k]}" for k, v in _mode_defaults(task).items() if own.get(k, v) != v]
    return "+".join([label, *extras])


def comparison_frame(runs: list[dict]):
    """Every model, mode and fine-tuning kind of one task in one table (the leaderboard splits
    them by model): macro-F1 next to the tokens each document cost and the measured seconds
    per document, so a long-context model and short-model strategies compare at equal tokens
    and at equal time. Pure: a function of the run records. Times are as measured in each run
    (separate processes): compare them only between runs made side by side on one machine."""
    rows = []
    for r in _dedupe(runs):
        if r.get("status", "ok") != "ok":
            continue
        spec, m = r["spec"], r["measurements"]
        docs = max(1, m.get("docs") or 1)
        rows.append({"dataset": spec["dataset"], "sample": sample_key(r), "model": spec["model"],
                     "mode": mode_label(spec), "strategy": spec["strategy"]["label"],
                     "budget": r.get("budget", spec.get("budget")), "seed": spec["seed"],
                     "metric": r["metrics"][r["main_metric"]], "main": r["main_metric"],
                     "tokens/doc": m.get("real_tokens", 0) / docs, "coverage": m.get("coverage"),
                     "s/doc": m.get("inference_seconds", float("nan")) / docs,
                     "trainable": m.get("trainable_params"),
                     "train tok/s": m.get("train_tokens_per_s") if spec["mode"] == "finetune" else None,
                     "peak MB": m.get("peak_memory_mb")})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    keys = ["dataset", "sample", "model", "mode", "strategy", "budget", "main"]
    g = df.groupby(keys, sort=False, dropna=False)
    out = g.agg(seeds=("seed", "nunique"), metric=("metric", "mean"), std=("metric", "std"),
                **{c: (c, "mean") for c in ("tokens/doc", "coverage", "s/doc", "trainable", "train tok/s",
                                              "peak MB")}).reset_index()
    out["time vs fastest"] = out["s/doc"] / out.groupby(["dataset", "sample"])["s/doc"].transform("min")
    return out.sort_values(["dataset", "sample", "tokens/doc", "model"]).reset_index(drop=True)


def comparison_markdown(runs: list[dict]) -> str:
    df = comparison_frame(runs)
    if df.empty:
        return "no successful runs\n"
    parts = []
    for (dataset, _), block in df.groupby(["dataset", "sample"], sort=False):
        main = block["main"].iloc[0]
        t = block.drop(columns=["dataset", "sample", "main"]).copy()
        t[main] = [f"{m:.3f}" + (f" ± {s:.3f}" if s == s else "") for m, s in zip(t.pop("metric"), t.pop("std"))]
        for col, fmt in (("tokens/doc", "{:.0f}"), ("coverage", "{:.2f}"), ("s/doc", "{:.3g}"),
                         ("time vs fastest", "{:.1f}x"), ("trainable", "{:,.0f}"), ("train tok/s", "{:.0f}"),
                         ("peak MB", "{:.0f}")):
            t[col] = [fmt.format(v) if v == v and v is not None else "–" for v in t[col]]
        t = t[["model", "mode", "strategy", "budget", "seeds", main, "tokens/doc", "coverage", "s/doc",
               "time vs fastest", "trainable", "train tok/s", "peak MB"]]
        parts.append(f"### {dataset}: {main} by tokens read per document (one sample; all models)\n\n"
                     + tabulate(t, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
                     + "\n")
    return "\n".join(parts)


def context_tables(runs: list[dict[str, Any]]) -> str:
    """Per-k tables (strategy × budget, mean ± std over seeds): a pure function of the run records."""
    df = long_frame([r for r in runs if r.get("task") == "qa"])
    if df.empty:
        return ""
    out = ["# QA by context_paragraphs\n",
           "Generated by `ctxbench table` from `runs.jsonl`; do not edit. k = neighbouring paragraphs added to each "
           "question's gold paragraph; budget = context tokens per window; every k holds the same questions.\n"]
    for (dataset, model, mode), g in df.groupby(["dataset", "model", "mode"], sort=True):
        ks = sorted({c.split("]")[0][4:] for c in g.columns if c.startswith("m.k[") and c.endswith("].f1")
                     and "bucket" not in c}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
        seeds = g["seed"].nunique()
        stat = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
        for k in ks:
            for m, name, fmt in (("f1", "F1", "{:.1f}"), ("exact_match", "EM", "{:.1f}"),
                                 ("answer_reachable", "answer reachable %", "{:.1f}")):
                col = f"m.k[{k}].{m}"
                if col not in g or g[col].isna().all():
                    continue
                n = int(g[f"m.k[{k}].n"].max()) if f"m.k[{k}].n" in g else 0
                out.append(f"### qa · {dataset} · {model} · {mode} · k={k} — {name} ({stat}; {n} questions)\n")
                out.append(tabulate(pivot(g, col, fmt), headers="keys", tablefmt="github", stralign="right") + "\n")
            rows = []
            for b in BUCKETS:
                col, ncol = f"m.k[{k}].bucket[{b}].f1", f"m.k[{k}].bucket[{b}].n"
                if col in g and g[col].notna().any():
                    t = pivot(g, col, "{:.1f}")
                    n = pivot(g, ncol, "{:.0f}")
                    t = t.astype(str) + " (n=" + n.astype(str) + ")"
                    t.insert(0, "length", b)
                    rows.append(t)
            if rows:

                out.append(f"### qa · {dataset} · {model} · {mode} · k={k} — F1 by context length in tokens "
                           f"(≤b, b–2b, 2b–4b, >4b; {stat})\n")
                out.append(tabulate(pd.concat(rows).sort_index(kind="stable"), headers="keys", tablefmt="github",
                                    stralign="right") + "\n")
    return "\n".join(out)


def write_leaderboard(runs_path: str | Path, out_dir: str | Path | None = None) -> Leaderboard:
    from ctxbench.bench.results import read_jsonl
    from ctxbench.tasks.cache import atomic_write_text

    runs_path = Path(runs_path)
    out_dir = Path(out_dir or runs_path.parent)
    runs = read_jsonl(runs_path)
    board = leaderboard(runs, root=runs_path.parent)
    header = f"# Leaderboard: {out_dir.name}\n\nGenerated by `ctxbench table` from `{runs_path.name}`; do not edit.\n\n"
    atomic_write_text(out_dir / "leaderboard.md", header + board.markdown())
    atomic_write_text(out_dir / "leaderboard.csv", board.csv())
    atomic_write_text(out_dir / "leaderboard_buckets.csv", board.buckets_csv())
    if len({(r["spec"]["model"], mode_label(r["spec"])) for r in runs if r.get("status", "ok") == "ok"}) > 1:
        atomic_write_text(out_dir / "comparison.md", f"# Every model and mode of {out_dir.name} side by side\n\n"
                          f"Generated by `ctxbench table` from `{runs_path.name}`; do not edit.\n\n"
                          + comparison_markdown(runs))
    per_context = context_tables(runs)  # tasks that score each example over several contexts (QA's k)
    if per_context:
        atomic_write_text(out_dir / "by_context.md", per_context)
    return board
