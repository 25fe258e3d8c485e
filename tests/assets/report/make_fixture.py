"""Write the report fixture: results-shaped runs.jsonl + sidecars for a tiny clf sweep
(and a silver QA-like task with per-example F1), deterministic, with planted effects:

* ``sliding`` fixes most of head's mistakes on documents longer than the budget -> a
  significant gain over ``head`` at every budget;
* ``tail`` is head with half its wrong labels swapped for other wrong labels -> same
  accuracy, nearly the same macro-F1: not significantly different (no ▲ / ▼);
* one ``hierarchical`` run ran out of memory -> listed as not finished, not tabled.

Run from the repository root:
    python tests/assets/report/make_fixture.py            # rewrite the fixture
    python tests/assets/report/make_fixture.py --golden   # ... and the golden markdown
Review the golden diff before committing it: the golden test exists to catch changes.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from ctxbench.tasks.cache import content_hash  # noqa: E402  (after the sys.path line above)

LABELS = ["autos", "hockey", "space", "politics"]
BUCKETS = ("<=b", "b-2b", "2b-4b", ">4b")
N_TEST = 80
STRATEGIES = {
    "head": {"name": "head", "params": {}},
    "tail": {"name": "tail", "params": {}},
    "sliding[max_windows=4,pool=mean]": {"name": "sliding", "params": {"max_windows": 4, "pool": "mean"}},
}
BUDGETS = (32, 64)
SEEDS = (0, 1)


def bucket(n: int, b: int) -> str:
    return BUCKETS[0] if n <= b else BUCKETS[1] if n <= 2 * b else BUCKETS[2] if n <= 4 * b else BUCKETS[3]


def clf_predictions(strategy: str, budget: int, seed: int, lengths: list[int], gold: list[int]) -> list[dict]:
    rng = random.Random(f"{budget}-{seed}")  # head's draws; the others perturb them
    rows = []
    for i, (n, y) in enumerate(zip(lengths, gold)):
        p_right = 0.85 if n <= budget else 0.45
        right = rng.random() < p_right
        wrong = (y + 1 + rng.randrange(len(LABELS) - 1)) % len(LABELS)
        u = random.Random(f"{strategy}-{budget}-{seed}-{i}").random()
        if strategy.startswith("sliding") and not right and n > budget and u < 0.8:
            right = True
        if strategy == "tail" and not right and u < 0.5:  # another wrong label: same accuracy, near-same F1
            wrong = (wrong + 1) % len(LABELS) if (wrong + 1) % len(LABELS) != y else (wrong + 2) % len(LABELS)
        pred = y if right else wrong
        rows.append({"i": i, "label": LABELS[y], "pred": LABELS[pred], "correct": pred == y, "n_tokens": n,
                     "bucket": bucket(n, budget), "spans": [[[0, min(n, budget)]]]})
    return rows


def clf_metrics(rows: list[dict]) -> dict:
    y = [r["label"] for r in rows]
    p = [r["pred"] for r in rows]
    m = {"accuracy": float(accuracy_score(y, p)), "macro_f1": float(f1_score(y, p, average="macro", zero_division=0))}
    for b in BUCKETS:
        idx = [k for k, r in enumerate(rows) if r["bucket"] == b]
        m[f"bucket[{b}].n"] = len(idx)
        if idx:
            m[f"bucket[{b}].accuracy"] = float(accuracy_score([y[k] for k in idx], [p[k] for k in idx]))
            m[f"bucket[{b}].macro_f1"] = float(f1_score([y[k] for k in idx], [p[k] for k in idx], average="macro",
                                                        zero_division=0))
    return m


def measurements(strategy: str, budget: int, seed: int, lengths: list[int]) -> dict:
    windows = 4 if strategy.startswith("sliding") else 1
    tokens = sum(min(n, budget * windows) + 2 for n in lengths)
    head_tokens = sum(min(n, budget) + 2 for n in lengths)
    secs = tokens / 5000.0 * (1 + 0.01 * seed)
    return {"docs": len(lengths), "docs_per_s": len(lengths) / secs, "tokens_per_s": tokens / secs,
            "real_tokens": tokens, "padded_tokens": tokens + 40, "compute_multiplier": tokens / head_tokens,
            "coverage": min(1.0, windows * budget / 150), "latency_p50_ms": 1000 * secs / len(lengths),
            "latency_p95_ms": 1500 * secs / len(lengths), "peak_memory_mb": 500 + budget * windows / 8 + seed,
            "memory_kind": "cpu_peak_rss_process", "inference_seconds": secs}


def record(task: str, strategy: str, budget: int, seed: int, main: str, label: str, metrics: dict, meas: dict,
           rows: list[dict], out: Path, status: str = "ok") -> dict:
    spec = {"task": task, "dataset": "toy", "model": "tiny", "mode": "probe", "seed": seed, "budget": budget,
            "data_seed": 0, "limits": {"test": N_TEST}, "strategy": {"label": strategy, **STRAT.get(strategy, {})},
            "task_version": "1"}
    rid = content_hash(spec, n=64)
    rec = {"schema_version": 1, "run_id": rid, "task": task, "task_version": "1", "main_metric": main,
           "higher_is_better": True, "data_label": label, "spec": spec, "status": status,
           "created_at": "2026-01-01T00:00:00+00:00"}
    if status != "ok":
        return {**rec, "error": "OutOfMemoryError: CUDA out of memory (planted)"}
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    rel = f"predictions/{rid[:16]}.jsonl"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_text(text)
    return {**rec, "budget": budget, "metrics": metrics, "measurements": meas, "info": {"budget": budget},
            "predictions_file": rel, "predictions_sha": content_hash(text.encode())}


STRAT = {**STRATEGIES, "hierarchical[max_chunks=4,pool=attention]":
         {"name": "hierarchical", "params": {"max_chunks": 4, "pool": "attention"}}}


def write_clf(out: Path) -> None:
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(8, 32), rng.randint(33, 64), rng.randint(65, 128), rng.randint(129, 400)])
               for _ in range(N_TEST)]
    gold = [i % len(LABELS) for i in range(N_TEST)]
    lines = []
    for budget in BUDGETS:
        for strategy in STRATEGIES:
            for seed in SEEDS:
                rows = clf_predictions(strategy, budget, seed, lengths, gold)
                lines.append(record("clf", strategy, budget, seed, "macro_f1", "gold", clf_metrics(rows),
                                    measurements(strategy, budget, seed, lengths), rows, out))
    lines.append(record("clf", "hierarchical[max_chunks=4,pool=attention]", 64, 0, "macro_f1", "gold", {}, {}, [],
                        out, status="oom"))
    (out / "runs.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))


def write_qa(out: Path) -> None:
    """A task the tables know nothing about: per-example f1/exact_match fields, silver labels."""
    rng = random.Random(1)
    lengths = [rng.randint(20, 300) for _ in range(40)]
    lines = []
    for strategy in ("head", "sliding[max_windows=4,pool=mean]"):
        rows = []
        for i, n in enumerate(lengths):
            r = random.Random(f"qa-{strategy}-{i}").random()
            f1 = round(min(1.0, r + (0.3 if strategy != "head" and n > 64 else 0.0)), 4)
            rows.append({"i": i, "f1": f1, "exact_match": float(f1 == 1.0), "n_tokens": n, "bucket": bucket(n, 64)})
        m = {"f1": sum(r["f1"] for r in rows) / len(rows),
             "exact_match": sum(r["exact_match"] for r in rows) / len(rows)}
        lines.append(record("qa", strategy, 64, 0, "f1", "silver", m, measurements(strategy, 64, 0, lengths), rows,
                            out))
    (out / "runs.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))


def golden_markdown() -> str:
    from ctxbench.bench.results import read_jsonl
    from ctxbench.bench.report.tables import leaderboard

    return leaderboard(read_jsonl(HERE / "clf" / "runs.jsonl"), root=HERE / "clf").markdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", action="store_true", help="also rewrite leaderboard.golden.md")
    args = ap.parse_args()
    for task, write in (("clf", write_clf), ("qa", write_qa)):
        out = HERE / task
        for old in sorted((out / "predictions").glob("*.jsonl")) if (out / "predictions").exists() else []:
            old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        write(out)
    if args.golden:
        (HERE / "leaderboard.golden.md").write_text(golden_markdown())
    print(f"wrote {HERE}")


if __name__ == "__main__":
    main()
