"""pytest-benchmark plumbing for the perf suite: options, the session (device, pinned
threads, model, calibration), machine_info, and the per-run utilisation table."""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from ctxbench.tasks.model.flops import Calibrator, calibrate
from ctxbench.tasks.model.encoder import Loaded, pick_device
from ctxbench.bench.perf.workload import Workload, cells, load_model


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("ctxbench perf")
    g.addoption("--perf-device", default="auto", help="auto (cuda if present) | cpu | cuda | cuda:N")
    g.addoption("--perf-threads", type=int, default=None,
                help="torch CPU threads, pinned and recorded (default: the CPUs this process may use)")
    g.addoption("--perf-rounds", type=int, default=None, help="timed rounds per benchmark (default: 3 CPU, 10 CUDA)")
    g.addoption("--perf-warmup", type=int, default=None, help="untimed warm-up rounds (default: 1 CPU, 2 CUDA)")
    g.addoption("--perf-model", default=Workload.model, help="model name (default: minilm; tiny = random, for tests)")
    g.addoption("--perf-docs", default=None, help="synthetic document lengths, e.g. 2048,384")
    g.addoption("--perf-budgets", default=None, help="budgets, e.g. 64,128,256,max")
    g.addoption("--isolate", dest="perf_isolate", action="store_true", default=True,
                help="CPU: measure each cell's peak RSS in a child process that runs only that cell (default)")
    g.addoption("--perf-plant-slowdown", type=float, default=0.0,
                help="gate test hook: slow every timed run by this share of throughput (e.g. 0.2)")
    g.addoption("--perf-plant-memory", type=float, default=0.0,
                help="gate test hook: hold this share of the run's starting memory extra while it runs (e.g. 0.2)")
    g.addoption("--no-isolate", dest="perf_isolate", action="store_false",
                help="CPU: measure peak RSS in this process instead (faster, less exact)")


def workload_from(config: pytest.Config) -> Workload:
    kw: dict[str, Any] = {"model": config.getoption("perf_model")}
    if config.getoption("perf_docs"):
        kw["doc_lengths"] = tuple(int(x) for x in config.getoption("perf_docs").split(","))
    if config.getoption("perf_budgets"):
        kw["budgets"] = tuple(None if x == "max" else int(x) for x in config.getoption("perf_budgets").split(","))
    kw.update(plant_slowdown=config.getoption("perf_plant_slowdown"),
              plant_memory=config.getoption("perf_plant_memory"))
    return Workload(**kw)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``cell`` from the (possibly overridden) workload: test_infer gets the
    inference cells, test_finetune_step the fine-tune ones."""
    if "cell" in metafunc.fixturenames:
        kind = "infer" if metafunc.function.__name__ == "test_infer" else "finetune"
        chosen = [c for c in cells(workload_from(metafunc.config)) if c.kind == kind]
        metafunc.parametrize("cell", chosen, ids=[c.id for c in chosen])


@dataclass
class PerfSession:
    device: torch.device
    threads: int
    workload: Workload
    enc: Loaded
    rounds: int
    warmup: int
    isolate: bool
    calibrator: Calibrator
    calibration: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@pytest.fixture(scope="session")
def perf(pytestconfig: pytest.Config) -> PerfSession:
    from ctxbench.tasks.model.measure import device_name, versions
    from ctxbench.bench.perf.check import machine_id

    device = pick_device(pytestconfig.getoption("perf_device"))
    threads = pytestconfig.getoption("perf_threads") or _usable_cpus()
    torch.set_num_threads(threads)  # pinned for the whole session (and passed to memory children)
    cuda = device.type == "cuda"
    rounds = pytestconfig.getoption("perf_rounds") or (10 if cuda else 3)
    warmup = pytestconfig.getoption("perf_warmup")
    warmup = (2 if cuda else 1) if warmup is None else warmup
    workload = workload_from(pytestconfig)
    enc = load_model(workload.model, device)
    calibration = calibrate(device)
    sess = PerfSession(device, threads, workload, enc, rounds, warmup,
                       bool(pytestconfig.getoption("perf_isolate")) and not cuda, Calibrator(device), calibration)
    v = versions()
    pytestconfig._ctxbench_perf = sess  # type: ignore[attr-defined]
    pytestconfig._ctxbench_info = {  # type: ignore[attr-defined]
        "machine_id": machine_id(str(device)),
        "device": device.type,
        "device_name": device_name(device),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
        "torch": v.get("torch"),
        "transformers": v.get("transformers"),
        "python": v.get("python"),
        "model": workload.model,
        "model_path": enc.path,
        "attn_implementation": enc.attn_implementation,
        "dtype": "bfloat16 autocast" if cuda else enc.dtype,
        "max_positions": enc.max_positions,
        "workload": workload.to_dict(),
        "rounds": rounds,
        "warmup_rounds": warmup,
        "isolate": sess.isolate,
        "calibration": calibration,
        "per_benchmark_calibration": f"median of one {sess.calibrator.n}x{sess.calibrator.n} "
                                     f"{str(sess.calibrator.dtype).replace('torch.', '')} matmul sample "
                                     f"({sess.calibrator.reps} reps) taken right before each timed round",
    }
    return sess


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    info = getattr(config, "_ctxbench_info", None)
    if info is not None:
        machine_info["ctxbench"] = info


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    sess: PerfSession | None = getattr(config, "_ctxbench_perf", None)
    if sess is None or not sess.rows:
        return
    from tabulate import tabulate

    info = config._ctxbench_info  # type: ignore[attr-defined]
    cal = sess.calibration
    tr = terminalreporter
    tr.write_sep("=", "ctxbench perf: utilisation")
    tr.write_line(f"machine {info['machine_id']} ({info['device_name']}), {sess.threads} threads, "
                  f"model {info['model']} ({info['attn_implementation']}, {info['dtype']}); "
                  f"session matmul peak {cal['gflops']:.1f} GFLOP/s ({cal['n']}x{cal['n']} {cal['dtype']})")
    headers = ["benchmark", "median s", "real tok/s", "padding waste", "model GFLOP/s", "matmul GFLOP/s",
               "utilisation", "peak MB", "cell MB"]
    table = [[r["name"], f"{r['median_s']:.3f}", f"{r['tokens_per_s']:.0f}", f"{r['padding_waste']:.1%}",
              f"{r['achieved_gflops']:.1f}", f"{r['calib_gflops']:.1f}", f"{r['utilisation']:.1%}",
              f"{r['peak_memory_mb']:.0f}", "–" if r.get("cell_memory_mb") is None else f"{r['cell_memory_mb']:.0f}"]
             for r in sess.rows]
    tr.write_line(tabulate(table, headers=headers, tablefmt="github"))
    tr.write_line("utilisation = model FLOPs of the real tokens / median time / the matmul rate measured right "
                  "before each round (tasks/model/flops.py); padding waste = 1 - real / padded tokens")
    if sess.rows:
        tr.write_line(f"median utilisation {statistics.median(r['utilisation'] for r in sess.rows):.1%}")
