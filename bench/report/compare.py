"""``ctxbench compare A.jsonl B.jsonl``: diff two result sets run by run.

Runs are matched by their spec minus the seed (``env`` is not part of the spec, so
the machine, git sha and versions never block a match); seeds are aggregated:
the main metric is averaged, throughput and memory take the median. Each matched
cell reports the metric delta, the throughput change (docs/s and real tokens/s)
and the peak-memory change. B regresses against A when, beyond the thresholds,
the main metric moves the wrong way (absolute, in the metric's own units),
throughput falls (relative), peak memory rises (relative *and* absolute), or a
cell that ran in A failed (oom / error) in B. Exit 1 on a regression, 2 when
nothing matches.

Why throughput is compared raw here: runs.jsonl lines carry no calibration. Compare
speed only between runs from the same machine (a note says when the device names
differ), or pass ``--checks metric,memory``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ctxbench.bench.results import read_jsonl
from ctxbench.tasks.cache import content_hash

CHECKS = ("metric", "throughput", "memory")
LABEL_KEYS = ("task", "dataset", "model", "mode", "strategy", "budget")


@dataclass(frozen=True)
class Thresholds:
    metric_drop: float = 0.01  # absolute, in the main metric's units
    throughput_drop: float = 0.10  # relative
    memory_rise: float = 0.10  # relative ...
    memory_min_mb: float = 8.0  # ... and absolute


def _drop(d: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.get(p)
        if not isinstance(d, dict):
            return
    d.pop(last, None)


def run_key(spec: dict[str, Any], ignore: Iterable[str] = ()) -> str:
    """Hash of the canonical spec without ``seed`` and any ``ignore`` keys (dotted for nested)."""
    import copy

    s = copy.deepcopy(spec)
    for k in ("seed", *ignore):
        _drop(s, k)
    return content_hash(s)


def frame(records: Iterable[dict[str, Any]], ignore: Iterable[str] = ()) -> pd.DataFrame:
    """One row per run (any status) with the fields the comparison needs."""
    ignore = tuple(ignore)
    rows = []
    for r in records:
        spec = r.get("spec") or {}
        meas = r.get("measurements") or {}
        main = r.get("main_metric")
        rows.append({
            "key": run_key(spec, ignore),
            "task": spec.get("task", r.get("task")),
            "dataset": spec.get("dataset"),
            "model": spec.get("model"),
            "mode": spec.get("mode"),
            "strategy": (spec.get("strategy") or {}).get("label"),
            "budget": r.get("budget", spec.get("budget")),
            "seed": spec.get("seed"),
            "status": r.get("status", "ok"),
            "main_metric": main,
            "higher_is_better": r.get("higher_is_better", True),
            "metric": (r.get("metrics") or {}).get(main) if main else None,
            "docs_per_s": meas.get("docs_per_s"),
            "tokens_per_s": meas.get("tokens_per_s"),
            "peak_memory_mb": meas.get("peak_memory_mb"),
            "device_name": (r.get("env") or {}).get("device_name"),
        })
    return pd.DataFrame(rows, columns=["key", *LABEL_KEYS, "seed", "status", "main_metric", "higher_is_better",
                                       "metric", "docs_per_s", "tokens_per_s", "peak_memory_mb", "device_name"])


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Per key over seeds (ok runs only): mean metric, median throughput and memory."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=["key", *LABEL_KEYS, "main_metric", "higher_is_better", "metric", "docs_per_s",
                                     "tokens_per_s", "peak_memory_mb", "seeds"]).set_index("key")
    g = ok.groupby("key", sort=False)
    out = g[list(LABEL_KEYS) + ["main_metric", "higher_is_better"]].first()
    out["metric"] = g["metric"].mean()
    for col in ("docs_per_s", "tokens_per_s", "peak_memory_mb"):
        out[col] = g[col].median()
    out["seeds"] = g["seed"].nunique()
    return out


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per matched cell
    regressions: list[str]
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.regressions


def _label(row: pd.Series) -> str:
    return f"{row['task']}/{row['dataset']}/{row['model']}/{row['mode']}/{row['strategy']}/b={row['budget']}"


def _rel(b: Any, a: Any) -> float | None:
    if a is None or b is None or pd.isna(a) or pd.isna(b) or a == 0:
        return None
    return float(b) / float(a) - 1.0


def compare(a: Iterable[dict[str, Any]], b: Iterable[dict[str, Any]], thresholds: Thresholds = Thresholds(),
            checks: Iterable[str] = CHECKS, ignore: Iterable[str] = ()) -> Comparison:
    """Match B's runs to A's and list what regressed (a pure function of the two record lists)."""
    checks = set(checks)
    fa, fb = frame(a, ignore), frame(b, ignore)
    ga, gb = aggregate(fa), aggregate(fb)
    rows, regressions, notes = [], [], []
    for key in ga.index.intersection(gb.index, sort=False):
        ra, rb = ga.loc[key], gb.loc[key]
        label = _label(ra)
        hib = bool(ra["higher_is_better"])
        d_metric = None if pd.isna(ra["metric"]) or pd.isna(rb["metric"]) else float(rb["metric"] - ra["metric"])
        d_docs, d_tok = _rel(rb["docs_per_s"], ra["docs_per_s"]), _rel(rb["tokens_per_s"], ra["tokens_per_s"])
        d_mem = _rel(rb["peak_memory_mb"], ra["peak_memory_mb"])
        mem_mb = (None if pd.isna(ra["peak_memory_mb"]) or pd.isna(rb["peak_memory_mb"])
                  else float(rb["peak_memory_mb"] - ra["peak_memory_mb"]))
        why = []
        if "metric" in checks and d_metric is not None:
            worse = -d_metric if hib else d_metric
            if worse > thresholds.metric_drop:
                why.append(f"{ra['main_metric']} {ra['metric']:.4f} -> {rb['metric']:.4f} ({d_metric:+.4f}), "
                           f"limit {thresholds.metric_drop:g} {'drop' if hib else 'rise'}")
        if "throughput" in checks:
            for name, d in (("docs/s", d_docs), ("real tokens/s", d_tok)):
                if d is not None and d < -thresholds.throughput_drop:
                    why.append(f"{name} {d:+.1%}, limit -{thresholds.throughput_drop:.0%}")
        if "memory" in checks and d_mem is not None and mem_mb is not None:
            if d_mem > thresholds.memory_rise and mem_mb > thresholds.memory_min_mb:
                why.append(f"peak memory {d_mem:+.1%} ({ra['peak_memory_mb']:.0f} -> {rb['peak_memory_mb']:.0f} MB), "
                           f"limit +{thresholds.memory_rise:.0%} and +{thresholds.memory_min_mb:g} MB")
        regressions += [f"{label}: {w}" for w in why]
        rows.append({"cell": label, "seeds A/B": f"{ra['seeds']}/{rb['seeds']}", "metric": ra["main_metric"],
                     "A": ra["metric"], "B": rb["metric"], "Δ metric": d_metric,
                     "docs/s A": ra["docs_per_s"], "docs/s B": rb["docs_per_s"], "Δ docs/s": d_docs,
                     "Δ tokens/s": d_tok, "MB A": ra["peak_memory_mb"], "MB B": rb["peak_memory_mb"],
                     "Δ MB": d_mem, "verdict": "REGRESSED" if why else "ok"})
    # cells that ran in A but only failed in B
    failed_b = fb[fb["status"] != "ok"].groupby("key")["status"].first()
    for key in ga.index.difference(gb.index, sort=False):
        if key in failed_b.index:
            regressions.append(f"{_label(ga.loc[key])}: ran in A, {failed_b[key]} in B")
    only_a = [_label(ga.loc[k]) for k in ga.index.difference(gb.index, sort=False) if k not in failed_b.index]
    only_b = [_label(gb.loc[k]) for k in gb.index.difference(ga.index, sort=False)]
    devs_a, devs_b = set(fa["device_name"].dropna()), set(fb["device_name"].dropna())
    if "throughput" in checks and devs_a and devs_b and devs_a != devs_b:
        notes.append(f"A ran on {sorted(devs_a)}, B on {sorted(devs_b)}: throughput deltas compare machines, "
                     f"not code (use --checks metric,memory to skip them)")
    return Comparison(pd.DataFrame(rows), regressions, only_a, only_b, notes)


def _fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    fmt = {"pct": "{:+.1%}", "metric": "{:.4f}", "dmetric": "{:+.4f}", "rate": "{:.1f}", "mb": "{:.0f}"}[kind]
    return fmt.format(v)


def render(c: Comparison, a_name: str = "A", b_name: str = "B") -> str:
    from tabulate import tabulate

    lines = ["# ctxbench compare", "", f"- A: `{a_name}`", f"- B: `{b_name}`", ""]
    if c.table.empty:
        lines.append("No run in B matches a run in A (spec minus seed).")
    else:
        kinds = {"A": "metric", "B": "metric", "Δ metric": "dmetric", "docs/s A": "rate", "docs/s B": "rate",
                 "Δ docs/s": "pct", "Δ tokens/s": "pct", "MB A": "mb", "MB B": "mb", "Δ MB": "pct"}
        body = [[_fmt(row[col], kinds[col]) if col in kinds else row[col] for col in c.table.columns]
                for _, row in c.table.iterrows()]
        lines.append(f"**{'PASS' if c.ok else 'FAIL'}**: {len(c.table)} matched cells, "
                     f"{len(c.regressions)} regression(s).")
        lines += ["", tabulate(body, headers=list(c.table.columns), tablefmt="github", disable_numparse=True)]
    if c.regressions:
        lines += ["", "Regressions:"] + [f"- {r}" for r in c.regressions]
    if c.only_a:
        lines += ["", f"Only in A ({len(c.only_a)}): " + "; ".join(c.only_a)]
    if c.only_b:
        lines += ["", f"Only in B ({len(c.only_b)}): " + "; ".join(c.only_b)]
    if c.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="baseline runs.jsonl (A)")
    p.add_argument("b", help="candidate runs.jsonl (B)")
    p.add_argument("--metric-drop", type=float, default=Thresholds.metric_drop,
                   help="fail when the main metric gets worse by more than this, absolute (default 0.01)")
    p.add_argument("--throughput-drop", type=float, default=Thresholds.throughput_drop,
                   help="fail when docs/s or tokens/s falls by more than this share (default 0.10)")
    p.add_argument("--memory-rise", type=float, default=Thresholds.memory_rise,
                   help="fail when peak memory rises by more than this share ... (default 0.10)")
    p.add_argument("--memory-min-mb", type=float, default=Thresholds.memory_min_mb,
                   help="... and by more than this many MB (default 8)")
    p.add_argument("--checks", default=",".join(CHECKS), help="which of metric,throughput,memory to apply")
    p.add_argument("--ignore", action="append", default=[],
                   help="spec key (dotted for nested, e.g. train.epochs) to ignore when matching; repeatable")
    p.add_argument("--out", help="also write the markdown report here")


def run(args: argparse.Namespace) -> int:
    """The ``ctxbench compare`` command: 0 no regression, 1 regression, 2 nothing to compare."""
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    bad = sorted(set(checks) - set(CHECKS))
    if bad:
        print(f"ctxbench compare: unknown checks {bad}; valid: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    for path in (args.a, args.b):
        if not Path(path).exists():
            print(f"ctxbench compare: {path} does not exist", file=sys.stderr)
            return 2
    th = Thresholds(args.metric_drop, args.throughput_drop, args.memory_rise, args.memory_min_mb)
    c = compare(read_jsonl(args.a), read_jsonl(args.b), th, checks, args.ignore)
    text = render(c, args.a, args.b)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if c.table.empty and not c.regressions:
        return 2
    return 0 if c.ok else 1
