"""Data-parallel fine-tuning: 2 CPU processes (gloo) give the metrics of 1 process, every
test document is scored exactly once, and only rank 0 writes.

The two ranks are started here with the environment torchrun gives its workers (RANK,
LOCAL_RANK, WORLD_SIZE, ...) and meet through a file rather than a TCP store:
``accelerate launch --cpu`` starts several CPU processes only through mpirun, and
torchrun's (or env://'s) TCP store listens on every interface, while this test must
stay on loopback (gloo is pinned to ``lo``). Past the rendezvous it is the code path a
launcher runs: accelerate's MULTI_CPU state, DDP, the DistributedExecutor."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.tasks.model.distributed import local_share, strided_share
from ctxbench.bench.results import check_store, read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.tasks import Context

RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + sys.argv[3], rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]))
    from ctxbench.bench.config import load_sweep
    from ctxbench.bench.run.executors import DistributedExecutor
    from ctxbench.bench.run.runner import run_sweep
    from ctxbench.tasks import Context

    torch.set_num_threads(1)
    ex = DistributedExecutor()  # joins the process group before anything is loaded
    sweep = load_sweep("clf", json.loads(sys.argv[2]))
    s = run_sweep(sweep, sys.argv[1], ctx=Context(device=torch.device("cpu"), progress=False), progress=False,
                  executor=ex)
    print("RANK", ex.state.process_index, json.dumps({"ran": s.ran, "failed": s.failed, "notes": s.notes}))
""")


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model, tmp_path_factory) -> str:
    """The tiny random BERT without dropout: 1 and 2 processes then differ only by the order
    of float sums (dropout masks would be drawn per process)."""
    from transformers import BertModel

    path = tmp_path_factory.mktemp("tiny-bert-nodrop")
    m = BertModel.from_pretrained(tiny_model, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m.save_pretrained(path)
    for f in os.listdir(tiny_model):
        if "token" in f or f == "vocab.txt":
            shutil.copy(os.path.join(tiny_model, f), path)
    return str(path)


def overrides(model: str, data: str) -> list[str]:
    # an odd batch (7) split over 2 processes, gradient accumulation over an odd number of micro-batches,
    # a window-level and a document-level strategy
    return [f"model={model}", f"dataset={data}", "mode=finetune", "limits.train=null", "limits.val=null",
            "limits.test=null", "seeds=[0]", "budgets=[32]", "train.epochs=2", "train.patience=2",
            "train.batch_size=7", "train.grad_accum=2", "train.dropout=0.0", "train.lr=0.001",
            "strategies=[{name: sliding, pool: max}, {name: hierarchical, pool: mean}]"]


def launch(nproc: int, root, ovr: list[str], env: dict) -> list[subprocess.CompletedProcess]:
    script = root.parent / "rank.py"
    script.write_text(RANK_SCRIPT)
    store = root.parent / "rendezvous"
    procs = []
    for rank in range(nproc):
        e = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
             "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(root), json.dumps(ovr), str(store)], env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=240)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def test_two_processes_match_one(no_dropout_model, tiny_data, tmp_path, cache_env):
    ovr = overrides(no_dropout_model, tiny_data)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = run_sweep(load_sweep("clf", ovr), tmp_path / "one",
                        ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    finally:
        torch.set_num_threads(before)
    assert one.ok and one.ran == 2

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path]), "OMP_NUM_THREADS": "1"}
    done = launch(2, tmp_path / "two", ovr, env)
    for p in done:
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranks = [line for p in done for line in p.stdout.splitlines() if line.startswith("RANK")]
    assert sorted(line.split()[1] for line in ranks) == ["0", "1"]
    main = json.loads(next(line for line in ranks if line.split()[1] == "0").split(" ", 2)[2])
    other = json.loads(next(line for line in ranks if line.split()[1] == "1").split(" ", 2)[2])
    assert main["ran"] == 2 and not main["failed"] and other["ran"] == 0  # rank 1 recorded nothing

    ref = {r["run_id"]: r for r in read_jsonl(tmp_path / "one" / "clf" / "runs.jsonl")}
    runs = read_jsonl(tmp_path / "two" / "clf" / "runs.jsonl")
    assert len(runs) == 2 and {r["run_id"] for r in runs} == set(ref)  # same cells, each written once
    assert not any(check_store(tmp_path / "two", "clf").values())
    for r in runs:
        a, b = ref[r["run_id"]], r
        assert b["env"]["distributed"]["num_processes"] == 2 and "gloo" in b["env"]["distributed"]["backend"]
        assert b["measurements"]["docs"] == a["measurements"]["docs"] == 30
        assert b["measurements"]["train_processes"] == 2 and a["measurements"]["train_processes"] == 1
        rows = [json.loads(x) for x in (tmp_path / "two" / "clf" / b["predictions_file"]).read_text().splitlines()]
        ref_rows = [json.loads(x) for x in (tmp_path / "one" / "clf" / a["predictions_file"]).read_text().splitlines()]
        assert len(rows) == 30 and sorted(x["i"] for x in rows) == list(range(30))
        # only the order of float sums differs: (nearly) every document gets the same prediction
        assert sum(x["pred"] == y["pred"] for x, y in zip(rows, ref_rows)) >= 28
        for k in ("accuracy", "macro_f1"):
            assert b["metrics"][k] == pytest.approx(a["metrics"][k], abs=1 / 30 + 1e-9), (k, a["metrics"], b["metrics"])
        assert b["measurements"]["best_val_macro_f1"] == pytest.approx(a["measurements"]["best_val_macro_f1"],
                                                                       abs=1 / 24 + 1e-9)
        assert b["measurements"]["epochs_run"] == a["measurements"]["epochs_run"]


@pytest.mark.parametrize("n", [1, 2, 6, 7])
def test_local_share_weights_make_the_batch_mean(n):
    """The DDP average of the per-process weighted means is the whole batch's mean, for every
    split, including processes left with nothing (weight 0)."""
    torch.manual_seed(n)
    losses = torch.rand(n)
    batch = list(range(n))
    for size in (1, 2, 3, 4):
        shares = [local_share(batch, r, size) for r in range(size)]
        got = sum(losses[m].mean() * w for m, w in shares) / size
        assert got == pytest.approx(losses.mean().item(), rel=1e-6)
        assert sorted(i for m, w in shares if w > 0 for i in m) == batch


@pytest.mark.parametrize("n,size", [(7, 2), (1, 2), (5, 3), (6, 3)])
def test_strided_share_covers_each_item_once_with_equal_counts(n, size):
    parts = [strided_share(n, r, size) for r in range(size)]
    assert len({len(todo) for todo, _ in parts}) == 1  # every process runs as many items
    tags = [t for _, ts in parts for t in ts if t >= 0]
    assert sorted(tags) == list(range(n))
