"""perf / perf-check: run the pytest-benchmark suite and compare it with this machine's baseline.

Layout (one folder per kind of machine, so a GPU runner and a laptop never compare)::

    results/perf/<machine-id>/baseline.json   the committed baseline (pytest-benchmark JSON)
    results/perf/<machine-id>/latest.json     the last run
    results/perf/<machine-id>/report.md       the last comparison

``python -m ctxbench.bench.perf.check run``    runs the suite into latest.json (and seeds baseline.json
                                      if this machine has none, or with ``--update-baseline``).
``python -m ctxbench.bench.perf.check check``  runs it, compares with baseline.json, writes report.md.
                                      Exit 0: no regression. 1: a regression (or a benchmark failed
                                      or went missing). 2: nothing to compare against.

The rule: these machines are shared and noisy, so a throughput change counts only when it is
decided. Every benchmark records each timed round's seconds and the matmul rate sampled just before
that round. A round's *work* is its seconds times that rate: a round another tenant slowed costs the
same work as a quiet one (on the 2-core VM, raw throughput moved +16% suite-wide in an A/A run and
single benchmarks -55%, with the rate moving alongside). The change
``(tokens / median work)_now / (tokens / median work)_baseline - 1`` gets a bootstrap 95% interval
(both sides' rounds resampled), and a benchmark regresses only when the whole interval lies below
``-throughput_drop``; so does the suite-wide geometric mean over benchmarks (``suite`` in
thresholds.json), which carries the gate's sensitivity where single benchmarks are too noisy
(``machines`` floors). Raw throughput is reported beside it, and decides only where a side has no
paired rates (an old baseline). The old ``--normalise`` (the median divided by the median rate,
point estimates against 10%, no interval) made an A/A run fail and is kept only for comparison.
Memory is compared as measured (peak RSS of an isolated
child on CPU, max allocated on CUDA). ``--perf-plant-slowdown`` / ``--perf-plant-memory`` (pytest
options of the suite) plant a regression to prove the gate catches it.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

PERF_ROOT = Path("results") / "perf"
SUITE = Path(str(resources.files("ctxbench.bench.perf")))  # the installed suite, found without a checkout
THRESHOLDS = SUITE / "thresholds.json"


# ------------------------------------------------------------------ machine id


def slug(text: str) -> str:
    """Lower-case, trademarks and clock speeds dropped, runs of other characters to '-'."""
    text = text.lower()
    text = re.sub(r"\((r|tm|c)\)", "", text)
    text = re.sub(r"@.*$", "", text)  # "... CPU @ 2.90GHz"
    text = re.sub(r"\b(cpu|processor|\d+-core)\b", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def machine_id(device: str = "auto") -> str:
    """``cuda-nvidia-h200`` or ``cpu-amd-epyc-2c``: stable across runs on the same kind of machine."""
    import torch

    from ctxbench.tasks.model.measure import device_name
    from ctxbench.tasks.model.encoder import pick_device

    dev = pick_device(device)
    if dev.type == "cuda":
        return "cuda-" + slug(torch.cuda.get_device_name(dev))
    name = device_name(dev).split(":", 1)[-1]
    return f"cpu-{slug(name) or 'unknown'}-{usable_cpus()}c"


def machine_dir(mid: str, root: str | os.PathLike = PERF_ROOT) -> Path:
    return Path(root) / mid


# ------------------------------------------------------------------ thresholds


@dataclass(frozen=True)
class Limits:
    """A benchmark regresses when its normalised throughput falls by more than
    ``throughput_drop`` or its peak memory rises by more than ``memory_rise`` *and*
    by more than ``memory_min_mb`` (so a few MB of allocator noise on a small cell never fails)."""

    throughput_drop: float = 0.10
    memory_rise: float = 0.10
    memory_min_mb: float = 8.0


def load_thresholds(path: str | os.PathLike | None = THRESHOLDS) -> dict[str, Any]:
    if path is None or not Path(path).exists():
        return {"default": asdict(Limits()), "benchmarks": {}}
    data = json.loads(Path(path).read_text())
    known = set(asdict(Limits()))
    entries = [("default", data.get("default", {})), ("suite", data.get("suite", {})),
               *data.get("machines", {}).items(), *data.get("benchmarks", {}).items()]
    for where, entry in entries:
        unknown = set(entry) - known - {"why"}
        if unknown:
            raise ValueError(f"{path}: {where}: unknown threshold keys {sorted(unknown)}; valid: {sorted(known)}")
    return data


def limits_for(name: str, thresholds: dict[str, Any], machine: str | None = None) -> Limits:
    """The default limits, then every ``benchmarks`` pattern matching the benchmark name (fnmatch, in
    file order), then every ``machines`` pattern matching the machine id as a *floor*: a machine's noise
    is a property of the machine, so no benchmark's limit on it is tighter than the machine's entry."""
    lim = Limits(**{k: v for k, v in thresholds.get("default", {}).items() if k != "why"})
    for pattern, entry in thresholds.get("benchmarks", {}).items():
        if fnmatch.fnmatchcase(name, pattern):
            lim = replace(lim, **{k: v for k, v in entry.items() if k != "why"})
    for pattern, entry in thresholds.get("machines", {}).items() if machine else ():
        if fnmatch.fnmatchcase(machine, pattern):
            lim = replace(lim, **{k: max(v, getattr(lim, k)) for k, v in entry.items() if k != "why"})
    return lim


def suite_limit(thresholds: dict[str, Any]) -> float:
    """The limit of the suite-wide rule (``suite.throughput_drop``; default 10%)."""
    return float((thresholds.get("suite") or {}).get("throughput_drop", 0.10))


# ------------------------------------------------------------------ comparison


@dataclass
class Bench:
    """The numbers perf-check reads from one pytest-benchmark entry."""

    name: str
    median_s: float
    tokens: float | None  # real tokens per round (None: compare rounds/s)
    calib: float | None  # GFLOP/s measured next to this benchmark
    peak_mb: float | None
    cell_mb: float | None
    rounds: tuple[float, ...] = ()  # every timed round's seconds (older baselines: none, the median alone)
    calib_rounds: tuple[float, ...] = ()  # the matmul GFLOP/s sampled right before each of those rounds

    def work(self) -> tuple[float, ...]:
        """Each round's seconds times the machine's matmul rate just before it: a round the machine ran
        slowly (another tenant's burst) costs the same work as a quiet one. () when unpaired."""
        if len(self.calib_rounds) != len(self.rounds) or not self.rounds:
            return ()
        return tuple(t * c for t, c in zip(self.rounds, self.calib_rounds))

    @property
    def throughput(self) -> float:
        return (self.tokens or 1.0) / self.median_s


def session_calibration(data: dict[str, Any]) -> float | None:
    cal = (data.get("machine_info", {}).get("ctxbench", {}) or {}).get("calibration") or {}
    return cal.get("gflops")


def benches(data: dict[str, Any]) -> dict[str, Bench]:
    fallback = session_calibration(data)
    out = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {}) or {}
        out[b["name"]] = Bench(b["name"], float(b["stats"]["median"]), info.get("real_tokens"),
                               info.get("calib_gflops", fallback), info.get("peak_memory_mb"),
                               info.get("cell_memory_mb"), tuple(info.get("round_seconds") or ()),
                               tuple(info.get("calib_samples") or ()))
    return out


@dataclass
class Row:
    name: str
    verdict: str  # ok | REGRESSED | improved | missing | new
    base: Bench | None
    cur: Bench | None
    limits: Limits
    raw_change: float | None = None
    calib_change: float | None = None
    change: float | None = None  # normalised throughput change
    change_ci: tuple[float, float] | None = None  # bootstrap 95% interval of the throughput change
    work_ci: tuple[float, float] | None = None  # the same, per unit of machine work (Bench.work)
    mem_change: float | None = None
    mem_delta_mb: float | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class Suite:
    """The suite-wide rule: the geometric mean over benchmarks of the throughput ratio now / baseline.
    A slowdown of the code every benchmark runs (the forward, the tokenizer, the collate) moves them
    all; a shared machine's noise moves them both ways. So the mean is far steadier than any one
    benchmark (an A/A run on the 2-core VM saw single benchmarks at -30% and +33% with a mean of -7%),
    and it gates at a tighter limit than a single benchmark can on such a machine."""

    change: float
    change_ci: tuple[float, float] | None
    limit: float
    n: int
    work_ci: tuple[float, float] | None = None  # per unit of machine work (Bench.work)
    reasons: list[str] = field(default_factory=list)


@dataclass
class CheckResult:
    rows: list[Row]
    notes: list[str]
    normalised: bool
    suite: Suite | None = None

    @property
    def failures(self) -> list[str]:
        out = [f"{r.name}: {why}" for r in self.rows for why in r.reasons]
        return out + ([f"suite: {why}" for why in self.suite.reasons] if self.suite else [])

    @property
    def ok(self) -> bool:
        return not self.failures


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b - 1.0


def _sides(base: Bench, cur: Bench, per_work: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return (base.work(), cur.work()) if per_work else (base.rounds, cur.rounds)


def _log_ratio(base: Bench, cur: Bench, per_work: bool) -> float:
    """log of the throughput ratio now / base from each side's median round (or round work)."""
    import statistics

    rb, rc = _sides(base, cur, per_work)
    return math.log((cur.tokens or 1.0) / (base.tokens or 1.0) * statistics.median(rb) / statistics.median(rc))


def _boot_log_ratio(base: Bench, cur: Bench, per_work: bool, rng: Any, n_boot: int) -> Any:
    """(n_boot,) bootstrap draws of :func:`_log_ratio`, each side's rounds resampled."""
    import numpy as np

    rb, rc = (np.asarray(x, dtype=float) for x in _sides(base, cur, per_work))
    mb = np.median(rng.choice(rb, size=(n_boot, rb.size)), axis=1)  # (n_boot,)
    mc = np.median(rng.choice(rc, size=(n_boot, rc.size)), axis=1)
    return np.log(((cur.tokens or 1.0) / mc) / ((base.tokens or 1.0) / mb))


def _enough(base: Bench, cur: Bench, per_work: bool) -> bool:
    return all(len(x) >= 3 for x in _sides(base, cur, per_work))


def change_interval(base: Bench, cur: Bench, n_boot: int = 2000, seed: int = 0, per_work: bool = False
                    ) -> tuple[float, float] | None:
    """Bootstrap 95% interval of the throughput change ``median(cur) / median(base) - 1``, resampling
    each side's timed rounds (None when a side recorded fewer than 3 rounds). ``per_work``: each round's
    seconds times the matmul rate sampled just before it (:meth:`Bench.work`)."""
    if not _enough(base, cur, per_work):
        return None
    import numpy as np

    logs = _boot_log_ratio(base, cur, per_work, np.random.default_rng(seed), n_boot)
    lo, hi = np.percentile(np.exp(logs) - 1.0, [2.5, 97.5])
    return float(lo), float(hi)


def work_change(base: Bench, cur: Bench) -> float:
    """Throughput change per unit of machine work: ``(tokens / median work)_now / (...)_base - 1``."""
    return math.exp(_log_ratio(base, cur, per_work=True)) - 1.0


def suite_change(pairs: list[tuple[Bench, Bench]], n_boot: int = 2000, seed: int = 0, per_work: bool = False
                 ) -> tuple[float, tuple[float, float] | None]:
    """Geometric mean over benchmarks of ``throughput_now / throughput_base`` and its bootstrap 95%
    interval (each benchmark's rounds resampled on both sides, then the mean taken per resample);
    no interval when a benchmark lacks 3 rounds on a side. ``per_work`` as :func:`change_interval`."""
    import numpy as np

    if not all(_enough(b, c, per_work) for b, c in pairs):
        if per_work:
            return float("nan"), None
        logs = np.array([math.log(c.throughput / b.throughput) for b, c in pairs])
        return float(math.exp(logs.mean()) - 1.0), None
    point = float(math.exp(np.mean([_log_ratio(b, c, per_work) for b, c in pairs])) - 1.0)
    rng = np.random.default_rng(seed)
    total = sum(_boot_log_ratio(b, c, per_work, rng, n_boot) for b, c in pairs)  # (n_boot,)
    lo, hi = np.percentile(np.exp(total / len(pairs)) - 1.0, [2.5, 97.5])
    return point, (float(lo), float(hi))


def check(baseline: dict[str, Any], current: dict[str, Any], thresholds: dict[str, Any] | None = None,
          normalise: bool = False, allow_missing: bool = False) -> CheckResult:
    """Compare two pytest-benchmark JSON documents benchmark by benchmark (a pure function).

    Throughput regresses only when the whole bootstrap 95% interval of the change (resampled timed
    rounds of both sides) lies below ``-throughput_drop``: a difference inside the noise is not a
    regression. The change is read per unit of machine work (:meth:`Bench.work`) where both sides
    pair each round with a matmul rate, else in raw throughput; without rounds on a side (an old
    baseline) the point estimate is compared. ``normalise=True`` keeps the old mode (medians divided
    by median rates, point estimates) for comparison."""
    thresholds = thresholds if thresholds is not None else load_thresholds()
    base, cur = benches(baseline), benches(current)
    notes = []
    bi = baseline.get("machine_info", {}).get("ctxbench", {}) or {}
    ci = current.get("machine_info", {}).get("ctxbench", {}) or {}
    if bi.get("workload") and ci.get("workload") and bi["workload"] != ci["workload"]:
        notes.append(f"the workload changed since the baseline ({bi['workload']} -> {ci['workload']}); "
                     f"throughput is compared per real token, but consider re-baselining")
    machine = ci.get("machine_id") or bi.get("machine_id")
    rows = []
    for name in sorted(set(base) | set(cur)):
        lim = limits_for(name, thresholds, machine)
        b, c = base.get(name), cur.get(name)
        if c is None:
            row = Row(name, "missing", b, None, lim)
            if not allow_missing:
                row.reasons.append("in the baseline but not in this run (did it fail or get renamed?)")
            rows.append(row)
            continue
        if b is None:
            rows.append(Row(name, "new", None, c, lim))
            continue
        row = Row(name, "ok", b, c, lim)
        row.raw_change = _ratio(c.throughput, b.throughput)
        row.calib_change = _ratio(c.calib, b.calib)
        use_cal = normalise and row.calib_change is not None
        row.change = (_ratio(c.throughput / c.calib, b.throughput / b.calib) if use_cal else row.raw_change)
        if b.tokens and c.tokens and b.tokens != c.tokens:
            notes.append(f"{name}: real tokens per round changed {b.tokens:.0f} -> {c.tokens:.0f}")
        row.change_ci = None if use_cal else change_interval(b, c)
        row.work_ci = None if use_cal else change_interval(b, c, per_work=True)
        if row.work_ci is not None:  # the default: per unit of machine work (Bench.work), where both sides have it
            row.change = work_change(b, c)
        ci_used = row.work_ci if row.work_ci is not None else row.change_ci
        decided = ci_used[1] if ci_used is not None else row.change
        if decided is not None and decided < -lim.throughput_drop:
            how = (f"normalised; raw {row.raw_change:+.1%}, calibration {row.calib_change:+.1%}" if use_cal
                   else f"per machine work, 95% CI [{row.work_ci[0]:+.1%}, {row.work_ci[1]:+.1%}]; raw "
                        f"{row.raw_change:+.1%}" if row.work_ci is not None
                   else f"raw; 95% CI [{row.change_ci[0]:+.1%}, {row.change_ci[1]:+.1%}] over the timed rounds"
                   if row.change_ci is not None else "raw, point estimate (a side has no rounds)")
            row.reasons.append(f"throughput {row.change:+.1%} ({how}), limit -{lim.throughput_drop:.0%}")
        if b.peak_mb is not None and c.peak_mb is not None:
            row.mem_change = _ratio(c.peak_mb, b.peak_mb)
            row.mem_delta_mb = c.peak_mb - b.peak_mb
            if row.mem_change is not None and row.mem_change > lim.memory_rise and row.mem_delta_mb > lim.memory_min_mb:
                row.reasons.append(f"peak memory {row.mem_change:+.1%} ({b.peak_mb:.0f} -> {c.peak_mb:.0f} MB, "
                                   f"{row.mem_delta_mb:+.0f} MB), limit +{lim.memory_rise:.0%} and "
                                   f"+{lim.memory_min_mb:g} MB")
        elif b.peak_mb is not None:
            row.reasons.append("peak memory was recorded in the baseline but not in this run")
        if row.reasons:
            row.verdict = "REGRESSED"
        elif row.change is not None and (ci_used[0] if ci_used is not None else row.change) > lim.throughput_drop:
            row.verdict = "improved"
        rows.append(row)
    if normalise and not all(r.calib_change is not None for r in rows if r.base and r.cur):
        notes.append("some benchmarks have no calibration on one side: compared raw")
    compared = [r for r in rows if r.base and r.cur and r.change is not None and r.change > -1.0]
    suite = None
    unpaired = [r.name for r in compared if r.work_ci is None]
    if not normalise and unpaired and len(unpaired) < len(compared):
        notes.append(f"{len(unpaired)} benchmark(s) have no paired matmul rates on a side: the suite-wide rule "
                     f"reads raw throughput")
    if len(compared) >= 2:
        pairs = [(r.base, r.cur) for r in compared]
        wci = None
        if normalise:  # as each row: the normalised point estimates, no interval
            change, ci = math.exp(sum(math.log1p(r.change) for r in compared) / len(compared)) - 1.0, None
        else:
            change, ci = suite_change(pairs)
            wchange, wci = suite_change(pairs, per_work=True)
            if wci is not None:
                change = wchange
        suite = Suite(change, ci, suite_limit(thresholds), len(pairs), wci)
        used = wci if wci is not None else ci
        decided = used[1] if used is not None else change
        if decided < -suite.limit:
            how = (f"per machine work, 95% CI [{wci[0]:+.1%}, {wci[1]:+.1%}]; raw [{ci[0]:+.1%}, {ci[1]:+.1%}]"
                   if wci is not None and ci is not None else f"raw, 95% CI [{ci[0]:+.1%}, {ci[1]:+.1%}]" if ci
                   else "point estimate")
            suite.reasons.append(f"throughput {change:+.1%} (geometric mean of {len(pairs)} benchmarks, {how}), "
                                 f"limit -{suite.limit:.0%}")
    return CheckResult(rows, notes, normalise, suite)


# ------------------------------------------------------------------ report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:+.1%}"


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if x is None else fmt.format(x)


def _describe(data: dict[str, Any], path: str) -> str:
    commit = data.get("commit_info", {}) or {}
    sha = (commit.get("id") or "?")[:10] + ("+dirty" if commit.get("dirty") else "")
    cal = session_calibration(data)
    cal_s = f", session matmul {cal:.1f} GFLOP/s" if cal else ""
    return f"`{path}` (commit {sha}, {data.get('datetime', '?')[:19]}{cal_s})"


def render(result: CheckResult, baseline: dict[str, Any], current: dict[str, Any], base_path: str = "baseline",
           cur_path: str = "current") -> str:
    """The readable report: verdict first, then what regressed and by how much, then every benchmark."""
    from tabulate import tabulate

    mid = (current.get("machine_info", {}).get("ctxbench", {}) or {}).get("machine_id", "?")
    lines = [f"# perf-check on {mid}", "",
             f"- baseline: {_describe(baseline, base_path)}",
             f"- current:  {_describe(current, cur_path)}",
             "- throughput = real tokens / median round time; "
             + ("compared normalised by the matmul calibration measured next to each benchmark: "
                "change = (throughput/calib)_now / (throughput/calib)_baseline - 1"
                if result.normalised else "a regression is decided only when the whole bootstrap 95% interval of "
                "the change (timed rounds of both runs resampled) lies beyond the limit, per unit of machine work "
                "(each round's seconds times the matmul rate sampled just before it: Δ/work 95% CI; raw throughput "
                "where a side has no paired rates), for each benchmark and for the suite-wide geometric mean"),
             "- memory = peak memory of one run of the cell (see memory_method in the JSON)", ""]
    if result.ok:
        lines.append(f"**PASS**: {len(result.rows)} benchmarks, no regression beyond the thresholds.")
    else:
        lines.append(f"**FAIL**: {len(result.failures)} regression(s):")
        lines.append("")
        lines += [f"- {f}" for f in result.failures]
    if result.suite is not None:
        st = result.suite
        ci = f"raw [{_pct(st.change_ci[0])}, {_pct(st.change_ci[1])}]" if st.change_ci else ""
        wci = f"per machine work [{_pct(st.work_ci[0])}, {_pct(st.work_ci[1])}] (decides); " if st.work_ci else ""
        lines += ["", f"Suite-wide (geometric mean of the throughput ratio over {st.n} benchmarks): "
                      f"{_pct(st.change)}: {wci}{ci}; limit -{st.limit:.0%}: {'REGRESSED' if st.reasons else 'ok'}."]
    if result.notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in result.notes]
    table = []
    for r in result.rows:
        table.append([
            r.name, _num(r.base.throughput if r.base else None), _num(r.cur.throughput if r.cur else None),
            _pct(r.raw_change), _pct(r.calib_change), _pct(r.change),
            f"[{_pct(r.change_ci[0])}, {_pct(r.change_ci[1])}]" if r.change_ci else "–",
            f"[{_pct(r.work_ci[0])}, {_pct(r.work_ci[1])}]" if r.work_ci else "–",
            f"-{r.limits.throughput_drop:.0%}",
            _num(r.base.peak_mb if r.base else None), _num(r.cur.peak_mb if r.cur else None), _pct(r.mem_change),
            f"+{r.limits.memory_rise:.0%}", r.verdict,
        ])
    headers = ["benchmark", "tok/s base", "tok/s now", "raw Δ", "calib Δ", "Δ used", "Δ 95% CI", "Δ/work 95% CI",
               "limit", "peak MB base", "peak MB now", "mem Δ", "limit", "verdict"]
    lines += ["", tabulate(table, headers=headers, tablefmt="github"), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ running the suite


def run_suite(out: Path, device: str = "auto", pytest_args: list[str] | None = None,
              source: Path | None = None, select: list[str] | None = None) -> int:
    """Run ``bench/perf`` under pytest-benchmark, writing its JSON to ``out``. ``source``: another
    checkout (``--against``'s worktree) whose ctxbench, not the installed one, is measured. ``select``:
    only these benchmarks (names as in the JSON, e.g. ``test_infer[head-b256]``)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    suite, env = SUITE, None
    if source is not None:
        ns = source.parent / "ns" / "ctxbench"  # a namespace of links: that tree comes first on the path
        ns.mkdir(parents=True, exist_ok=True)
        for top in ("bench", "tasks", "strategies"):
            if not (ns / top).exists():
                (ns / top).symlink_to(source / top, target_is_directory=True)
        suite, env = source / "bench" / "perf", {**os.environ, "PYTHONPATH": str(ns.parent)}
    targets = [f"{suite / 'test_perf.py'}::{name}" for name in select] if select else [str(suite)]
    cmd = [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
           "--import-mode=importlib", f"--rootdir={suite}", "-c", os.devnull,
           f"--benchmark-json={out}", "--benchmark-disable-gc", "--benchmark-sort=name",
           "--benchmark-columns=median,iqr,min,max,rounds", f"--perf-device={device}", *(pytest_args or [])]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env)


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of the suite as one: each benchmark's timed rounds concatenated (median recomputed),
    memory the median of the runs' peaks."""
    import statistics

    out = json.loads(json.dumps(runs[0]))
    for b in out["benchmarks"]:
        same = [x for r in runs for x in r["benchmarks"] if x["name"] == b["name"]]
        rounds = [t for x in same for t in (x["extra_info"].get("round_seconds") or [x["stats"]["median"]])]
        b["extra_info"]["round_seconds"] = rounds
        paired = all(len(x["extra_info"].get("calib_samples") or []) == len(x["extra_info"].get("round_seconds")
                                                                          or [None]) for x in same)
        rates = [c for x in same for c in (x["extra_info"].get("calib_samples") or [])]
        b["extra_info"]["calib_samples"] = rates if paired else []  # kept only while every run pairs them
        b["stats"]["median"] = statistics.median(rounds)
        peaks = [x["extra_info"]["peak_memory_mb"] for x in same if x["extra_info"].get("peak_memory_mb") is not None]
        if peaks:
            b["extra_info"]["peak_memory_mb"] = statistics.median(peaks)
    out["machine_info"].setdefault("ctxbench", {})["pooled_runs"] = len(runs)
    return out


def confirm(result: CheckResult, baseline: dict[str, Any], current: dict[str, Any], cur_path: Path, device: str,
            pytest_args: list[str] | None, thresholds: dict[str, Any], times: int = 1, **kw: Any
            ) -> tuple[CheckResult, dict[str, Any], list[str]]:
    """The benchmarks whose throughput the gate flags are measured again (only they, ``times`` more runs)
    and their timed rounds pooled with this run's before the verdict is final: on a shared machine a
    passing slowdown (another tenant's burst) does not repeat, a real regression does. Rounds inside one
    run share the machine's state, so their bootstrap interval alone is too narrow for run-to-run drift
    (an A/A run on this 2-core machine flagged 1 of 24 benchmarks at -20% to -28% on 2 of 2 tries without
    it). Memory verdicts are not re-measured: an isolated child's peak RSS is not timing noise."""
    flagged = [r.name for r in result.rows if any(why.startswith("throughput") for why in r.reasons)]
    if result.suite is not None and result.suite.reasons:  # the suite-wide rule: every benchmark again
        flagged = [r.name for r in result.rows if r.cur is not None]
    if not flagged or times <= 0:
        return result, current, []
    runs = [current]
    for i in range(times):
        out = cur_path.with_name(f"{cur_path.stem}.confirm{i}.json")
        run_suite(out, device, pytest_args, select=flagged)
        if out.exists():
            runs.append(_load(out))
            out.unlink()
    merged = pooled(runs)
    return check(baseline, merged, thresholds, **kw), merged, flagged


def against(rev: str, folder: Path, device: str, pytest_args: list[str] | None, pairs: int = 3,
            b_args: list[str] | None = None) -> tuple[Path, Path]:
    """A/B in one session: ``rev`` (checked out in a temporary worktree) and this tree, their suites run
    in turn ``pairs`` times (A, B, A, B ...) so a shared machine's drift falls on both; each side pooled.
    ``b_args``: extra suite options for this tree's side only (perf-proof's planted regressions)."""
    import tempfile

    from ctxbench.tasks.model.measure import checkout

    repo = checkout()
    if repo is None:
        raise SystemExit("perf-check --against needs ctxbench's git checkout (an installed wheel has none)")
    tmp = Path(tempfile.mkdtemp(prefix="perf-against-"))
    tree = tmp / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=repo, check=True,
                   capture_output=True)
    try:
        a, b = [], []
        for i in range(pairs):
            for side, src, got in (("a", tree, a), ("b", None, b)):
                out = folder / f"against-{side}{i}.json"
                extra = [*(pytest_args or []), *(b_args or [] if side == "b" else [])]
                if run_suite(out, device, extra, source=src) != 0 or not out.exists():
                    raise SystemExit(f"perf-check --against: the suite failed on side {side} (run {i})")
                got.append(_load(out))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=repo, capture_output=True)
    base_path, cur_path = folder / "against-base.json", folder / "against-current.json"
    base_path.write_text(json.dumps(pooled(a)))
    cur_path.write_text(json.dumps(pooled(b)))
    return base_path, cur_path


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _cmd_run(args: argparse.Namespace) -> int:
    mid = machine_id(args.device)
    folder = machine_dir(mid, args.root)
    latest = folder / "latest.json"
    rc = run_suite(latest, args.device, args.pytest_args)
    if not latest.exists():
        print(f"perf: the suite wrote no results (pytest exit {rc})", file=sys.stderr)
        return 2
    baseline = folder / "baseline.json"
    if args.update_baseline or not baseline.exists():
        shutil.copyfile(latest, baseline)
        print(f"perf: {'updated' if args.update_baseline else 'seeded'} the baseline {baseline}")
    print(f"perf: wrote {latest} (machine {mid})")
    return 0 if rc == 0 else 1


def _cmd_check(args: argparse.Namespace) -> int:
    mid = None if (args.baseline and args.current) else machine_id(args.device)
    folder = machine_dir(mid, args.root) if mid else None
    if args.against:
        folder.mkdir(parents=True, exist_ok=True)
        args.baseline, args.current = map(str, against(args.against, folder, args.device, args.pytest_args,
                                                       args.pairs))
    base_path = Path(args.baseline) if args.baseline else folder / "baseline.json"
    if not base_path.exists():
        print(f"perf-check: no baseline for machine {mid!r} at {base_path}.\n"
              f"Run `make perf` once on this kind of machine (it seeds {base_path}) and commit it.", file=sys.stderr)
        return 2
    rc = 0
    if args.current:
        cur_path = Path(args.current)
    else:
        cur_path = folder / "latest.json"
        rc = run_suite(cur_path, args.device, args.pytest_args)
        if not cur_path.exists():
            print(f"perf-check: the suite wrote no results (pytest exit {rc})", file=sys.stderr)
            return 2
    baseline, current = _load(base_path), _load(cur_path)
    bm = (baseline.get("machine_info", {}).get("ctxbench", {}) or {}).get("machine_id")
    cm = (current.get("machine_info", {}).get("ctxbench", {}) or {}).get("machine_id")
    if bm and cm and bm != cm and not args.allow_other_machine:
        print(f"perf-check: the baseline was measured on {bm}, this run on {cm}; refusing to compare "
              f"(--allow-other-machine to force)", file=sys.stderr)
        return 2
    thresholds = load_thresholds(args.thresholds)
    kw = {"normalise": args.normalise, "allow_missing": args.allow_missing}
    result = check(baseline, current, thresholds, **kw)
    flagged: list[str] = []
    if not args.current and not args.against:  # a fresh run of this suite: confirm what it flags
        result, current, flagged = confirm(result, baseline, current, cur_path, args.device, args.pytest_args,
                                           thresholds, args.confirm, **kw)
    report = render(result, baseline, current, str(base_path), str(cur_path))
    if flagged:
        report += (f"\nConfirmed: {len(flagged)} benchmark(s) flagged on throughput were measured {args.confirm} "
                   f"more time(s) and their rounds pooled before this verdict: {', '.join(flagged)}.\n")
    if rc != 0:
        report += f"\n**The suite itself failed** (pytest exit {rc}): see the log above.\n"
    report_path = Path(args.report) if args.report else cur_path.parent / "report.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report)
    print(report)
    print(f"perf-check: wrote {report_path}")
    return 0 if result.ok and rc == 0 else 1


def _cmd_machine_id(args: argparse.Namespace) -> int:
    print(machine_id(args.device))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ctxbench.bench.perf.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--root", default=str(PERF_ROOT), help="results folder (default: results/perf)")
        s.add_argument("--device", default="auto", help="auto (cuda if present) | cpu | cuda | cuda:N")
        s.add_argument("pytest_args", nargs="*", help="extra pytest args after --, e.g. -- --perf-rounds=5")

    r = sub.add_parser("run", help="run the suite into <root>/<machine-id>/latest.json")
    common(r)
    r.add_argument("--update-baseline", action="store_true", help="also copy the run to baseline.json")
    r.set_defaults(func=_cmd_run)
    c = sub.add_parser("check", help="run the suite and compare with <root>/<machine-id>/baseline.json")
    common(c)
    c.add_argument("--baseline", help="baseline JSON (default: <root>/<machine-id>/baseline.json)")
    c.add_argument("--current", help="compare this JSON instead of running the suite")
    c.add_argument("--thresholds", default=str(THRESHOLDS),
                   help="thresholds JSON (default: bench/perf/thresholds.json)")
    c.add_argument("--report", help="where to write the markdown report (default: next to the current JSON)")
    c.add_argument("--against", metavar="REV", help="A/B in one session: measure REV (a git worktree) and this "
                   "tree in turn, --pairs times, and compare them (no stored baseline needed)")
    c.add_argument("--pairs", type=int, default=3, help="with --against: A/B rounds of the whole suite (default 3)")
    c.add_argument("--normalise", action="store_true",
                   help="divide throughput by the matmul calibration (the old mode; raw is the default)")
    c.add_argument("--allow-missing", action="store_true", help="a baseline benchmark missing from this run passes")
    c.add_argument("--confirm", type=int, default=1, help="re-measure benchmarks flagged on throughput this many "
                   "more times and pool their rounds before the verdict (default 1; 0: off)")
    c.add_argument("--allow-other-machine", action="store_true", help="compare across machine ids")
    c.set_defaults(func=_cmd_check)
    m = sub.add_parser("machine-id", help="print this machine's id")
    m.add_argument("--device", default="auto")
    m.set_defaults(func=_cmd_machine_id)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
