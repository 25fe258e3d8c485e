"""perf-proof: show that the gate is trustworthy on this machine, with the reports committed.

One session, one commit::

    baseline   the suite once, as the baseline of this proof (not the machine's committed baseline)
    A/A x N    the suite again, unchanged: each check must PASS (a failure is a false alarm)
    slow x N   the suite with a planted slowdown of the forward (``--perf-plant-slowdown``): must FAIL
    mem x N    the suite with a planted rise in peak memory (``--perf-plant-memory``): must FAIL

Each check's report is written to ``results/perf/<machine-id>/proof/<kind>-<i>.md`` and the tally to
``proof/README.md`` (false-alarm rate = A/A failures / A/A tries; detection rate = planted failures /
planted tries, each with its benchmark-level counts). About 2 minutes per suite run on 2 CPU cores.

``python -m ctxbench.bench.perf.proof [--tries 3] [--plant 0.2] [-- pytest args]``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ctxbench.bench.perf.check import (PERF_ROOT, _describe, _load, against, check, confirm, load_thresholds,
                                       machine_dir, machine_id, render, run_suite)

KINDS = ("aa", "slow", "mem")
WHAT = {"aa": "A/A (same commit, nothing planted): should pass",
        "slow": "planted slowdown of the forward: should fail",
        "mem": "planted rise in peak memory: should fail"}


def _plant(kind: str, share: float) -> list[str]:
    return {"aa": [], "slow": [f"--perf-plant-slowdown={share}"], "mem": [f"--perf-plant-memory={share}"]}[kind]


def keep(path: Path) -> None:
    """``path`` (a suite's JSON) as ``path.gz`` with a fixed mtime (stable bytes), the plain file removed."""
    import gzip

    with open(path, "rb") as f, open(path.with_suffix(path.suffix + ".gz"), "wb") as out:
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
            gz.write(f.read())
    path.unlink()


def outcome(res, rc: int = 0) -> dict:
    """One try: passed or not, how many benchmarks the per-benchmark rule flagged, whether the suite-wide rule
    failed, and of how many benchmarks."""
    names = {f.split(":")[0] for f in res.failures}
    return {"ok": res.ok and rc == 0, "flagged": len(names - {"suite"}), "suite": "suite" in names,
            "benchmarks": len(res.rows)}


def rederive(folder: Path, thresholds: dict) -> dict[str, list[dict]]:
    """Every try's outcome recomputed from the kept raw runs (``<kind>-<i>.json.gz``, confirm rounds pooled in)
    against the proof's ``baseline.json``, under today's thresholds."""
    import gzip

    baseline, results = _load(folder / "baseline.json"), {}
    for kind in KINDS:
        i = 1
        while (raw := folder / f"{kind}-{i}.json.gz").exists():
            with gzip.open(raw, "rt") as f:
                results.setdefault(kind, []).append(outcome(check(baseline, json.load(f), thresholds)))
            i += 1
    return results


def tally(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per kind: tries, how many failed, and benchmark-level counts."""
    out = {}
    for kind, runs in results.items():
        failed = sum(not r["ok"] for r in runs)
        out[kind] = {"tries": len(runs), "failed": failed, "suite": [r.get("suite", False) for r in runs],
                     "benchmarks_flagged": [r["flagged"] for r in runs], "benchmarks": [r["benchmarks"] for r in runs]}
    return out


def rule_text(thresholds: dict) -> str:
    """The gate's rule in words, read from ``thresholds.json`` (so the proof's page says what was applied)."""
    default, suite = thresholds.get("default", {}), thresholds.get("suite", {})
    floors = ", ".join(f"{e['throughput_drop']:.0%} on {m} machines" for m, e in thresholds.get("machines", {}).items()
                       if "throughput_drop" in e)
    per_bench = ", ".join(f"{e['throughput_drop']:.0%} for {b}" for b, e in thresholds.get("benchmarks", {}).items()
                          if "throughput_drop" in e)
    bench = f"{default.get('throughput_drop', 0.1):.0%}" + (f"; {per_bench}" if per_bench else "") + \
        (f"; a floor of {floors}" if floors else "")
    suite_rule = (f" or for the suite-wide geometric mean ({suite['throughput_drop']:.0%})"
                  if "throughput_drop" in suite else "")
    return ("a throughput regression needs the whole bootstrap 95% interval of the change per unit of machine work "
            "(each round's seconds times the matmul rate sampled just before it) past the limit, for a benchmark "
            f"(thresholds.json: {bench}){suite_rule}, after flagged benchmarks are measured once more and their "
            "rounds pooled (--confirm); memory compares the measured peaks "
            f"(+{default.get('memory_rise', 0.1):.0%} and +{default.get('memory_min_mb', 8.0):g} MB)")


def write_summary(folder: Path, summary: dict, share: float, base_desc: str, thresholds: dict | None = None) -> Path:
    from tabulate import tabulate

    rows = []
    for kind in KINDS:
        t = summary.get(kind)
        if not t:
            continue
        rate = t["failed"] / t["tries"] if t["tries"] else float("nan")
        rows.append([kind, WHAT[kind], t["tries"], t["failed"],
                     ("false alarms " if kind == "aa" else "detected ") + f"{rate:.0%}",
                     ", ".join(f"{f}/{n}" for f, n in zip(t["benchmarks_flagged"], t["benchmarks"])),
                     ", ".join("fail" if x else "ok" for x in t.get("suite", [])) or "–",
                     ", ".join(f"[{kind}-{i + 1}.md]({kind}-{i + 1}.md)" for i in range(t["tries"]))])
    text = "\n".join([
        "# perf gate proof", "",
        "Generated by `make perf-proof` (`python -m ctxbench.bench.perf.proof`); do not edit.", "",
        f"- baseline of this proof: {base_desc}",
        f"- planted share: {share:.0%} (slowdown: each timed run takes 1/(1-{share:g}) as long; memory: "
        f"{share:.0%} of the run's starting memory held extra)",
        f"- rule (perf-check): {rule_text(load_thresholds() if thresholds is None else thresholds)}", "",
        tabulate(rows, headers=["kind", "what", "tries", "failed", "rate", "benchmarks flagged per try",
                                "suite-wide rule per try (fail: it alone fails the check)", "reports"],
                 tablefmt="github"), ""])
    path = folder / "README.md"
    path.write_text(text)
    (folder / "proof.json").write_text(json.dumps({"share": share, "summary": summary, "baseline": base_desc},
                                                  indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="perf-proof", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(PERF_ROOT))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--plant", type=float, default=0.2, help="planted share (default 0.2 = 20%%)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="which checks, e.g. aa,slow,mem")
    ap.add_argument("--confirm", type=int, default=1, help="as perf-check --confirm (default 1)")
    ap.add_argument("--against", metavar="REV", help="each try is perf-check --against REV (interleaved A/B, "
                    "the plant on this tree's side only) instead of a check against one stored baseline")
    ap.add_argument("--pairs", type=int, default=2, help="with --against: A/B pairs per try (default 2)")
    ap.add_argument("--summary-only", action="store_true", help="measure nothing: re-check every kept raw run "
                    "(<kind>-<i>.json.gz) against the proof's baseline.json under thresholds.json and rewrite "
                    "proof/README.md and proof.json")
    ap.add_argument("pytest_args", nargs="*")
    args = ap.parse_args(argv)
    folder = machine_dir(machine_id(args.device), args.root) / ("proof-against" if args.against else "proof")
    folder.mkdir(parents=True, exist_ok=True)
    thresholds = load_thresholds()
    if args.summary_only:
        done = json.loads((folder / "proof.json").read_text())
        base_desc = done.get("baseline") or _describe(_load(folder / "baseline.json"), str(folder / "baseline.json"))
        summary = tally(rederive(folder, thresholds)) if (folder / "baseline.json").exists() else done["summary"]
        print(write_summary(folder, summary, done["share"], base_desc, thresholds).read_text())
        return 0
    base_path = folder / "baseline.json"
    if not args.against:
        if run_suite(base_path, args.device, args.pytest_args) != 0 or not base_path.exists():
            print("perf-proof: the baseline run failed", file=sys.stderr)
            return 2
        baseline = _load(base_path)
    results: dict[str, list[dict]] = {}
    for i in range(args.tries):  # interleaved (aa, slow, mem, aa, ...): a drifting machine hits every kind
        for kind in args.kinds.split(","):
            cur_path = folder / f"{kind}-{i + 1}.json"
            if args.against:  # both sides measured now, in turn; the plant only on this tree's side
                a_path, b_path = against(args.against, folder, args.device, args.pytest_args, args.pairs,
                                         _plant(kind, args.plant))
                base_path, baseline = a_path, _load(a_path)
                b_path.replace(cur_path)
                rc, current = 0, _load(cur_path)
                res, flagged = check(baseline, current, thresholds), []
            else:
                extra = [*args.pytest_args, *_plant(kind, args.plant)]
                rc = run_suite(cur_path, args.device, extra)
                current = _load(cur_path)
                res, current, flagged = confirm(check(baseline, current, thresholds), baseline, current, cur_path,
                                                args.device, extra, thresholds, args.confirm)
            note = (f"\nConfirmed: {len(flagged)} benchmark(s) flagged on throughput were measured {args.confirm} "
                    f"more time(s), rounds pooled: {', '.join(flagged)}.\n" if flagged else "")
            (folder / f"{kind}-{i + 1}.md").write_text(f"{WHAT[kind]}\n\n" + render(res, baseline, current,
                                                                                str(base_path), str(cur_path))
                                                       + note)
            results.setdefault(kind, []).append(outcome(res, rc))
            print(f"perf-proof: {kind}-{i + 1}: {'PASS' if res.ok else 'FAIL'} ({len(res.failures)} reasons)",
                  flush=True)
            cur_path.write_text(json.dumps(current))  # what the report read (confirm rounds pooled in)
            keep(cur_path)  # gzipped (~20 KB): the report can be re-derived from it and the baseline
            for raw in folder.glob("against-*.json"):
                raw.unlink()
    base_desc = (f"`--against {args.against}`: that commit measured in a worktree, {args.pairs} interleaved pairs "
                 f"per try" if args.against else _describe(baseline, str(base_path)))
    path = write_summary(folder, tally(results), args.plant, base_desc, thresholds)
    print(path.read_text())
    aa = results.get("aa", [])
    planted = [r for k in ("slow", "mem") for r in results.get(k, [])]
    return 0 if all(r["ok"] for r in aa) and not any(r["ok"] for r in planted) else 1


if __name__ == "__main__":
    raise SystemExit(main())
