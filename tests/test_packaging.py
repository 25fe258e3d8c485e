"""A non-editable install into a fresh venv holds every subpackage and data file, and runs from
outside the checkout: ``ctxbench list`` and the smoke sweep on the packaged model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("bench", "tasks", "strategies")


def source_packages() -> set[str]:
    return {"ctxbench." + ".".join(p.parent.relative_to(ROOT).parts) for top in SOURCES
            for p in (ROOT / top).rglob("__init__.py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the tracked files (no build/ or egg-info left in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    src = tmp / "src"
    for f in files:
        if f.split("/")[0] in (*SOURCES, "pyproject.toml", "README.md"):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp / "dist")], check=True, capture_output=True)
    (whl,) = (tmp / "dist").glob("ctxbench-*.whl")
    return whl


def test_the_wheel_holds_every_subpackage_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert source_packages() <= packages, source_packages() - packages
    for data in ("ctxbench/bench/configs/clf.yaml", "ctxbench/bench/configs/ner.yaml", "ctxbench/bench/configs/qa.yaml",
                 "ctxbench/bench/perf/thresholds.json"):
        assert data in names, data
    assert not any(n.startswith(("bench/", "tasks/", "strategies/")) for n in names)  # one namespace only


@pytest.mark.slow
def test_installed_wheel_lists_and_runs_the_smoke_sweep_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies (torch, transformers, the packaged model ...) from this venv's site-packages, added
    # as a path: its .pth files, the editable ctxbench among them, are not read
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CTXBENCH_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(py), "-c", "import ctxbench.bench, ctxbench.tasks.clf as c; print(c.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    listed = subprocess.run([str(venv / "bin" / "ctxbench"), "list"], cwd=work, env=env, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "clf" in listed.stdout and "head" in listed.stdout and "sweeps:" in listed.stdout
    ran = subprocess.run([str(venv / "bin" / "ctxbench"), "--results", "out", "bench", "clf", "--profile", "smoke",
                          "--quiet"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    runs = [json.loads(x) for x in (work / "out" / "clf" / "runs.jsonl").read_text().splitlines()]
    assert runs and all(r["status"] == "ok" for r in runs)
    assert all(r["env"].get("git_sha") is None for r in runs)  # no checkout: no provenance invented
