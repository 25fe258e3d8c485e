"""Wall time of one sweep on the local executor and on a local Ray instance, side by side.

    python -m ctxbench.bench.studies.ray_overhead [--profile smoke] [--repeats 1] [key=value ...]

Both executors run the same grid from the same state: a cache holding the packaged
data and the tokenized splits (built once, up front), but no span vectors, so each
run pays its own encoding pass, and an empty results folder. Runs alternate
(local, ray, ray, local, ...) so that a load drift on a shared machine hits both alike.
The Ray instance is started once, up front (its start-up is reported apart); a Ray
run's time includes starting its worker actors, which every sweep pays. The machine
is shared and noisy: read the ratio, not the seconds (CONVENTIONS, Measuring honestly).
Ray stays on loopback (127.0.0.1) and gets ``--num-cpus`` CPUs (default: this machine's).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ctxbench.bench.studies.ray_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", nargs="?", default="clf")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--out", default=None, help="write the measurements as JSON here")
    args = p.parse_args(argv)

    import ray
    import torch

    from ctxbench.bench.config import load_sweep
    from ctxbench.bench.run.executors import RayExecutor
    from ctxbench.tasks.model.measure import device_name
    from ctxbench.bench.results import read_jsonl
    from ctxbench.bench.run.runner import run_sweep
    from ctxbench.tasks import Context

    sweep = load_sweep(args.task, args.overrides, args.profile)
    cells = sweep.cells()
    work = Path(tempfile.mkdtemp(prefix="ctxbench-ray-overhead-"))
    base = work / "base-cache"
    # the packaged data copies and tokenized splits, shared by every timed run
    os.environ["CTXBENCH_CACHE"] = str(base)
    warm = load_sweep(args.task, [*args.overrides, f"strategies=[{cells[0].strategy.name}]",
                                  f"budgets=[{cells[0].budget}]", "seeds=[0]", "train.epochs=1"], args.profile)
    run_sweep(warm, work / "warm", ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    shutil.rmtree(base / "spans", ignore_errors=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 * 1024 * 1024, log_to_driver=False)
    ray_start = time.perf_counter() - t0

    times: dict[str, list[float]] = {"local": [], "ray": []}
    metrics: dict[str, dict] = {}
    for rep in range(args.repeats):
        for name in (("local", "ray") if rep % 2 == 0 else ("ray", "local")):  # ABBA: drift hits both
            cache = work / f"cache-{name}-{rep}"
            shutil.copytree(base, cache)
            os.environ["CTXBENCH_CACHE"] = str(cache)
            root = work / f"results-{name}-{rep}"
            executor = RayExecutor() if name == "ray" else None
            t0 = time.perf_counter()
            s = run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False,
                          executor=executor)
            times[name].append(time.perf_counter() - t0)
            if not s.ok:
                print(f"{name}: failed cells {s.failed}", file=sys.stderr)
            metrics[name] = {r["run_id"]: r["metrics"] for r in read_jsonl(root / sweep.task / "runs.jsonl")}
            print(f"[{rep}] {name}: {times[name][-1]:.1f}s for {s.ran} cell(s)", flush=True)
    ray.shutdown()

    loc, rr = statistics.median(times["local"]), statistics.median(times["ray"])
    same = metrics["local"].keys() == metrics["ray"].keys()
    equal = sum(metrics["local"][k] == metrics["ray"].get(k) for k in metrics["local"])
    out = {"task": sweep.task, "profile": args.profile, "overrides": args.overrides, "cells": len(cells),
           "repeats": args.repeats, "local_s": times["local"], "ray_s": times["ray"],
           "ratio_ray_over_local": rr / loc, "ray_init_s": ray_start,
           "ratio_with_ray_init": (rr + ray_start) / loc, "ray_num_cpus": args.num_cpus,
           "local_threads": torch.get_num_threads(), "ray_worker_threads": 1, "cpu": device_name(torch.device("cpu")),
           "cpu_count": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "same_run_ids": same,
           "runs_with_equal_metrics": f"{equal}/{len(metrics['local'])}"}
    print(f"\n| executor | wall s (median of {args.repeats}) | ratio |\n|---|---|---|\n"
          f"| local ({out['local_threads']} threads, 1 process) | {loc:.1f} | 1.00 |\n"
          f"| ray ({args.num_cpus} workers x 1 thread) | {rr:.1f} | {rr / loc:.2f} |\n"
          f"| ray + ray.init ({ray_start:.1f}s) | {rr + ray_start:.1f} | {(rr + ray_start) / loc:.2f} |")
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
