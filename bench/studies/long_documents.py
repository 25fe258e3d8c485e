"""The long-document study: which context strategy wins on genuinely long documents, and why.

``python -m ctxbench.bench.studies.long_documents [run] [--plan whole|2h] [--parts a,b] [--strategies x,y]
[--rerun] [--results DIR]`` (``make study``, ``make study PLAN=2h``)
runs the parts of the plan's config in order, each through the ordinary runner into
``results/studies/<config>/clf/runs.jsonl`` (resumable by run_id: a rerun measures only the missing
cells), then writes the study's tables, plots and README from those runs alone. ``report`` rewrites the
outputs without running anything. Each ``run`` appends what it ran and its wall time per part to
``wall_time.json``, which the README sums.

Plans (the same parts, strategies, budgets and seeds):

=======  ====================================  =========================================================
whole    ``bench/configs/long_documents.yaml``  every part on its whole data where the issue asks for it
                                                (about 8.5 hours in float32 on 2 cores; resumable)
2h       ``long_documents_2h.yaml``             fits about 2 hours on 2 cores: each part that does not fit
                                                reads a fixed subsample (data_seed 0), said in its tables
=======  ====================================  =========================================================

Parts (most informative first, so a stopped run has the core):

=============  =================================================================================================
books          orange3's 140 book excerpts, every strategy, budgets 510..64, 5 seeds (28 test documents)
transforms     all NewsArticles as written, inverted and sentence-shuffled (Park et al. 2022), b = 128
core           all 3,824 NewsArticles, every strategy (selection and adaptive included), 510..64, 5 seeds
smollm2        SmolLM2-135M ``full`` at 4,096 / 2,048 / 1,024 on a fixed 300 / 60 / 200 subsample
minilm_pair    MiniLM head / sliding / hierarchical at 510 on that subsample (the model-vs-model pairing)
20ng_long      the > 512-token part of orange3's 20 Newsgroups (no punctuation: the 20-word fallback)
finetune       MiniLM fine-tuned at equal optimizer steps (150) on a 400 / 100 / 300 subsample, b = 256
=============  =================================================================================================
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

PLANS = {"whole": "long_documents", "2h": "long_documents_2h"}  # plan -> its sweep config
CONFIG = PLANS["whole"]
PARTS = {"books": "books", "transforms": "transforms", "core": None, "smollm2": "smollm2",
         "minilm_pair": "minilm_pair", "20ng_long": "20ng_long", "finetune": "finetune"}


def plan_root(plan: str) -> Path:
    """Where a plan's runs and outputs live: ``results/studies/<its config>``."""
    return Path("results") / "studies" / PLANS[plan]


def sweeps(parts: list[str] | None = None, config: str = CONFIG) -> list[tuple[str, object]]:
    from ctxbench.bench.config import load_sweep

    names = parts or list(PARTS)
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; parts: {', '.join(PARTS)}")
    return [(name, load_sweep(config, profile=PARTS[name])) for name in names]


def only(sweep, names: list[str] | None):
    """``sweep`` with only the strategies named (by name, e.g. ``textrank``); None when it has none of them."""
    import dataclasses

    if names is None:
        return sweep
    kept = tuple(s for s in sweep.strategies if s.name in names)
    return dataclasses.replace(sweep, strategies=kept) if kept else None


WALL_FILE = "wall_time.json"


def record_wall(root: Path, row: dict) -> None:
    """Append one part's run (cells run and skipped, wall seconds) to ``root/wall_time.json``."""
    import json

    from ctxbench.tasks.cache import atomic_write_text

    path = root / WALL_FILE
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    atomic_write_text(path, json.dumps({"what": "each `long_documents run` of a part: the cells it ran and skipped "
                                                "(already recorded) and its wall time, appended",
                                        "rows": rows + [row]}, indent=1))


def run(parts: list[str] | None, root: Path, progress: bool = True, strategies: list[str] | None = None,
        rerun: bool = False, config: str = CONFIG) -> int:
    import datetime
    import os

    from ctxbench.bench.run.runner import run_sweep

    failed = 0
    chosen = sweeps(parts, config)
    unknown = set(strategies or ()) - {s.name for _, sw in chosen for s in sw.strategies}
    if unknown:
        raise SystemExit(f"no part of the study runs {sorted(unknown)}")
    for name, sweep in chosen:
        sweep = only(sweep, strategies)
        if sweep is None:
            continue
        t0 = time.perf_counter()
        print(f"study part {name}: {len(sweep.cells())} cells{' (measured again)' if rerun else ''}", flush=True)
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        summary = run_sweep(sweep, root, progress=progress, rerun=rerun)
        wall = time.perf_counter() - t0
        print(f"study part {name}: ran {summary.ran}, skipped {summary.skipped}, failed {len(summary.failed)} "
              f"in {wall:.0f} s", flush=True)
        record_wall(root, {"part": name, "started": started, "wall_s": round(wall, 1), "ran": summary.ran,
                           "skipped": summary.skipped, "failed": len(summary.failed),
                           "interrupted": bool(summary.interrupted), "strategies": strategies, "rerun": rerun,
                           "precision": sweep.precision, "cpu_count": os.cpu_count()})
        failed += len(summary.failed) + summary.interrupted
        if summary.interrupted:
            break
    return failed


COST_FILE = "cost_side_by_side.json"


def merged_rows(path: Path, rows: list[dict]) -> list[dict]:
    """``rows`` after the rows already in ``path`` of every part they do not measure again."""
    import json

    measured = {r["part"] for r in rows}
    kept = [r for r in json.loads(path.read_text())["rows"] if r["part"] not in measured] if path.exists() else []
    return kept + rows


def side_by_side_costs(root: Path, parts: list[str] | None = None, repeats: int = 3, config: str = CONFIG) -> Path:
    """Each probe part's strategies timed side by side at each of its budgets on its cost sample (the
    clf task's ``cost_side_by_side``), for parts with recorded cells; written to ``root/cost_side_by_side.json``
    (keeping the rows of parts not measured now) and read by the report next to each cell's own measured cost
    (cells timed minutes apart on a shared machine drift; strategies timed in turn in one pass do not)."""
    import dataclasses
    import json

    from ctxbench.bench.results import read_jsonl
    from ctxbench.tasks import get_task
    from ctxbench.tasks.base import Context
    from ctxbench.tasks.model.encoder import pick_device

    runs_path = root / "clf" / "runs.jsonl"
    recorded = {(r["spec"]["dataset"], r["spec"]["model"]) for r in read_jsonl(runs_path)} if runs_path.exists() \
        else set()
    task = get_task("clf")
    rows, ctx = [], None
    for name, sweep in sweeps(parts, config):
        if sweep.mode != "probe" or (sweep.dataset, sweep.model) not in recorded:
            continue
        ctx = ctx or Context(device=pick_device(sweep.device), progress=False)
        settings = dataclasses.replace(sweep.settings, transform="none")  # cost does not depend on the order
        for budget in sweep.budgets:
            spec = next(c for c in sweep.cells() if c.budget == budget)
            spec = dataclasses.replace(spec, settings=settings)
            got = task.cost_side_by_side(spec, ctx, sweep.strategies, repeats)
            head = got.get("head", {}).get("seconds")
            for label, v in got.items():
                rows.append({"part": name, "dataset": sweep.dataset, "model": sweep.model, "budget": budget,
                             "strategy": label, **v, "x_head": v["seconds"] / head if head else None})
            print(f"side-by-side cost {name} b={budget}: " + ", ".join(
                f"{k} {v['ms_per_doc']:.1f} ms" for k, v in got.items()), flush=True)
    path = root / COST_FILE
    rows = merged_rows(path, rows)
    path.write_text(json.dumps({"method": "tasks/clf.py Classification.cost_side_by_side: every strategy's inputs "
                                          "for the cost sample, timed in turn (side_by_side), median of "
                                          f"{repeats} passes after a warm-up each", "device": str(ctx.device)
                                if ctx else None, "rows": rows}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctxbench.bench.studies.long_documents",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", default="run", choices=["run", "cost", "report"],
                    help="run: the parts, then the report; cost: time each part's strategies side by side (a quiet "
                         "machine helps), then the report; report: the outputs only")
    ap.add_argument("--parts", default=None, help=f"comma-separated, in this order (default all): {', '.join(PARTS)}")
    ap.add_argument("--plan", default="whole", choices=list(PLANS),
                    help="whole: every part on its whole data (the reference); 2h: sized to about 2 hours on 2 "
                         "cores, parts that do not fit on a fixed subsample")
    ap.add_argument("--results", default=None, help="default results/studies/<the plan's config>")
    ap.add_argument("--strategies", default=None,
                    help="comma-separated strategy names: run only their cells (default all)")
    ap.add_argument("--rerun", action="store_true",
                    help="measure the cells afresh, each new line in place of its recorded one (e.g. after a "
                         "measurement changed); the span cache still serves the encodings")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    config = PLANS[args.plan]
    root = Path(args.results) if args.results else plan_root(args.plan)
    failed = 0
    if args.command == "run":
        failed = run(args.parts.split(",") if args.parts else None, root, progress=not args.quiet,
                     strategies=args.strategies.split(",") if args.strategies else None, rerun=args.rerun,
                     config=config)
    elif args.command == "cost":
        print(f"wrote {side_by_side_costs(root, args.parts.split(',') if args.parts else None, config=config)}")
    from ctxbench.bench.studies.long_report import write_report

    print(f"wrote {write_report(root, args.plan)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
