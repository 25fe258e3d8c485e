"""Build ``gpu_bundle/``: everything the GPU check needs that the lent GPU machine lacks, within 64 MiB.

That machine has Python 3.12 with its own torch, transformers, peft, accelerate, pandas, pytest-benchmark
and tabulate, but no ``datasets``, ``seqeval``, ``pysbd``, no packaged model or data, and nothing can be
fetched there; at most 64 MiB travel with the working tree. So the bundle holds:

- ``minilm/``: all-MiniLM-L6-v2 as int8 matrices with a float16 scale per row (23 MB: the 88 MB package
  cannot travel, and a 45 MB float16 copy does not fit beside the committed results within the 64 MiB that a
  call carries) and its tokenizer; the check restores float32 weights there before anything trains;
- ``wheels/``: datasets, dill, multiprocess, pysbd and seqeval (seqeval ships only an sdist: built here),
  for Python 3.12, installed there with ``pip --no-index``;
- ``data/clf/``: a fixed 20 Newsgroups sample (train / val / test CSV, orange3's copy);
- ``data/ner/``: NewsArticles with spaCy silver tags (train / validation / test JSON lines: tokens, ner_tags),
  the long documents the NER parity benchmark needs (spaCy cannot run there);
- ``data/qa/``: SQuAD v1.1 dev articles (evaluation) and SQuAD v1.1 train articles (training);
- ``manifest.json``: every file and its size, and the total.

``python -m ctxbench.bench.gpu.bundle [--out gpu_bundle] [--quick]`` (``make gpu-bundle``); ``--quick``
writes a small bundle for the CPU test of the check.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

LIMIT_MB = 64.0
WHEELS = ("datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "pysbd==0.3.4")
SDIST_WHEELS = ("seqeval==1.2.2",)
SIZES = {"full": {"clf": (600, 150, 400), "ner": 220, "qa_dev": 6, "qa_train": 12},
         "quick": {"clf": (60, 20, 40), "ner": 40, "qa_dev": 1, "qa_train": 2}}


def quantise(state: dict) -> dict:
    """Matrices as int8 with one float16 scale per row (absmax), everything else float16: half the size of a
    float16 copy. The check restores float32 weights within 1/254 of each row's largest entry: enough for
    throughput, memory and like-for-like parity (both sides of every comparison load the same weights)."""
    import torch

    out = {}
    for name, w in state.items():
        w = w.detach().float()
        if w.ndim >= 2:
            scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp_min(1e-12)
            out[f"{name}.q"] = torch.round(w / scale * 127).to(torch.int8).contiguous()
            out[f"{name}.s"] = scale.half().contiguous()
        else:
            out[name] = w.half().contiguous()
    return out


def dequantise(packed: dict) -> dict:
    import torch

    out = {}
    for name, t in packed.items():
        if name.endswith(".q"):
            base = name[:-2]
            out[base] = t.float() * packed[f"{base}.s"].float() / 127
        elif not name.endswith(".s"):
            out[name] = t.float()
    return {k: v.to(torch.float32) for k, v in out.items()}


def model(out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    from ctxbench.tasks.model.packaged import minilm_path

    src = minilm_path()
    m = AutoModel.from_pretrained(src, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    m.config.save_pretrained(out)
    save_file(quantise(m.state_dict()), str(out / "weights_int8.safetensors"))
    AutoTokenizer.from_pretrained(src).save_pretrained(out)


def wheels(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "py", "-d", str(out), *WHEELS], check=True)
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), *SDIST_WHEELS], check=True)


def clf_data(out: Path, sizes: tuple[int, int, int]) -> None:
    from ctxbench.tasks.data.sources import load_20ng, sample

    dd = load_20ng()
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for split, n in zip(("train", "val", "test"), sizes):
        ds = sample(dd[split], n, 0)
        if split == "train":
            seen = set(ds["label"])
        else:  # a small train sample may miss a group: its val / test documents go too
            ds = ds.filter(lambda b, keep=frozenset(seen): [x in keep for x in b["label"]], batched=True)
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(zip(ds["text"], ds["label"]))


def ner_data(out: Path, n: int) -> None:
    from ctxbench.tasks.data.ner_data import label_silver, news_articles, split_docs

    ids, texts = news_articles()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))[: n * 3]  # long articles, then a fixed pick
    pick = sorted(order)[::3][:n]
    docs = label_silver([texts[i] for i in pick], [ids[i] for i in pick])
    out.mkdir(parents=True, exist_ok=True)
    for name, part in zip(("train", "validation", "test"), split_docs(docs, val=0.1, test=0.25)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for d in part:
                f.write(json.dumps({"id": d.id, "tokens": d.words, "ner_tags": d.tags}, ensure_ascii=False) + "\n")


def qa_data(out: Path, n_dev: int, n_train: int) -> None:
    from ctxbench.tasks.data.qa_data import squad_file

    out.mkdir(parents=True, exist_ok=True)
    for name, src, n in (("dev.json", "squad_dev", n_dev), ("train.json", "squad_train", n_train)):
        raw = json.loads(squad_file(src).read_text(encoding="utf-8"))
        (out / name).write_text(json.dumps({"version": raw.get("version", "1.1"), "data": raw["data"][:n]}))


def manifest(root: Path) -> dict:
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    total = sum(files.values()) / 2**20
    data = {"files": files, "total_mb": round(total, 2), "limit_mb": LIMIT_MB}
    (root / "manifest.json").write_text(json.dumps(data, indent=1))
    if total > LIMIT_MB:
        raise SystemExit(f"gpu bundle: {total:.1f} MB > the {LIMIT_MB:.0f} MiB that can travel")
    return data


def build(out: Path, quick: bool = False) -> dict:
    size = SIZES["quick" if quick else "full"]
    out.mkdir(parents=True, exist_ok=True)
    model(out / "minilm")
    if not quick:
        wheels(out / "wheels")
    clf_data(out / "data" / "clf", size["clf"])
    ner_data(out / "data" / "ner", size["ner"])
    qa_data(out / "data" / "qa", size["qa_dev"], size["qa_train"])
    return manifest(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctxbench.bench.gpu.bundle", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_bundle")
    ap.add_argument("--quick", action="store_true", help="a small bundle (no wheels) for the CPU test")
    args = ap.parse_args(argv)
    data = build(Path(args.out), args.quick)
    groups: dict[str, int] = {}
    for f, size in data["files"].items():
        top = "/".join(Path(f).parts[:2]) if Path(f).parts[0] == "data" else Path(f).parts[0]
        groups[top] = groups.get(top, 0) + size
    for g, size in sorted(groups.items()):
        print(f"{g}: {size / 2**20:.2f} MB")
    print(f"gpu bundle: {data['total_mb']:.1f} MB of {LIMIT_MB:.0f} MiB in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
