"""Shared fixtures: a tiny random BERT built from config and tiny inline data."""
from __future__ import annotations

import csv
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `precision: native` (the clf sweep's) resolves as on a CPU without native bf16 on every machine, in this process
# and in the ones it starts, so a test's numbers do not depend on the host; test_config checks both branches
os.environ.setdefault("CTXBENCH_NATIVE_BF16", "0")

WORDS = {
    "space": "orbit rocket nasa launch shuttle moon satellite planet".split(),
    "sport": "hockey goal team season player coach league score".split(),
    "autos": "engine car wheel brake dealer sedan fuel gear".split(),
}
FILLER = "the a of and to in is that it for on with as was by this".split()


def make_doc(rng: random.Random, label: str, n_words: int, signal_at: str = "anywhere") -> str:
    """Filler words with the label's topic words planted at the start, the end or anywhere."""
    words = [rng.choice(FILLER) for _ in range(n_words)]
    topic = WORDS[label]
    k = max(2, n_words // 8)
    for _ in range(k):
        if signal_at == "end":
            pos = n_words - 1 - rng.randrange(min(n_words, 12))
        elif signal_at == "start":
            pos = rng.randrange(min(n_words, 12))
        else:
            pos = rng.randrange(n_words)
        words[pos] = rng.choice(topic)
    return " ".join(words)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer, hidden-32 random BERT with the packaged tokenizer, saved to a folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ctxbench.tasks.model.packaged import minilm_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = 128
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A local dataset folder (train/val/test CSV), 3 labels, documents of 10-150 words."""
    path = tmp_path_factory.mktemp("tiny-data")
    rng = random.Random(0)
    sizes = {"train": 60, "val": 24, "test": 30}
    for split, n in sizes.items():
        with open(path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for i in range(n):
                label = list(WORDS)[i % 3]
                w.writerow([make_doc(rng, label, rng.randint(10, 150)), label])
    return str(path)


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
