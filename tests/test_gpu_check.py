"""The prepared GPU check (bench/gpu): what it runs, on which device, from the bundle's files; the bundle's
64 MiB limit. The whole check runs on CPU with `make gpu-check GPU_CHECK_DEVICE=cpu ARGS=--quick` (about
5 minutes on 2 cores: too long for this suite)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ctxbench.bench.gpu import bundle, check


def test_every_step_runs_on_the_device_from_the_bundle(tmp_path):
    cmds = check.commands(tmp_path / "b", tmp_path / "out", "cuda", quick=False)
    assert list(cmds) == [s for s in check.STEPS if s != "model"]
    for step, cmd in cmds.items():
        text = " ".join(cmd)
        assert "cuda" in text, step
        assert "minilm" in text or step == "qa_parity", step  # the restored float32 copy, not the packaged one
    assert "precision=bfloat16" in cmds["finetune_bf16"] and "mode=finetune" in cmds["finetune_bf16"]
    assert "--update-baseline" in cmds["perf_baseline"] and cmds["perf_aa"][3] == "check"
    assert str(tmp_path / "b" / "data" / "ner") in cmds["ner_parity"]


def test_the_qa_config_points_at_the_bundle(tmp_path):
    path = check.qa_config(tmp_path / "b", "/m", "cuda", False, tmp_path / "qa.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["dataset"].endswith("data/qa/dev.json") and data["qa"]["train_source"][0].endswith("train.json")
    assert data["model"] == "/m" and data["device"] == "cuda" and data["precision"] == "bfloat16"


def test_the_bundle_refuses_to_outgrow_what_can_travel(tmp_path):
    (tmp_path / "minilm").mkdir()
    (tmp_path / "minilm" / "w.bin").write_bytes(b"\0" * 1024)
    data = bundle.manifest(tmp_path)
    assert data["files"] == {"minilm/w.bin": 1024} and json.loads((tmp_path / "manifest.json").read_text())
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(int(65 * 2**20))
    with pytest.raises(SystemExit, match="64 MiB"):
        bundle.manifest(tmp_path)


def test_the_shell_entry_installs_only_from_the_bundle():
    text = (Path(check.__file__).parent / "check.sh").read_text()
    assert "--no-index" in text and "--system-site-packages" in text and "ctxbench.bench.gpu.check" in text


def test_the_int8_copy_restores_every_weight_within_a_row_step():
    import torch

    torch.manual_seed(0)
    state = {"w": torch.randn(8, 16), "b": torch.randn(16), "e": torch.randn(3, 4, 5)}
    back = bundle.dequantise(bundle.quantise(state))
    assert set(back) == set(state)
    for k in ("w", "e"):
        step = state[k].abs().amax(dim=tuple(range(1, state[k].ndim)), keepdim=True) / 127
        assert ((back[k] - state[k]).abs() <= step / 2 + 1e-3 * step + 1e-6).all()
    assert torch.allclose(back["b"], state["b"], atol=1e-2)
