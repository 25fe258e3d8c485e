"""The one-way layering (strategies <- tasks <- bench) is enforced: import-linter keeps the contract
on this tree and breaks it on a copy with one planted upward import (deferred, inside a function)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path, tmp: Path) -> subprocess.CompletedProcess:
    """lint-imports on ``tree``: a namespace folder ``ctxbench`` of links to its top-level folders comes
    first on the path, so the copy (not the installed checkout) is what is read."""
    ns = tmp / "ns" / "ctxbench"
    ns.mkdir(parents=True)
    for top in ("bench", "tasks", "strategies"):
        (ns / top).symlink_to(tree / top, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(ns.parent)}
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True)


def copy_tree(tmp: Path) -> Path:
    tree = tmp / "tree"
    for top in ("bench", "tasks", "strategies"):
        shutil.copytree(ROOT / top, tree / top, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_contract_holds_here_and_a_planted_upward_import_breaks_it(tmp_path):
    tree = copy_tree(tmp_path)
    ok = lint(tree, tmp_path / "a")
    assert ok.returncode == 0 and "1 kept, 0 broken" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
    with open(tree / "strategies" / "base.py", "a") as f:
        f.write("\n\ndef _planted():\n    from ctxbench.tasks.base import Context  # noqa: F401\n")
    bad = lint(tree, tmp_path / "b")
    assert bad.returncode != 0 and "BROKEN" in bad.stdout
    assert "ctxbench.strategies.base -> ctxbench.tasks.base" in bad.stdout, bad.stdout[-2000:]
