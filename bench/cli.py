"""The ``ctxbench`` command line: bench, table, report, compare, scale, list."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctxbench.strategies import ConfigError

# Flags that are spellings of sweep keys.
FLAG_KEYS = {"dataset": "dataset", "model": "model", "mode": "mode", "text_col": "text_col", "label_col": "label_col",
             "device": "device"}


def _recorded_by(runs: list[dict]) -> str:
    """Which machine(s) and commit(s) recorded these runs, from their env fields."""
    from collections import Counter

    env = [r.get("env") or {} for r in runs]
    machines = Counter(f"{e.get('device_name', '?')} on host {e.get('hostname', '?')}" for e in env)
    commits = Counter(f"{str(e.get('git_sha') or '?')[:10]}{' (dirty)' if e.get('git_dirty') else ''}" for e in env)
    dates = sorted(str(r.get("created_at", "")) for r in runs if r.get("created_at"))
    when = f", {dates[0][:10]} to {dates[-1][:10]}" if dates else ""
    return f"{'; '.join(machines)} at commit {', '.join(commits)}{when}"


def _bench(args: argparse.Namespace) -> int:
    from ctxbench.bench.config import load_sweep
    from ctxbench.bench.run.runner import run_sweep
    from ctxbench.bench.report.tables import spec_key, summary_tables, write_leaderboard
    from ctxbench.bench.results import read_jsonl
    from ctxbench.tasks.cache import canonical

    overrides = list(args.overrides)
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    sweep = load_sweep(args.config or args.task, overrides, args.profile)
    cells = sweep.cells()
    how = sweep.mode if sweep.precision == "auto" else f"{sweep.mode}, precision {sweep.precision}"
    print(f"ctxbench: {sweep.task} on {sweep.dataset} with {sweep.model} ({how}); {len(cells)} runs "
          f"= {len(sweep.strategies)} strategies x {len(sweep.budgets)} budgets x {len(sweep.seeds)} seeds")
    from ctxbench.bench.run.executors import make_executor

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)  # pinned for the whole sweep; every run line records it
    executor = make_executor(args.executor, args.address)
    runs_file = Path(args.results) / sweep.task / "runs.jsonl"
    keys = {canonical(c.to_dict()) for c in cells}
    summary = run_sweep(sweep, args.results, progress=not args.quiet, isolate=args.isolate,
                        oom_retries=args.oom_retries, deterministic=args.deterministic, executor=executor,
                        rerun=args.rerun)
    if args.rerun:
        print(f"--rerun: {summary.ran} cells measured again, each new line in place of the cell's earlier ones (an old "
              f"line goes only when its new run is ok)")
    board = write_leaderboard(runs_file)
    mine = [r for r in read_jsonl(runs_file) if spec_key(r) in keys]
    print(summary_tables(mine, board=board))
    if summary.ran == 0 and mine:
        print(f"Every cell of this sweep was already recorded in {runs_file}: nothing was measured now. "
              f"Recorded by {_recorded_by(mine)}; its speeds and memory are that machine's, not this one's. "
              f"To measure afresh: add --rerun (re-measures these cells and replaces their lines), or pass "
              f"another results folder (--results DIR).")
    print(f"ran {summary.ran}, skipped {summary.skipped} already recorded, failed {len(summary.failed)}"
          f"{', interrupted' if summary.interrupted else ''}")
    for line in summary.notes:
        print(line)
    for label, status, msg in summary.failed:
        print(f"  {status}: {label}: {msg}")
    print(f"wrote {runs_file.parent / 'SUMMARY.md'} (details: leaderboard.md)")
    return 0 if summary.ok else 1


def _table(args: argparse.Namespace) -> int:
    from ctxbench.bench.report.tables import write_leaderboard

    tasks = [args.task] if args.task else sorted(p.name for p in Path(args.results).iterdir()
                                                 if (p / "runs.jsonl").exists())
    if not tasks:
        raise ConfigError(f"no runs.jsonl under {args.results}/; run `ctxbench bench TASK` first")
    for task in tasks:
        path = Path(args.results) / task / "runs.jsonl"
        if not path.exists():
            raise ConfigError(f"{path} does not exist")
        board = write_leaderboard(path)
        print(f"wrote {path.parent / 'SUMMARY.md'}, leaderboard.md ({len(board.sections)} tables)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ctxbench.bench.report.html import build_report

    if not any(Path(args.results).glob("*/runs.jsonl")):
        raise ConfigError(f"no runs.jsonl under {args.results}/; run `ctxbench bench TASK` first")
    print(f"wrote {build_report(args.results, args.out)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    import ctxbench.strategies as strategies
    from ctxbench.bench.config import CONFIG_DIR
    from ctxbench.tasks import get_task, task_names
    from ctxbench.tasks.model.packaged import PACKAGED_MODELS

    print("strategies:", ", ".join(strategies.registered()))
    print("tasks:     ", ", ".join(task_names()))
    for i, name in enumerate(task_names()):  # each task names its own built-in sources
        task = get_task(name)
        if hasattr(task, "sources"):
            print("datasets:  " if i == 0 else "           ", f"{name}:", task.sources())
    print("models:    ", ", ".join(PACKAGED_MODELS), "+ a local folder or hub id (connected)")
    print("sweeps:    ", ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxbench", description=__doc__)
    p.add_argument("--results", default="results",
                   help="results folder (default: results)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="run a sweep and print its leaderboard")
    b.add_argument("task", help="task name (clf, ...) or a sweep YAML path")
    b.add_argument("overrides", nargs="*", help="key=value overrides, e.g. budgets=[64,128] limits.train=500")
    b.add_argument("--config", help="sweep YAML (default: bench/configs/<task>.yaml)")
    b.add_argument("--profile", default=None, help="profile in the sweep YAML, e.g. smoke")
    for flag in FLAG_KEYS:
        b.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None)
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument("--executor", default="local", choices=["local", "ray", "accelerate"],
                   help="where cells run: in this process (default), as Ray tasks, or across `accelerate launch` "
                        "processes; this process alone writes runs.jsonl")
    b.add_argument("--address", default=None, help="Ray cluster: auto or ray://host:port (with --executor ray)")
    b.add_argument("--isolate", action="store_true",
                   help="run each cell in a child process (CPU peak RSS is that cell's; an OS OOM kill is an oom run)")
    b.add_argument("--oom-retries", type=int, default=0,
                   help="retry an out-of-memory cell up to N times with its batch sizes halved (default 0)")
    b.add_argument("--deterministic", action="store_true", help="ask torch for deterministic kernels")
    b.add_argument("--rerun", action="store_true",
                   help="measure this sweep's cells afresh, replacing the lines already recorded for them")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the sweep (default: torch's, i.e. the usable cores); recorded per run")
    b.set_defaults(func=_bench)
    t = sub.add_parser("table", help="regenerate leaderboard.md/.csv from runs.jsonl alone")
    t.add_argument("task", nargs="?")
    t.set_defaults(func=_table)
    r = sub.add_parser("report", help="build the static HTML leaderboard site under results/ from runs.jsonl alone")
    r.add_argument("--out", default=None, help="site folder (default: the results folder)")
    r.set_defaults(func=_report)
    from ctxbench.bench.report import compare
    from ctxbench.bench.studies import scale

    c = sub.add_parser("compare", help="diff two runs.jsonl (metric, throughput, memory) with thresholds; "
                                       "exit 1 on a regression")
    compare.add_arguments(c)
    c.set_defaults(func=compare.run)
    s = sub.add_parser("scale", help="time each strategy on synthetic documents of 512..65,536 tokens and fit "
                                     "the growth (table + plot)")
    scale.add_arguments(s)
    s.set_defaults(func=scale.run)
    ls = sub.add_parser("list", help="list strategies, tasks, datasets, models, sweeps")
    ls.set_defaults(func=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # argparse stops filling `overrides` at the first flag: `bench clf --profile x key=value` leaves the
    # key=value after the flags over; take those back, refuse anything else
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray or (extra and args.command != "bench"):
        p.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"ctxbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
