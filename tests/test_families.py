"""Six model families (tiny random models from config, tests/families.py) through clf, NER and QA:
usable positions from one function, LoRA on each family's default targets."""
from __future__ import annotations

import json

import pytest
import torch

from tests.families import FAMILIES, POSITIONS, build

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.strategies import ConfigError
from ctxbench.tasks import Context
from ctxbench.tasks.model.encoder import load_encoder
from ctxbench.tasks.model.families import default_lora_targets, usable_positions


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("families")
    return {f: build(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def squad(tmp_path_factory):
    from tests.test_qa import squad_json

    root = tmp_path_factory.mktemp("squad")
    return squad_json(root / "test.json", 2, 1), squad_json(root / "train.json", 2, 2)


def run(sweep, root):
    return run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)


def test_usable_positions_know_the_offset_families(models):
    from transformers import AutoConfig

    for fam in FAMILIES:
        enc = load_encoder(models[fam], torch.device("cpu"))
        assert enc.max_positions == POSITIONS, fam  # RoBERTa: 98 rows, 2 before the first real token
        assert usable_positions(AutoConfig.from_pretrained(models[fam])) == POSITIONS
    rob = load_encoder(models["roberta"], torch.device("cpu"))
    assert rob.tokenizer.model_max_length > 10**6  # nothing but the model's table says 96
    ids = torch.arange(5, 5 + POSITIONS).unsqueeze(0) % len(rob.tokenizer)
    rob.model(input_ids=ids)  # the whole usable window runs ...
    with pytest.raises((IndexError, RuntimeError), match="out of"):
        rob.model(input_ids=torch.cat([ids, ids[:, :1]], 1))  # ... one more is the "index out of bounds"


def test_a_budget_past_the_usable_positions_is_refused_before_the_forward(models, tiny_data, tmp_path, cache_env):
    sweep = load_sweep("clf", [f"model={models['roberta']}", f"dataset={tiny_data}", "strategies=[head]",
                               f"budgets=[{POSITIONS - 1}]", "seeds=[0]", "train.epochs=1"])
    summary = run(sweep, tmp_path)
    assert not summary.ok and "exceeds the model's room of 94 tokens" in summary.failed[0][2]


@pytest.mark.parametrize("family", FAMILIES)
def test_default_lora_targets_exist_in_every_family(models, family):
    enc = load_encoder(models[family], torch.device("cpu"))
    names = {n.rsplit(".", 1)[-1] for n, _ in enc.model.named_modules()}
    assert set(default_lora_targets(enc.model.config)) <= names


def test_an_unknown_family_without_targets_is_refused_by_name():
    class Config:
        model_type = "no-such-family"

    with pytest.raises(ConfigError, match="set train.lora_target_modules"):
        default_lora_targets(Config())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_runs_clf_ner_and_qa(models, family, tiny_data, squad, tmp_path, cache_env, monkeypatch):
    model = models[family]
    common = ["seeds=[0]", "limits.train=null", "limits.val=null", "limits.test=null", "batch_size=8"]
    clf = load_sweep("clf", [f"model={model}", f"dataset={tiny_data}", "budgets=[24]", "train.epochs=2",
                             "strategies=[head, {name: sliding, pool: mean}]", *common])
    assert run(clf, tmp_path / "clf").ok
    lora = load_sweep("clf", [f"model={model}", f"dataset={tiny_data}", "budgets=[24]", "mode=finetune",
                              "train.finetune=lora", "train.epochs=1", "train.batch_size=16", "strategies=[head]",
                              *common])
    summary = run(lora, tmp_path / "lora")
    assert summary.ok, summary.failed
    (r,) = read_jsonl(tmp_path / "lora" / "clf" / "runs.jsonl")
    assert 0 < r["measurements"]["trainable_params"] < r["measurements"]["total_params"] / 5

    from tests.test_ner import LABELS, inline_splits

    from ctxbench.tasks import ner

    splits = inline_splits()
    real = ner.load_source
    monkeypatch.setattr(ner, "load_source", lambda name: ({k: list(v) for k, v in splits.items()}, list(LABELS))
                        if name == "inline" else real(name))
    ner_sweep = load_sweep("ner", [f"model={model}", "dataset=inline", "budgets=[16]", "train.epochs=1",
                                   "train.finetune=lora", "train.batch_size=16",
                                   "strategies=[head, {name: sliding, pool: max}]", *common])
    summary = run(ner_sweep, tmp_path / "ner")
    assert summary.ok, summary.failed
    for r in read_jsonl(tmp_path / "ner" / "ner" / "runs.jsonl"):
        assert 0.0 <= r["metrics"]["f1"] <= 1.0

    test, train = squad
    qa = load_sweep("qa", [f"model={model}", f"dataset={test}", f"qa.train_source=[{train}]", "budgets=[24]",
                           "train.epochs=1", "train.lr=0.001", "train.finetune=lora", "strategies=[head, sliding]",
                           "qa.train_seq_len=64", "qa.train_overlap=16",
                           *common])
    summary = run(qa, tmp_path / "qa")
    assert summary.ok, summary.failed
    runs = read_jsonl(tmp_path / "qa" / "qa" / "runs.jsonl")
    assert {r["spec"]["strategy"]["label"] for r in runs} == {"head", "sliding"}
    assert all(0 <= r["metrics"]["f1"] <= 100 for r in runs), json.dumps([r["metrics"] for r in runs])[:300]
