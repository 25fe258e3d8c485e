"""Measurements and the environment record: memory, timing, device, versions."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

import torch

PACKAGES = ("torch", "transformers", "datasets", "peft", "pandas", "numpy", "tabulate", "ctxbench")
# the checkout ctxbench runs from, if it runs from one (an editable install); an installed wheel has none
SOURCE = Path(__file__).resolve().parents[2]


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _status_kb(key: str) -> int | None:
    """A field of /proc/self/status in KiB (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def current_rss_mb() -> float | None:
    """Resident set size of this process now (Linux), or None."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_peak_mb() -> float:
    """The RSS high-water mark (since the last ``reset_rss_peak``), else the lifetime ru_maxrss."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / 1024 if sys.platform != "darwin" else ru / 2**20


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """CUDA: max allocated during the block. CPU: the process's peak RSS after it
    (a high-water mark for the whole process unless the cell ran isolated)."""
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["memory_kind"] = "cuda_max_allocated"
    else:
        out["peak_memory_mb"] = peak_rss_mb()
        out["memory_kind"] = "cpu_peak_rss_process"


def median_time(fn, repeats: int = 5, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median wall time of ``fn`` after warm-up, synchronising CUDA around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def checkout() -> Path | None:
    """ctxbench's own git checkout, or None when it runs from an installed wheel (a venv inside some
    other repository must not lend that repository's commit)."""
    if not ((SOURCE / "pyproject.toml").is_file() and (SOURCE / ".git").exists() and (SOURCE / "tasks").is_dir()):
        return None
    return SOURCE


def git_info() -> dict:
    """The commit and dirtiness of ctxbench's checkout; None for both when there is no checkout."""
    repo = checkout()
    if repo is None:
        return {"git_sha": None, "git_dirty": None}

    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    sha = run("rev-parse", "HEAD")
    dirty = bool(run("status", "--porcelain", "--untracked-files=no")) if sha else None
    return {"git_sha": sha or None, "git_dirty": dirty}


def versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    out["python"] = platform.python_version()
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}"


def environment(device: torch.device) -> dict:
    return {
        **git_info(),
        "versions": versions(),
        "device": device.type,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "hostname": platform.node(),
    }
