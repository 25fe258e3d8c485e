"""Helpers for tests that run the CLI in a child process and kill it (SIGKILL, SIGINT).

Children are forked from ``ctxbench.bench.run.isolate``'s forkserver (torch, transformers and
the task adapters already imported), so each starts in milliseconds; they are
real processes, killed by real signals. ``fault`` makes a child kill itself with
SIGKILL at a precise point of the results store that a kill from outside could
only hit by luck:

- ``("torn_line", k)``: the k-th run line is half written (then fsync), then SIGKILL;
- ``("before_line", k)``: SIGKILL after the k-th run's sidecar, before its line;
- ``("after_line", k)``: SIGKILL right after the k-th run line (between runs);
- ``("torn_sidecar", k)``: the k-th sidecar's temporary file is half written, then SIGKILL;
- ``("slow_runs", ms)``: no kill; every clf run lasts at least ``ms`` milliseconds longer, so a
  kill from outside at a random moment lands inside a run, not after a grid that already ended.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install(fault: tuple[str, int] | None) -> None:
    if fault is None:
        return
    import ctxbench.bench.results as R
    import ctxbench.tasks.cache as S

    mode, k = fault
    calls = {"n": 0}
    if mode in ("torn_line", "before_line", "after_line"):
        append = R.append_line

        def append_line(path, record):
            calls["n"] += 1
            if calls["n"] == k:
                if mode == "before_line":
                    _die()
                if mode == "torn_line":
                    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    os.write(fd, line[: len(line) // 2])
                    os.fsync(fd)
                    _die()
                append(path, record)
                _die()
            return append(path, record)

        R.append_line = append_line
    elif mode == "torn_sidecar":
        write = S.atomic_write_bytes

        def atomic_write_bytes(path, data):
            if "predictions" in Path(path).parts:
                calls["n"] += 1
                if calls["n"] == k:
                    tmp = Path(path).parent / f".{Path(path).name}.killed.tmp"
                    tmp.parent.mkdir(parents=True, exist_ok=True)
                    tmp.write_bytes(data[: len(data) // 2])
                    _die()
            return write(path, data)

        S.atomic_write_bytes = atomic_write_bytes
    elif mode == "slow_runs":
        import time

        from ctxbench.tasks.clf import Classification

        run = Classification.run

        def slow_run(self, spec, ctx):
            out = run(self, spec, ctx)
            time.sleep(k / 1000)
            return out

        Classification.run = slow_run
    else:
        raise ValueError(mode)


def run_cli(argv: list[str], environ: dict, log: str, fault: tuple[str, int] | None = None) -> None:
    """The child's body: the parent's environment, output to ``log``, then ``ctxbench`` itself."""
    os.environ.clear()
    os.environ.update(environ)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the forkserver ignores it
    _install(fault)
    from ctxbench.bench.cli import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def start(argv: list[str], log: Path, fault: tuple[str, int] | None = None, model: str | None = None):
    from ctxbench.bench.run.isolate import context

    p = context(model).Process(target=run_cli, args=(argv, dict(os.environ), str(log), fault))
    p.start()
    return p
