"""A fourth task is one file: this one. It defines document regression (predict the share of one
topic's words in a long document from a frozen encoder's pooled windows, ridge head, MSE), registers
it, and runs it through the runner, the tables and the HTML report with no change outside this file.

The contract it implements (README, "Adding a task"): metadata (``version``, ``main_metric``,
``higher_is_better``), ``data_label(spec)`` and ``run(spec, ctx) -> CellResult`` built from the shared
model side: encoder loading, the budget, inputs, batched encoding, the cost fields. Per-example
predictions carry their example index ``i`` and a field named like the main metric, so the tables bootstrap it with no
registration."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.bench.report.html import build_report
from ctxbench.bench.report.tables import write_leaderboard
from ctxbench.bench.run.runner import run_sweep
from ctxbench.tasks import CellResult, Context, register_task
from ctxbench.tasks.base import cost_measures, covered
from ctxbench.tasks.model.encoder import build_input, encode, load_encoder, usable_budget

TOPIC, OTHER = ["alpha", "beta", "gamma"], ["delta", "echo", "fox", "golf", "hotel"]


@dataclass(frozen=True)
class RegressionSettings:
    ridge: float = 1.0  # the head's L2 penalty
    docs: int = 40  # documents per split (synthetic, seeded by data_seed)


def documents(n: int, seed: int) -> list[tuple[str, float]]:
    """Long documents whose target is the share of topic words; the topic words sit late in some."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        share, length = rng.random(), rng.randint(20, 200)
        words = [rng.choice(TOPIC) if rng.random() < share else rng.choice(OTHER) for _ in range(length)]
        out.append((" ".join(words), sum(w in TOPIC for w in words) / length))
    return out


@register_task("doc_regression")
class DocRegression:
    Settings = RegressionSettings
    version = "1"
    main_metric = "mse"
    higher_is_better = False

    def data_label(self, spec) -> str:
        return "synthetic"

    def run(self, spec, ctx: Context) -> CellResult:
        enc = ctx.get(("encoder", spec.model), lambda: load_encoder(spec.model, ctx.device))
        tok, strategy = enc.tokenizer, spec.strategy.build()
        budget = usable_budget(tok, enc.max_positions, spec.budget)
        feats, targets, cost = {}, {}, {}
        for split, offset in (("train", 0), ("test", 1)):
            docs = documents(spec.settings.docs, spec.data_seed * 2 + offset)
            ids = [tok(text, add_special_tokens=False)["input_ids"] for text, _ in docs]
            windows = [strategy.windows(len(x), budget) for x in ids]
            inputs = [build_input(tok, x, w) for x, ws in zip(ids, windows) for w in ws]
            out = encode(enc.model, inputs, tok.pad_token_id, ctx.device, batch_size=spec.batch_size,
                         precision=spec.precision)
            owner = np.repeat(np.arange(len(ids)), [len(ws) for ws in windows])  # window -> document
            vec = out.vectors.numpy()  # (windows, d)
            feats[split] = np.stack([vec[owner == d].mean(0) for d in range(len(ids))])  # (docs, d)
            targets[split] = np.array([y for _, y in docs])
            seconds = np.bincount(owner, weights=out.seconds, minlength=len(ids))
            lengths = [[len(build_input(tok, x, w)) for w in ws] for x, ws in zip(ids, windows)]
            cost[split] = cost_measures(lengths, [len(x) for x in ids], [min(len(x), budget) for x in ids],
                                        [covered(ws) for ws in windows], seconds, out.padded_tokens)
        x = np.c_[feats["train"], np.ones(len(feats["train"]))]  # ridge regression, closed form
        w = np.linalg.solve(x.T @ x + spec.settings.ridge * np.eye(x.shape[1]), x.T @ targets["train"])
        pred = np.c_[feats["test"], np.ones(len(feats["test"]))] @ w
        err = (pred - targets["test"]) ** 2
        rows = [{"i": i, "pred": float(p), "target": float(t), "mse": float(e)}
                for i, (p, t, e) in enumerate(zip(pred, targets["test"], err))]
        return CellResult({"mse": float(err.mean())}, cost["test"], rows, {"budget": budget})


def test_a_fourth_task_defined_in_one_file_runs_through_runner_tables_and_report(tiny_model, tmp_path, cache_env):
    sweep_yaml = tmp_path / "doc_regression.yaml"
    sweep_yaml.write_text(json.dumps({
        "task": "doc_regression", "dataset": "synthetic", "model": tiny_model, "mode": "probe",
        "strategies": ["head", "tail", {"name": "sliding", "max_windows": 4}], "budgets": [16, 48],
        "seeds": [0, 1], "batch_size": 16, "doc_regression": {"docs": 30}}))
    sweep = load_sweep(str(sweep_yaml))
    assert sweep.settings == RegressionSettings(docs=30)
    root = tmp_path / "results"
    summary = run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    assert summary.ok and summary.ran == 12
    runs = [json.loads(x) for x in (root / "doc_regression" / "runs.jsonl").read_text().splitlines()]
    assert {r["status"] for r in runs} == {"ok"} and len({r["run_id"] for r in runs}) == 12
    assert all(r["spec"]["doc_regression"] == {"ridge": 1.0, "docs": 30} for r in runs)
    assert all(0 <= r["metrics"]["mse"] < 1 for r in runs)
    assert all(r["measurements"]["compute_multiplier"] >= 1 - 1e-9 for r in runs
               if r["spec"]["strategy"]["name"] == "sliding")
    board = write_leaderboard(root / "doc_regression" / "runs.jsonl")
    text = (root / "doc_regression" / "leaderboard.md").read_text()
    assert "doc_regression" in text and "mse" in text and "sliding" in text
    assert len(board.failed) == 0
    index = build_report(root, n_boot=200)
    page = (root / "doc_regression" / "report.html").read_text()
    assert index.exists() and "doc_regression" in index.read_text() and "mse" in page
