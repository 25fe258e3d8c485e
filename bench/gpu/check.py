"""The prepared GPU check: one script, at most 10 minutes on one GPU (``make gpu-check`` runs
``bench/gpu/check.sh``, which installs the bundle's wheels into a venv over the machine's own torch and
transformers, then this module).

Steps, each timed and recorded even when one fails (``<out>/SUMMARY.md``, ``summary.json``):

1. ``model``: the bundle's int8 MiniLM restored to float32 weights (``<out>/work/minilm``).
2. ``perf_baseline``: the throughput/memory suite on the GPU, seeding ``results/perf/<machine-id>/baseline.json``.
3. ``perf_aa``: the suite again and the gate against that baseline (an A/A run: it must pass).
4. ``finetune_bf16``: a fine-tune smoke grid (5 strategies x 2 budgets) under bf16 autocast, every cell's CUDA
   peak memory (reset, then max allocated) and measured cost in its record.
5. ``ner_parity``: ``bench.studies.ner_parity`` on the GPU (both taggers there), its 2x throughput bar.
6. ``qa_parity``: ``bench.studies.qa_parity`` on the GPU against the pipeline, its 2x throughput bar.

``python -m ctxbench.bench.gpu.check --bundle gpu_bundle --device cuda --out OUT``; ``--device cpu --quick``
runs the same steps small on a CPU (the test of this script).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STEPS = ("model", "perf_baseline", "perf_aa", "finetune_bf16", "ner_parity", "qa_parity")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}


def restore_model(bundle: Path, out: Path) -> Path:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ctxbench.bench.gpu.bundle import dequantise

    src = bundle / "minilm"
    model = AutoModel.from_config(AutoConfig.from_pretrained(src))
    missing, unexpected = model.load_state_dict(dequantise(load_file(str(src / "weights_int8.safetensors"))),
                                                strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"restored MiniLM: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def qa_config(bundle: Path, model: str, device: str, quick: bool, path: Path) -> Path:
    import yaml

    from ctxbench.bench.config import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "qa.yaml").read_text())
    data.pop("profiles", None)
    data.update(model=model, device=device, dataset=str(bundle / "data" / "qa" / "dev.json"), seeds=[0],
                budgets=[128, 384], precision="bfloat16" if device.startswith("cuda") else "auto")
    data["qa"]["train_source"] = [str(bundle / "data" / "qa" / "train.json")]
    data["limits"] = {"train": 60 if quick else 1200, "val": 0, "test": 12 if quick else 200}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def commands(bundle: Path, out: Path, device: str, quick: bool) -> dict[str, list[str]]:
    py, work, res = sys.executable, out / "work", out / "results"
    model = str(work / "minilm")
    perf = ["--perf-model", model] + (["--perf-rounds=2", "--perf-docs=300", "--perf-budgets=64"] if quick else [])
    grid = ["limits.train=null", "limits.val=null", "limits.test=null"]  # the bundle's sample, whole
    if quick:
        grid += ["strategies=[head, {name: sliding, max_windows: 4}]", "budgets=[32]", "train.epochs=1",
                 "cost_docs=4", "cost_repeats=1"]
    ner = ["--docs", "2", "--train-docs", "6", "--val-docs", "2", "--epochs", "1", "--repeats", "1",
           "--window", "256", "--overlap", "64", "--max-windows-train", "2"] if quick else []
    qa = ["--questions", "6", "--questions-k2", "0", "--passes", "1", "--skip-stride"] if quick else \
        ["--questions", "200", "--questions-k2", "60", "--skip-stride"]
    return {
        "perf_baseline": [py, "-m", "ctxbench.bench.perf.check", "run", "--root", str(res / "perf"), "--device",
                          device, "--update-baseline", "--", *perf],
        "perf_aa": [py, "-m", "ctxbench.bench.perf.check", "check", "--root", str(res / "perf"), "--device", device,
                    "--", *perf],
        "finetune_bf16": [py, "-m", "ctxbench.bench.cli", "--results", str(res), "bench", "clf", "--profile",
                          "smoke", "--quiet", "mode=finetune", "precision=bfloat16", f"model={model}",
                          f"dataset={bundle / 'data' / 'clf'}", f"device={device}", *grid],
        "ner_parity": [py, "-m", "ctxbench.bench.studies.ner_parity", "--device", device, "--model", model,
                       "--dataset", str(bundle / "data" / "ner"), "--out", str(res / "ner"), *ner],
        "qa_parity": [py, "-m", "ctxbench.bench.studies.qa_parity", "--config", str(work / "qa_gpu.yaml"),
                      "--device", device, "--results", str(res / "qa"), *qa],
    }


def _numbers(step: str, res: Path) -> dict[str, Any]:
    """A few headline numbers of a step, read from the files it wrote."""
    try:
        if step in ("ner_parity", "qa_parity"):
            data = json.loads((res / step.split("_")[0] / "parity.json").read_text())
            if "targets" not in data:
                from ctxbench.bench.studies.qa_parity import targets

                data["targets"] = targets(data)
            bars = data["targets"]
            return {"bars_met": f"{sum(t['pass'] for t in bars)} of {len(bars)}",
                    **{f"bar{i + 1}": f"{t['value']:.3g} ({'met' if t['pass'] else 'missed'}: {t['what']})"
                       for i, t in enumerate(bars)}}
        if step == "perf_aa":
            report = next((res / "perf").glob("*/report.md")).read_text()
            return {"verdict": next(line for line in report.splitlines() if line.startswith("**"))}
        if step == "finetune_bf16":
            runs = [json.loads(x) for x in (res / "clf" / "runs.jsonl").read_text().splitlines() if x.strip()]
            return {"cells_ok": sum(r["status"] == "ok" for r in runs), "cells": len(runs),
                    "peak_mb_max": max((r["measurements"].get("peak_memory_mb") or 0) for r in runs),
                    "memory_kind": runs[0]["measurements"].get("memory_kind") if runs else None}
    except (OSError, StopIteration, ValueError, KeyError) as e:
        return {"numbers": f"not read: {e}"}
    return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctxbench.bench.gpu.check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="gpu_bundle")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--quick", action="store_true", help="the same steps, small (the CPU test)")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--step-timeout", type=float, default=240.0, help="seconds per step")
    args = ap.parse_args(argv)
    bundle, out = Path(args.bundle).resolve(), Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **OFFLINE, "CTXBENCH_CACHE": str(work / "cache")}
    os.environ.update(OFFLINE)
    cmds = commands(bundle, out, args.device, args.quick)
    summary: dict[str, Any] = {"device": args.device, "quick": args.quick, "steps": {}}
    t_all = time.perf_counter()
    for step in args.steps.split(","):
        t0 = time.perf_counter()
        rec: dict[str, Any] = {}
        try:
            if step == "model":
                restore_model(bundle, work / "minilm")
                qa_config(bundle, str(work / "minilm"), args.device, args.quick, work / "qa_gpu.yaml")
                rc = 0
            else:
                p = subprocess.run(cmds[step], env=env, capture_output=True, text=True, timeout=args.step_timeout)
                rc = p.returncode
                if rc == 1 and step.endswith("_parity") and (out / "results" / step.split("_")[0] /
                                                               "parity.json").exists():
                    rc, rec["note"] = 0, "ran; exit 1 = a parity bar missed (see the bars)"
                (work / f"{step}.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
                if rc:
                    rec["tail"] = (p.stdout + p.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            rc, rec["tail"] = 124, f"timed out after {args.step_timeout:.0f} s"
        except Exception as e:  # noqa: BLE001 - a step's failure is recorded and the next step still runs
            rc, rec["tail"] = 1, f"{type(e).__name__}: {e}"
        rec.update(status="ok" if rc == 0 else f"failed ({rc})", seconds=round(time.perf_counter() - t0, 1),
                   **(_numbers(step, out / "results") if rc == 0 else {}))
        summary["steps"][step] = rec
        print(f"gpu-check {step}: {rec['status']} in {rec['seconds']} s", flush=True)
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# GPU check on {args.device}{' (quick)' if args.quick else ''}", "",
             "Generated by `python -m ctxbench.bench.gpu.check`; do not edit.", "",
             "| step | status | seconds | numbers |", "|---|---|---|---|"]
    for step, rec in summary["steps"].items():
        nums = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
                         if k not in ("status", "seconds", "tail"))
        lines.append(f"| {step} | {rec['status']} | {rec['seconds']} | {nums or '–'} |")
    lines += ["", f"Total {summary['seconds']} s. Logs: `work/<step>.log`; results: `results/`."]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["status"] == "ok" for r in summary["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
