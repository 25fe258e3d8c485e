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

@functools.lru_cache(maxsize=None)
def data_provenance(task: str, dataset: str) -> str:
    """The task's own account of a built-in data set's packaged copy (``provenance(dataset)``, optional in the
    task contract), printed with every table of it; '' when the task has none or the data set is not built in."""
    from ctxbench.tasks import get_task, task_names

    if task not in task_names():
        return ""
    fn = getattr(get_task(task), "provenance", None)
    return fn(dataset) if fn else ""


def sample_text(limits: dict[str, Any] | None, data_seed: Any) -> str:
    """'subsample (data_seed 0): 600 train / 100 val / 600 test' for a fixed per-split subsample; '' for the
    whole data set (every table and study part of a subsample says so)."""
    limits = limits or {}
    if all(limits.get(s) is None for s in ("train", "val", "test")):
        return ""
    sizes = " / ".join(f"{'all' if limits.get(s) is None else f'{limits[s]:,}'} {s}" for s in ("train", "val", "test"))
    return f"subsample (data_seed {data_seed}): {sizes}"


def group_sample_text(group: pd.DataFrame) -> str:
    """:func:`sample_text` of a group of cells (its ``sample`` key)."""
    s = json.loads(group["sample"].iloc[0]) if "sample" in group and len(group) else {}
    return sample_text(s.get("limits"), s.get("data_seed"))


def _data_note(group: pd.DataFrame) -> str:
    text = data_provenance(str(group["task"].iloc[0]), str(group["dataset"].iloc[0]))
    sample = group_sample_text(group)
    return (f" Data: {text}." if text else "") + (f" Sample: a fixed {sample}." if sample else "")


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
    "optimizer_steps": ("optimizer steps (training)", "{:.0f}"),
    "train_tokens_seen": ("training tokens seen", "{:.0f}"),
}
# Measurements the report carries besides COLUMNS (cost axes of the Pareto plots; a selection strategy's own time).
EXTRA_MEASURES = ("real_tokens", "latency_p50_ms", "latency_p95_ms", "select_seconds_test")
# Measured per-cell cost (each strategy timed alone, warm-up then median): column -> the measurement-key
# suffix that names it (a run may nest it, e.g. ``cost.latency_b1_p50_ms``). Preferred over the grid's
# single-pass (token-share) figures wherever a run carries them.
COST_FIELDS = {"cost_latency_ms": "latency_b1_p50_ms", "cost_docs_per_s": "cost_docs_per_s",
               "cost_peak_mb": "cost_peak_mb", "cost_select_s": "cost_select_seconds_median"}
MEASURES = tuple(k for k in COLUMNS if k != "metric") + EXTRA_MEASURES + tuple(COST_FIELDS)
# Buckets with fewer test examples are hidden (and the table says so): too few to read.
MIN_BUCKET = 30
UP, DOWN = "▲", "▼"

# Mirrors tasks.base.LENGTH_BUCKETS (a test checks it): importing tasks would load torch.
BUCKETS = ("<=b", "b-2b", "2b-4b", ">4b")
REFERENCE = "head"
BEST = "@best"  # as a reference: each budget's best strategy by its point estimate (recommendation tables)
GROUP_KEYS = ["task", "dataset", "data_label", "model", "mode", "sample"]


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
            **_cost_fields(meas),
            "data_label": r.get("data_label") or "",
            "sample": sample_key(r),
            "run_id": r.get("run_id", ""),
            "created_at": r.get("created_at", ""),
            "predictions_file": r.get("predictions_file"),
            "predictions_sha": r.get("predictions_sha"),
        }
        rows.append(row)
    return _latest_per_cell(pd.DataFrame(rows))


def _latest_per_cell(df: pd.DataFrame) -> pd.DataFrame:
    """One run per table cell and seed: where records of different run_ids fill the same (group, strategy,
    budget, seed), e.g. one written by an older version of the code, the newest stands and the others are
    left out with a warning (``attrs["notes"]``) instead of being averaged with it as if they were seeds."""
    if df.empty:
        return df
    cell = [*GROUP_KEYS, "strategy", "budget", "seed"]
    df = df.sort_values("created_at", kind="stable")
    old = df.duplicated(cell, keep="last")
    if not old.any():
        return df.sort_index()
    dropped = df[old]
    where = ", ".join(f"{n} in {g[0]} {g[1]}" for g, n in dropped.groupby(["dataset", "mode"]).size().items())
    note = (f"{int(old.sum())} older run(s) left out where a newer run of another run_id fills the same table "
            f"cell and seed ({where}); their lines stay in runs.jsonl")
    warnings.warn(note, stacklevel=3)
    out = df[~old].sort_index()
    out.attrs["notes"] = [note]
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cost_fields(meas: dict[str, Any]) -> dict[str, Any]:
    """The measured cost fields a run carries (any nesting), under COST_FIELDS' column names."""
    flat = _flat(meas)
    out: dict[str, Any] = {}
    for column, suffix in COST_FIELDS.items():
        hits = [v for k, v in flat.items() if k.endswith(suffix) and isinstance(v, (int, float))]
        if hits:
            out[column] = float(hits[0])
    return out


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
    from ctxbench.bench.results import sidecar_rows

    return sidecar_rows(path, data)  # plain or gzipped JSON lines


# --------------------------------------------------------------------------- cell statistics


@dataclass
class _BudgetStats:
    """Bootstrap results of every strategy at one budget of one group."""

    n_examples: int = 0
    n_units: int = 0  # resampled units (clusters of rows: a QA question over its contexts)
    ci: dict[str, stats.Interval] = field(default_factory=dict)  # two-level (seeds and test units)
    ci_units: dict[str, stats.Interval] = field(default_factory=dict)  # test units only (the old interval)
    vs_ref: dict[str, stats.Comparison] = field(default_factory=dict)
    se: dict[str, tuple[float, float]] = field(default_factory=dict)  # difference's SE: (two-level, units only)
    buckets: dict[tuple[str, str], tuple[int, stats.Interval]] = field(default_factory=dict)
    reference: str | None = None  # what vs_ref compares against (head, or the budget's best with BEST)


def cluster_key(row: dict[str, Any]) -> Any:
    """The resampling unit of a sidecar row: rows that share it move together. QA scores one
    question over several ``context_paragraphs`` (same ``id``); a row may name its ``cluster``."""
    for k in ("cluster", "id"):
        if row.get(k) is not None:
            return row[k]
    return ("i", row["i"])


def _budget_stats(task: str, main: str, sub: pd.DataFrame, root: str | Path | None, n_boot: int, seed: int,
                  alpha: float, notes: list[str], where: dict[str, Any] | None = None,
                  reference: str = REFERENCE, rows_hook: Callable[[list[dict]], list[dict]] | None = None
                  ) -> _BudgetStats:
    """CIs, tests against the reference (head, or with ``BEST`` the budget's best strategy) and buckets
    for all strategies at one budget, on shared resamples (``where``: only the sidecar rows with these
    field values, e.g. one QA ``k``). ``rows_hook``: rewrites each run's sidecar rows first, keeping their
    sums (e.g. a ``bucket`` by evidence position, or a document split into rows per third; bench/report/
    position.py)."""
    out = _BudgetStats()
    preds = {rid: read_predictions(root, run) for rid, run in sub.set_index("run_id", drop=False).iterrows()}
    if rows_hook is not None:
        preds = {rid: None if rows is None else rows_hook(rows) for rid, rows in preds.items()}
    if where:
        preds = {rid: None if rows is None else [r for r in rows if all(r.get(k) == v for k, v in where.items())]
                 for rid, rows in preds.items()}
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
    rows0 = [aligned[all_ids[0]][i] for i in order]
    clusters = [cluster_key(r) for r in rows0]
    units, unit_keys = stats.cluster_sum(features, clusters)  # (R, c, k): rows of one unit summed
    unit_index = {u: j for j, u in enumerate(unit_keys)}
    offsets = np.cumsum([0] + [len(ids) for ids in usable.values()])
    span = {s: slice(offsets[j], offsets[j + 1]) for j, s in enumerate(usable)}
    subsets: dict[tuple[str, str | None], Any] = {(s, None): units[span[s]] for s in usable}  # (S, c, k) each
    budget = int(sub["budget"].iloc[0])
    labels = [r.get("bucket") or (length_bucket(int(r["n_tokens"]), budget) if "n_tokens" in r else None)
              for r in rows0]
    members = {b: np.flatnonzero([x == b for x in labels]) for b in _bucket_order(labels)}
    for b, rows_b in members.items():
        fb, keys_b = stats.cluster_sum(features[:, rows_b], [clusters[i] for i in rows_b])  # (R, c_b, k)
        idx = np.array([unit_index[u] for u in keys_b], dtype=np.int64)
        for s in usable:
            subsets[(s, b)] = (fb[span[s]], idx)  # (S, c_b, k), (c_b,)
    dists = stats.bootstrap_both(stat, subsets, n_boot, seed)
    feats = {key: c[0] if isinstance(c, tuple) else c for key, c in subsets.items()}
    points = {key: stats.seed_mean_point(stat, f) for key, f in feats.items()}
    jacks = {key: stats.jackknife(stat, f) for key, f in feats.items()}
    out.n_examples, out.n_units = len(order), len(unit_keys)
    for s in usable:
        key = (s, None)
        out.ci[s] = stats.bca_interval(points[key], dists[key][0], jacks[key], alpha)
        out.ci_units[s] = stats.bca_interval(points[key], dists[key][1], jacks[key], alpha)
        for b, rows_b in members.items():
            iv = stats.bca_interval(points[(s, b)], dists[(s, b)][0], jacks[(s, b)], alpha)
            out.buckets[(s, b)] = (len(rows_b), iv)
    if reference == BEST:
        hib = bool(sub["higher_is_better"].iloc[0])
        pick = max if hib else min
        reference = pick(usable, key=lambda s: points[(s, None)])
    if reference in usable:
        out.reference = reference
        ref = (reference, None)
        for s in usable:
            if s != reference:
                key = (s, None)
                both, only = dists[key][0] - dists[ref][0], dists[key][1] - dists[ref][1]
                out.vs_ref[s] = stats.compare(points[key] - points[ref], both, jacks[key] - jacks[ref], alpha)
                out.se[s] = (float(np.nanstd(both)), float(np.nanstd(only)))
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
                alpha: float = stats.ALPHA, where: dict[str, Any] | None = None, reference: str = REFERENCE,
                rows_hook: Callable[[list[dict]], list[dict]] | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Runs -> one row per (group, strategy, budget) and one per (…, length bucket). ``reference``:
    what the ``*_vs_head`` columns compare against (``BEST``: each budget's best; column ``reference``)."""
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
            bs = _budget_stats(kd["task"], main, sub, root, n_boot, seed, alpha, notes, where, reference, rows_hook)
            for strategy in _strategy_order(sub["strategy"]):
                runs = sub[sub["strategy"] == strategy].sort_values("seed")
                ci, cmp = bs.ci.get(strategy), bs.vs_ref.get(strategy)
                ciu = bs.ci_units.get(strategy)
                se_both, se_units = bs.se.get(strategy, (np.nan, np.nan))
                row = {**common, "budget": int(budget), "strategy": strategy, "reference": bs.reference,
                       "n_seeds": len(runs),
                       "seeds": ",".join(str(s) for s in runs["seed"]),
                       "n_examples": bs.n_examples if ci else np.nan, "n_units": bs.n_units if ci else np.nan,
                       "metric": runs["metric"].mean(), "metric_std": runs["metric"].std(ddof=1),
                       "ci_lo": ci.lo if ci else np.nan, "ci_hi": ci.hi if ci else np.nan,
                       "ci_units_lo": ciu.lo if ciu else np.nan, "ci_units_hi": ciu.hi if ciu else np.nan,
                       "diff_vs_head": cmp.diff if cmp else np.nan, "diff_lo": cmp.lo if cmp else np.nan,
                       "diff_hi": cmp.hi if cmp else np.nan, "p_vs_head": cmp.p if cmp else np.nan,
                       "se_diff": se_both, "se_diff_units": se_units,
                       "p_holm": np.nan, "significant": None}
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
    cells_df = pd.DataFrame(cells)
    if not cells_df.empty:
        cells_df = _adjust(cells_df, alpha)
    return cells_df, pd.DataFrame(buckets), notes


def _adjust(cells: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Holm over each table's strategy-vs-head family (one group, every budget), the direction
    mark, the table's minimum detectable difference and, per undecided cell, the test units
    that would decide it."""
    cells = cells.copy()
    cells["p_holm"] = np.nan
    cells["mark"] = ""
    cells["mde"] = np.nan
    cells["more_units"] = np.nan
    z = stats.z_power(alpha)
    for _, g in cells.groupby("group_id", sort=False):
        tested = g.index[g["p_vs_head"].notna()]
        if not len(tested):
            continue
        adj = stats.holm(g.loc[tested, "p_vs_head"].to_numpy(float))
        cells.loc[tested, "p_holm"] = adj
        cells.loc[tested, "significant"] = adj < alpha
        sign = np.where(g["higher_is_better"].iloc[0], 1, -1)
        better = sign * g.loc[tested, "diff_vs_head"].to_numpy(float) > 0
        cells.loc[tested, "mark"] = np.where(adj < alpha, np.where(better, UP, DOWN), "")
        cells.loc[g.index, "mde"] = z * float(np.nanmedian(g.loc[tested, "se_diff"]))
        for i in tested:
            r = cells.loc[i]
            if r["p_holm"] >= alpha:
                need = stats.units_needed(r["diff_vs_head"], r["se_diff"], r["se_diff_units"], int(r["n_units"]),
                                          alpha)
                cells.loc[i, "more_units"] = need - r["n_units"] if np.isfinite(need) else np.inf
    cells["significant"] = cells["significant"].astype(object)
    return cells


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
    """mean [lo, hi] with ▲ / ▼ where Holm-significantly better / worse than head; mean ± std without CI."""
    if not np.isfinite(row["ci_lo"]):
        if row["n_seeds"] > 1 and np.isfinite(row["metric_std"]):
            return f"{_num(row['metric'], fmt)} ± {_num(row['metric_std'], fmt)}"
        return _num(row["metric"], fmt)
    mark = f" {row['mark']}" if row.get("mark") else ""
    return f"{_num(row['metric'], fmt)} [{_num(row['ci_lo'], fmt)}, {_num(row['ci_hi'], fmt)}]{mark}"


def render_diff(row: pd.Series, fmt: str = "{:.3f}") -> str:
    """Δ [lo, hi], the mark, the Holm-adjusted p; for an undecided one the test units that would decide it."""
    if not np.isfinite(row["p_vs_head"]):
        return "–"
    mark = f" {row['mark']}" if row.get("mark") else ""
    text = (f"{_num(row['diff_vs_head'], fmt, True)} [{_num(row['diff_lo'], fmt, True)}, "
            f"{_num(row['diff_hi'], fmt, True)}]{mark} {_p(row['p_holm'])}")
    more = row.get("more_units", np.nan)
    if not row.get("mark") and more == more:
        text += "; n more: seeds" if not np.isfinite(more) else f"; n more ≈ {_count(more)}"
    return text


def _count(x: float) -> str:
    """A rough count, two significant digits."""
    x = max(float(x), 1.0)
    digits = max(0, int(np.floor(np.log10(x))) - 1)
    return f"{int(round(x, -digits)):,}"


def bucket_table(buckets: pd.DataFrame, fmt: str = "{:.3f}", min_n: int = MIN_BUCKET) -> pd.DataFrame:
    """(strategy, length bucket) × budget; each cell the metric [95% CI] and how many test examples fall
    there. A bucket under ``min_n`` examples shows only its count."""
    if buckets.empty:
        return pd.DataFrame()

    def text(r: pd.Series) -> str:
        if r["n"] < min_n:
            return f"(n={r['n']:.0f}, hidden)"
        ci = f" [{_num(r['ci_lo'], fmt)}, {_num(r['ci_hi'], fmt)}]" if np.isfinite(r["ci_lo"]) else ""
        return f"{_num(r['metric'], fmt)}{ci} (n={r['n']:.0f})"

    b = buckets.assign(_s=buckets.apply(text, axis=1),
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

    def markdown(self, groups: Iterable[str] | None = None) -> str:
        """The sections (of the given group ids only, in that order; default: all), then the method."""
        out = []
        sections = self.sections
        if groups is not None:
            order = {g: k for k, g in enumerate(groups)}
            sections = sorted((s for s in sections if s.group_id in order), key=lambda s: order[s.group_id])
        for s in sections:
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
                seed: int = 0, alpha: float = stats.ALPHA, where: dict[str, Any] | None = None,
                metric_prefix: str = "") -> Leaderboard:
    """The leaderboard of a list of run records; ``root`` is the folder their
    ``predictions_file`` paths are relative to (the runs.jsonl folder). Pure: same
    records and sidecars, same tables (the bootstrap is seeded)."""
    runs = list(runs)
    df = long_frame(runs)
    failed = failed_frame(runs)
    if metric_prefix and not df.empty:  # a slice of the examples (one QA k): its recorded metric is m.<prefix><main>
        cols = [f"m.{metric_prefix}{m}" for m in df["main_metric"]]
        df = df.assign(metric=[df.at[i, c] if c in df else np.nan for i, c in zip(df.index, cols)])
        df = df[df["metric"].notna()]
    if df.empty:
        return Leaderboard(df, [], failed=failed)
    cells, buckets, notes = cell_frames(df, root, n_boot, seed, alpha, where)
    notes = [*df.attrs.get("notes", []), *notes]
    method = method_text(n_boot, alpha) if cells["ci_lo"].notna().any() else ""
    sections: list[Section] = []
    for (title, gid), group in cells.groupby(["group", "group_id"], sort=False):
        main = group["main_metric"].iloc[0]
        fmt = metric_format(group["metric"])
        seeds = group["n_seeds"].max()
        seed_text = f"mean over {seeds} seeds" if seeds > 1 else "1 seed"
        has_ci = group["ci_lo"].notna().any()
        if has_ci:
            note = (f"Cells: {main}, {seed_text}, [95% two-level bootstrap CI over seeds and test units]. "
                    f"{UP} / {DOWN}: better / worse than {REFERENCE} at the same budget, Holm-adjusted p < {alpha} "
                    f"over this table's {int(group['p_vs_head'].notna().sum())} comparisons. "
                    + mde_text(group) + _data_note(group))
            sections.append(Section(f"{title} — {main} ({seed_text}, 95% CI)",
                                    pivot_cells(group, lambda r, f=fmt: render_metric(r, f)), note, gid,
                                    "metric"))
            if group["p_vs_head"].notna().any():
                sections.append(Section(f"{title} — {main} minus {REFERENCE} (paired two-level bootstrap: "
                                        f"Δ [95% CI], Holm-adjusted p)",
                                        pivot_cells(group[group["strategy"] != REFERENCE],
                                                    lambda r, f=fmt: render_diff(r, f)), "", gid, "diff"))
        else:
            stat = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
            sections.append(Section(f"{title} — {main} ({stat})",
                                    pivot_cells(group, lambda r, f=fmt: render_metric(r, f)), "", gid, "metric"))
        gb = buckets[buckets["group_id"] == gid] if not buckets.empty else buckets
        if not gb.empty:
            hidden = int((gb.drop_duplicates(["budget", "bucket"])["n"] < MIN_BUCKET).sum())
            bnote = (f"Buckets under {MIN_BUCKET} test examples are hidden ({hidden} here): too few to read."
                     if hidden else "")
            sections.append(Section(f"{title} — {main} by document length in tokens "
                                    f"(≤b, b–2b, 2b–4b, >4b; {seed_text}; [95% CI]; n = test examples)",
                                    bucket_table(gb, fmt), bnote, gid, "buckets"))
        runs_g = df[df["sample"].eq(group["sample"].iloc[0]) & df["task"].eq(group["task"].iloc[0])
                    & df["dataset"].eq(group["dataset"].iloc[0]) & df["model"].eq(group["model"].iloc[0])
                    & df["mode"].eq(group["mode"].iloc[0]) & df["data_label"].eq(group["data_label"].iloc[0])]
        stat = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
        for column, (heading, cfmt) in COLUMNS.items():
            if column == "metric" or _uninformative(runs_g[column], cfmt):
                continue  # absent from these runs, zero for all, or one value everywhere
            sections.append(Section(f"{title} — {heading} ({stat})", pivot(runs_g, column, cfmt), "", gid, column))
    for n in notes:
        if n not in df.attrs.get("notes", ()):  # long_frame warned of its own already
            warnings.warn(n, stacklevel=2)
    return Leaderboard(df, sections, cells, buckets, failed, notes, method)


def method_text(n_boot: int = stats.N_BOOT, alpha: float = stats.ALPHA) -> str:
    return stats.METHOD.format(n_boot=f"{n_boot:,}", alpha=alpha, power=stats.POWER,
                               mc=stats.mc_error(alpha, n_boot))


def mde_text(group: pd.DataFrame) -> str:
    """The table's minimum detectable difference from head, or nothing when untested."""
    mde = group["mde"].dropna() if "mde" in group else pd.Series(dtype=float)
    if mde.empty:
        return ""
    units = int(group["n_units"].max())
    fmt = metric_format(group["metric"])
    return (f"MDE (80% power, α = {stats.ALPHA}): ±{fmt.format(mde.iloc[0])} "
            f"with these {units:,} test units and {int(group['n_seeds'].max())} seeds.")


def _uninformative(values: pd.Series, fmt: str) -> bool:
    """All missing, all zero, or one printed value everywhere: a table that says nothing."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    return v.empty or not v.any() or len({fmt.format(x) for x in v}) == 1


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


def context_values(runs: list[dict[str, Any]]) -> list[str]:
    """The ``context_paragraphs`` values (k) QA runs recorded metrics for, in order."""
    df = long_frame([r for r in runs if r.get("task") == "qa"])
    ks = {c.split("]")[0][4:] for c in df.columns if c.startswith("m.k[") and c.endswith("].f1") and "bucket" not in c}
    return sorted(ks, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def reachable_f1(runs: list[dict[str, Any]], root: str | Path | None, k: str) -> pd.DataFrame:
    """Per run: F1 on the questions whose answer some window of the strategy reached, at one k (from the
    sidecars; the reachable set differs by strategy, so this is a description, not a paired test)."""
    rows = []
    for r in long_frame([r for r in runs if r.get("task") == "qa"]).to_dict("records"):
        preds = read_predictions(root, r)
        if not preds:
            continue
        sel = [x for x in preds if str(x.get("k")) == k and x.get("reachable")]
        if sel:
            rows.append({"strategy": r["strategy"], "budget": r["budget"], "seed": r["seed"],
                         "f1_reachable": float(np.mean([x["f1"] for x in sel])), "n_reachable": len(sel)})
    return pd.DataFrame(rows)


def context_sections(runs: list[dict[str, Any]], root: str | Path | None = None,
                     n_boot: int = stats.N_BOOT) -> tuple[list[Section], str]:
    """Per-k sections: F1 with its two-level interval and the Holm-adjusted paired test against head on the
    questions at that k alone (each question one unit), the length buckets, the share of answers
    reachable, and F1 on the reachable questions; and the method text."""
    qa = [r for r in runs if r.get("task") == "qa"]
    out: list[Section] = []
    method = ""
    df = long_frame(qa)
    for k in context_values(qa):
        board = leaderboard(qa, root, n_boot=n_boot, where={"k": int(k) if k.isdigit() else k},
                            metric_prefix=f"k[{k}].")
        method = method or board.method
        out += [Section(f"k={k} · {sec.title}", sec.table, sec.note, sec.group_id, sec.kind)
                for sec in board.sections if sec.kind in ("metric", "diff", "buckets")]
        for (dataset, model, mode), g in df.groupby(["dataset", "model", "mode"], sort=True):
            seeds = g["seed"].nunique()
            stat = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
            col = f"m.k[{k}].answer_reachable"
            if col in g and g[col].notna().any():
                out.append(Section(f"k={k} · qa · {dataset} · {model} · {mode} — answer reachable % ({stat})",
                                   pivot(g, col, "{:.1f}"), "", "", "reachable"))
        rf = reachable_f1(qa, root, k)
        if not rf.empty:
            out.append(Section(f"k={k} — F1 on the questions whose answer the strategy's windows reach "
                               f"(mean ± std over seeds; the set differs by strategy, so no paired test)",
                               pivot(rf, "f1_reachable", "{:.1f}"), "", "", "f1_reachable"))
    return out, method


def context_tables(runs: list[dict[str, Any]], root: str | Path | None = None, n_boot: int = stats.N_BOOT) -> str:
    """by_context.md: :func:`context_sections` as markdown. A pure function of the records and sidecars."""
    sections, method = context_sections(runs, root, n_boot)
    if not sections:
        return ""
    out = ["# QA by context_paragraphs\n",
           "Generated by `ctxbench table` from `runs.jsonl`; do not edit. k = neighbouring paragraphs added to each "
           "question's gold paragraph; budget = context tokens per window; every k holds the same questions.\n"]
    for sec in sections:
        out.append(f"### {sec.title}\n")
        out.append(tabulate(sec.table, headers="keys", tablefmt="github", stralign="right") + "\n")
        if sec.note:
            out.append(sec.note + "\n")
    if method:
        out.append(f"**Method.** {method}\n")
    return "\n".join(out)


# ---------------------------------------------------------------- the summary first


def default_sweep_specs(task: str) -> set[str] | None:
    """Canonical specs (without task_version) of every cell of a task's default sweep, for
    every mode ``mode: auto`` and every precision ``precision: native`` may resolve to (on any
    machine, so the tables do not depend on where they are written); None when the task has no built-in sweep."""
    import dataclasses
    import itertools

    import yaml

    from ctxbench.bench.config import CONFIG_DIR, load_sweep

    path = CONFIG_DIR / f"{task}.yaml"
    if not path.exists():
        return None
    raw = yaml.safe_load(path.read_text()) or {}
    mode, precision = raw.get("mode", "probe"), raw.get("precision", "auto")
    modes = ["probe", "finetune"] if mode == "auto" else [mode]
    precisions = ["auto", "bfloat16"] if precision == "native" else [precision]
    sweep = load_sweep(task, [f"mode={modes[0]}", f"precision={precisions[0]}"])
    out = set()
    for m, p in itertools.product(modes, precisions):
        out |= {canonical(c.to_dict()) for c in dataclasses.replace(sweep, mode=m, precision=p).cells()}
    return out


def spec_key(run: dict[str, Any]) -> str:
    """A run's spec as the sweep states it (task_version is the task's, not the sweep's)."""
    return canonical({k: v for k, v in run.get("spec", {}).items() if k != "task_version"})


def default_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The runs of their task's default sweep, or None when no task of these runs has one."""
    keys: set[str] = set()
    known = False
    for task in sorted({r.get("spec", {}).get("task") for r in runs} - {None}):
        k = default_sweep_specs(task)
        if k is not None:
            known = True
            keys |= k
    return [r for r in runs if spec_key(r) in keys] if known else None


def short_names(labels: Iterable[str]) -> dict[str, str]:
    """``sliding[max_windows=16,pool=mean]`` -> ``sliding`` where the base name is unique in the table."""
    labels = list(dict.fromkeys(labels))
    base = {s: s.split("[", 1)[0] for s in labels}
    count = pd.Series(list(base.values())).value_counts()
    return {s: base[s] if count[base[s]] == 1 else s for s in labels}


def _ci(lo: float, hi: float, fmt: str, sign: bool = False) -> str:
    return f"[{_num(lo, fmt, sign)}, {_num(hi, fmt, sign)}]"


def recommendation(cells: pd.DataFrame, budget: int, fmt: str = "{:.3f}",
                   names: dict[str, str] | None = None) -> str:
    """One generated sentence for one budget of one table, from its Holm-adjusted tests against head:
    which strategies beat head (the best with its Δ and CI) and which are worse."""
    c = cells[(cells["budget"] == budget) & (cells["strategy"] != REFERENCE)]
    names = names or {s: s for s in c["strategy"]}
    if c.empty or c["p_vs_head"].isna().all():
        return f"b = {budget}: no test against {REFERENCE}."
    hib = bool(cells["higher_is_better"].iloc[0])

    def one(r: pd.Series) -> str:
        return (f"{names.get(r['strategy'], r['strategy'])} {_num(r['diff_vs_head'], fmt, True)} "
                f"{_ci(r['diff_lo'], r['diff_hi'], fmt, True)}")

    up = c[c["mark"] == UP].sort_values("diff_vs_head", ascending=not hib)
    down = c[c["mark"] == DOWN].sort_values("diff_vs_head", ascending=hib)
    if len(up):
        head = f"best is {one(up.iloc[0])}"
        if len(up) > 1:
            head += f" (also ahead: {', '.join(names.get(x, x) for x in up['strategy'].iloc[1:])})"
    else:
        head = f"no strategy beats {REFERENCE}"
    tail = []
    if len(down):
        worse = [one(r) for _, r in down.iterrows()]
        tail.append(f"{worse[0]} is worse" if len(worse) == 1 else "worse: " + "; ".join(worse))
    same = (c["diff_lo"] == 0) & (c["diff_hi"] == 0)  # the same predictions as head on every resample
    undecided = int(((c["mark"] == "") & ~same).sum())
    if undecided:
        tail.append(f"{undecided} of {len(c)} undecided")
    if same.any():
        tail.append(f"{', '.join(names.get(x, x) for x in c.loc[same, 'strategy'])} "
                    f"identical to {REFERENCE}")
    return f"b = {budget}: {head}" + "".join(f"; {t}" for t in tail) + "."


def metric_format(values: pd.Series) -> str:
    """3 decimals for metrics on [0, 1], 1 for those on [0, 100] (SQuAD F1)."""
    v = pd.to_numeric(values, errors="coerce").abs()
    return "{:.1f}" if v.notna().any() and v.max() > 1.5 else "{:.3f}"


def selects(label: str) -> bool:
    """Whether the strategy of this label chooses sentences, so its cost includes splitting and selection."""
    from ctxbench.strategies import needs, registered, strategy_class

    name = label.split("[", 1)[0]
    return name in registered() and bool(needs(strategy_class(name)))


def summary_table(group: pd.DataFrame, fmt: str | None = None) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """One compact table of one (dataset, model, mode): rows budget × strategy; the legend of the
    short names; notes on where the cost columns come from."""
    fmt = fmt or metric_format(group["metric"])
    names = short_names(_strategy_order(group["strategy"]))
    main = group["main_metric"].iloc[0]
    hib = bool(group["higher_is_better"].iloc[0])
    has = {c: c in group and group[c].notna().any() for c in COST_FIELDS}
    ms_col, mb_col = ("cost_latency_ms", "cost_peak_mb")
    ms_head = "ms/doc (measured, b=1 p50)" if has[ms_col] else "ms/doc (grid estimate)"
    mb_head = "peak MB (measured)" if has[mb_col] else "peak MB (process)"
    notes = []
    if not has[ms_col]:
        notes.append("ms/doc (grid estimate): `latency_p50_ms` as the sweep recorded it, a single pass; in probe "
                     "mode a window's time is its token share of the batch it was encoded in (an estimate, "
                     "not a per-strategy measurement).")
    if not has[mb_col]:
        notes.append("peak MB (process): the peak RSS of the process so far on CPU (of the cell alone only "
                     "with --isolate), CUDA max allocated on GPU; not a per-strategy measurement.")
    if has[ms_col]:  # selection strategies: was their selection timed too?
        chose = group[group["strategy"].map(selects) & group[ms_col].notna()]
        timed = chose["cost_select_s"].notna() if "cost_select_s" in chose else pd.Series(False, index=chose.index)
        for flag, text in ((True, "includes their sentence splitting and selection, timed with the model pass"),
                           (False, "is the model pass alone: these runs were measured before selection was timed "
                                   "with it (its total is `select_seconds_test`, over every test document)")):
            which = sorted({names[x] for x in chose.loc[timed == flag, "strategy"]})
            if which:
                notes.append(f"{ms_head} of {', '.join(f'`{w}`' for w in which)} {text}.")
    rows = []
    trained = (str(group["mode"].iloc[0]).startswith("finetune") and "optimizer_steps" in group
               and group["optimizer_steps"].notna().any())
    for budget, g in group.groupby("budget", sort=True):
        order = {s: k for k, s in enumerate(_strategy_order(g["strategy"]))}
        g = g.assign(_o=g["strategy"].map(order)).sort_values("_o")
        ahead = g[g["mark"] == UP] if "mark" in g else g.iloc[:0]
        best = (ahead["metric"].idxmax() if hib else ahead["metric"].idxmin()) if len(ahead) else None
        for i, r in g.iterrows():
            metric = _num(r["metric"], fmt) + (" " + _ci(r["ci_lo"], r["ci_hi"], fmt)
                                               if np.isfinite(r["ci_lo"]) else "")
            if i == best:
                metric = f"**{metric}**"
            diff = ("–" if not np.isfinite(r["p_vs_head"]) else
                    f"{_num(r['diff_vs_head'], fmt, True)} {_ci(r['diff_lo'], r['diff_hi'], fmt, True)}"
                    + (f" {r['mark']}" if r["mark"] else ""))
            ms = r[ms_col] if has[ms_col] else r.get("latency_p50_ms", np.nan)
            mb = r[mb_col] if has[mb_col] else r.get("peak_memory_mb", np.nan)
            row = {"b": int(budget), "strategy": names[r["strategy"]], f"{main} [95% CI]": metric,
                   f"Δ vs {REFERENCE} [95% CI]": diff,
                   f"tokens × {REFERENCE}": _num(r.get("compute_multiplier", np.nan), "{:.2f}"),
                   ms_head: _num(ms, "{:.1f}"), mb_head: _num(mb, "{:.0f}"),
                   "coverage": _num(r.get("coverage", np.nan), "{:.2f}")}
            if trained:  # fine-tuned: how much training each strategy got (equal steps by train.steps)
                row.update({"train steps": _num(r.get("optimizer_steps", np.nan), "{:.0f}"),
                            "train tokens": _num(r.get("train_tokens_seen", np.nan), "{:,.0f}")})
            rows.append(row)
    legend = {n: s for s, n in names.items() if n != s}
    return pd.DataFrame(rows), legend, notes


@dataclass
class SummaryBlock:
    """One compact summary table and what is printed around it (the report renders the same blocks)."""

    title: str
    group_id: str
    intro: str
    table: pd.DataFrame
    verdicts: list[str]
    legend: dict[str, str]
    notes: list[str]
    cells: pd.DataFrame


def summary_blocks(runs: Iterable[dict[str, Any]], board: Leaderboard) -> list[SummaryBlock]:
    """The summary blocks of the groups (and only the cells) these runs fill in ``board``."""
    if board.cells.empty:
        return []
    ids = {r.get("run_id") for r in runs}
    cols = [*GROUP_KEYS, "strategy", "budget"]
    mine = set(map(tuple, board.frame.loc[board.frame["run_id"].isin(ids), cols].astype(str).to_numpy()))
    present = board.cells[cols].astype(str).apply(tuple, axis=1).isin(mine)
    out = []
    for (title, gid), group in board.cells[present].groupby(["group", "group_id"], sort=False):
        table, legend, notes = summary_table(group)
        seeds = int(group["n_seeds"].max())
        units = group["n_units"].max()
        n_text = f", {int(units):,} test units" if units == units else ""
        intro = (f"{group['main_metric'].iloc[0]}, mean over {seeds} seed{'s' if seeds > 1 else ''}{n_text}; "
                 f"{UP} / {DOWN}: Holm-adjusted p < {stats.ALPHA} against {REFERENCE}; **bold**: the best cell of "
                 f"a budget, only where it is significantly ahead of {REFERENCE}.{_data_note(group)}")
        fmt, names = metric_format(group["metric"]), short_names(_strategy_order(group["strategy"]))
        verdicts = [recommendation(group, int(b), fmt, names) for b in sorted(group["budget"].unique())]
        mde = mde_text(group)
        out.append(SummaryBlock(title, gid, intro, table, verdicts + ([mde] if mde else []), legend, notes, group))
    return out


def summary_tables(runs: Iterable[dict[str, Any]], root: str | Path | None = None, *,
                   board: Leaderboard | None = None, n_boot: int = stats.N_BOOT) -> str:
    """The compact summary (markdown) of every group of these runs: one table per (dataset, model,
    mode), a verdict per budget, the legend and the method. Pass the runs of one sweep for its summary
    (the runner's terminal, a study's own tables); ``board`` reuses a leaderboard already computed."""
    runs = list(runs)
    board = board if board is not None else leaderboard(runs, root, n_boot=n_boot)
    blocks = summary_blocks(runs, board)
    if not blocks:
        return "No successful runs.\n"
    out = []
    for blk in blocks:
        out.append(f"### {blk.title}\n")
        out.append(blk.intro + "\n")
        out.append(tabulate(blk.table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
                   + "\n")
        out += [f"- {v}" for v in blk.verdicts]
        out.append("")
        if blk.legend:
            out.append("Strategies: " + "; ".join(f"`{n}` = `{s}`" for n, s in blk.legend.items()) + ".\n")
        for n in blk.notes:
            out.append(f"_{n}_\n")
    if board.method:
        out.append(f"**Method.** {board.method}\n")
    return "\n".join(out)


def load_runs(path: str | Path) -> pd.DataFrame:
    """A runs.jsonl (or its folder) as a pandas DataFrame, one row per successful run.

    Columns: task, dataset, model, mode (as the tables group it: ``probe``, ``finetune``,
    ``finetune:lora``, ``probe+bfloat16`` …), strategy (label), budget, seed, main_metric,
    higher_is_better, metric (the main metric's value), ``m.<name>`` for every numeric metric
    (``m.accuracy``, ``m.bucket[b-2b].macro_f1`` …), the measurements in ``MEASURES``
    (docs_per_s, peak_memory_mb, compute_multiplier, coverage, latency_p50_ms …), the measured cost
    fields in ``COST_FIELDS`` where present, data_label, sample (which test sample), run_id and
    predictions_file. E.g. ``load_runs("results/clf").groupby(["strategy", "budget"]).metric.mean()``."""
    from ctxbench.bench.results import read_jsonl

    path = Path(path)
    return long_frame(read_jsonl(path / "runs.jsonl" if path.is_dir() else path))


def split_groups(board: Leaderboard, runs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(groups holding default-sweep runs, every other group: demonstrations), each in table order.
    Without a built-in sweep for the task, or none of its cells recorded, every group counts as the default."""
    if board.cells.empty:
        return [], []
    order = list(dict.fromkeys(board.cells["group_id"]))
    default = default_runs(runs)
    if default is None:
        return order, []
    ids = {r["run_id"] for r in default}
    cols = GROUP_KEYS
    mine = set(map(tuple, board.frame.loc[board.frame["run_id"].isin(ids), cols].astype(str).to_numpy()))
    hit = board.cells[cols].astype(str).apply(tuple, axis=1).isin(mine)
    first = list(dict.fromkeys(board.cells.loc[hit, "group_id"]))
    if not first:  # none of the default sweep's cells is recorded here: nothing to set apart
        return order, []
    return first, [g for g in order if g not in first]


def write_leaderboard(runs_path: str | Path, out_dir: str | Path | None = None) -> Leaderboard:
    """Write SUMMARY.md (the default sweep's compact tables), leaderboard.md (its details first, then
    every other group on the default sample), demos.md (demonstration runs: other data, models,
    modes or precisions), the CSVs, comparison.md and by_context.md."""
    from ctxbench.bench.results import read_jsonl
    from ctxbench.tasks.cache import atomic_write_text

    runs_path = Path(runs_path)
    out_dir = Path(out_dir or runs_path.parent)
    runs = read_jsonl(runs_path)
    board = leaderboard(runs, root=runs_path.parent)
    default, demos = split_groups(board, runs)
    gen = f"Generated by `ctxbench table` from `{runs_path.name}`; do not edit.\n\n"
    sweep = default_runs(runs)
    summary = summary_tables(sweep or runs, board=board)
    modes = sorted({table_mode(r["spec"]) for r in sweep or []})
    both = (f"The default sweep's `mode: auto` / `precision: native` resolve per machine (bf16 autocast on a CPU "
            f"with native bf16, float32 on others): its cells here ran as {', '.join(f'`{m}`' for m in modes)}, "
            f"each its own table, never pooled.\n\n") if len(modes) > 1 else ""
    atomic_write_text(out_dir / "SUMMARY.md", f"# Summary: {out_dir.name}{' (default sweep)' if sweep else ''}\n\n{gen}"
                      f"Details (length buckets, every measurement): `leaderboard.md`"
                      f"{'; demonstration runs: `demos.md`' if demos else ''}.\n\n{both}" + summary)
    atomic_write_text(out_dir / "leaderboard.md", f"# Leaderboard: {out_dir.name}\n\n{gen}"
                      "The default sweep first; its summary is `SUMMARY.md`.\n\n" + board.markdown(default))
    if demos:
        atomic_write_text(out_dir / "demos.md", f"# Demonstration runs: {out_dir.name}\n\n{gen}"
                          "Runs outside the default sweep (PEFT, position extension, the long model, bf16, other "
                          "data): each its own table, never averaged with the default sweep.\n\n"
                          + board.markdown(demos))
    elif (out_dir / "demos.md").exists():
        (out_dir / "demos.md").unlink()
    atomic_write_text(out_dir / "leaderboard.csv", board.csv())
    atomic_write_text(out_dir / "leaderboard_buckets.csv", board.buckets_csv())
    if len({(r["spec"]["model"], mode_label(r["spec"])) for r in runs if r.get("status", "ok") == "ok"}) > 1:
        atomic_write_text(out_dir / "comparison.md", f"# Every model and mode of {out_dir.name} side by side\n\n"
                          f"Generated by `ctxbench table` from `{runs_path.name}`; do not edit.\n\n"
                          + comparison_markdown(runs))
    per_context = context_tables(runs, runs_path.parent)  # tasks that score each example over several contexts (QA's k)
    if per_context:
        atomic_write_text(out_dir / "by_context.md", per_context)
    from ctxbench.bench.report.position import position_tables

    by_position = position_tables(runs, runs_path.parent)  # QA answer / NER entity position, where sidecars hold it
    if by_position:
        atomic_write_text(out_dir / "by_position.md", by_position)
    return board
