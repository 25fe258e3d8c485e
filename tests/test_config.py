from __future__ import annotations

import pytest

from ctxbench.bench.config import load_sweep, parse_strategy
from ctxbench.strategies import ConfigError


def test_default_sweep_loads_and_expands():
    sweep = load_sweep("clf")
    cells = sweep.cells()
    assert len(cells) == len(sweep.strategies) * len(sweep.budgets) * len(sweep.seeds)
    assert {c.strategy.name for c in cells} == {"head", "tail", "head_tail", "sliding", "hierarchical"}
    assert len(sweep.budgets) >= 3 and len(sweep.seeds) >= 3


def test_profile_and_overrides():
    sweep = load_sweep("clf", ["budgets=[32,64]", "limits.train=50", "train.lr=0.1", "seeds=[7]"], "smoke")
    assert sweep.budgets == (32, 64) and sweep.limits.train == 50 and sweep.train.lr == 0.1 and sweep.seeds == (7,)
    assert sweep.limits.test == 100  # from the smoke profile


@pytest.mark.parametrize("override,match", [
    ("budgts=[1]", "Did you mean 'budgets'"),
    ("limits.trian=5", "Did you mean 'train'"),
    ("train.epochs=many", "expected an integer"),
    ("budgets=[0]", "budget must be an integer >= 1"),
    ("budgets=[-4]", "budget must be an integer >= 1"),
    ("strategies=[]", "names no strategies"),
    ("strategies=[slidng]", "Did you mean 'sliding'"),
    ("strategies=[{name: sliding, step: 0}]", "step must be an integer >= 1"),
    ("strategies=[{name: head_tail, head_share: 2}]", "head_share"),
    ("mode=train", "mode must be one of"),
    ("seeds=[]", "seeds is empty"),
    ("empty_docs=drop", "empty_docs"),
    ("pooler", "not key=value"),
    ("precision=fp16", "precision must be one of"),
    ("ner.stitch=vote", "ner.stitch must be one of"),
    ("ner.stich=mean", "Did you mean 'stitch'"),
    ("ner.empty_words=skip", "ner.empty_words must be"),
    ("strategies=[{name: sliding, last: end}]", "last must be one of"),
])
def test_bad_config_is_a_clear_error(override, match):
    with pytest.raises(ConfigError, match=match):  # a task's settings are checked by its own sweep
        load_sweep("ner" if override.startswith("ner.") else "clf", [override])


def test_unknown_profile_and_sweep():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_sweep("clf", [], "huge")
    with pytest.raises(ConfigError, match="built-in sweeps"):
        load_sweep("nosuchtask")


def test_strategy_labels_carry_parameters():
    assert parse_strategy("head").label == "head"
    assert parse_strategy({"name": "sliding", "pool": "max"}).label == "sliding[pool=max]"


@pytest.mark.parametrize("device,mode", [("cpu", "probe"), ("cuda", "finetune"), ("cuda:1", "finetune")])
def test_auto_mode_follows_the_device_and_is_resolved_in_the_spec(device, mode):
    sweep = load_sweep("clf", ["mode=auto", f"device={device}"])
    assert sweep.mode == mode and {c.mode for c in sweep.cells()} == {mode}
    assert load_sweep("clf", ["mode=finetune", f"device={device}"]).mode == "finetune"  # explicit wins


def test_overrides_may_follow_the_flags(monkeypatch):
    import ctxbench.bench.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_bench", lambda args: seen.update(overrides=args.overrides, profile=args.profile) or 0)
    assert cli.main(["bench", "clf", "seeds=[0]", "--profile", "smoke", "--isolate", "train.lr=0.1"]) == 0
    assert seen == {"overrides": ["seeds=[0]", "train.lr=0.1"], "profile": "smoke"}
    with pytest.raises(SystemExit):
        cli.main(["bench", "clf", "--profile", "smoke", "--no-such-flag"])


def test_a_spec_holds_only_its_own_tasks_settings_and_later_fields_keep_run_ids():
    """A run spec carries its own task's settings under the task's name and no other task's; a
    settings key of another task is an unknown key. ``precision`` was added after results were
    recorded: at its default it is left out of the spec; set, it changes the run_id. The QA
    sweep's spec kept its shape, so its cells still hash to the committed run_ids."""
    from pathlib import Path

    from ctxbench.bench.results import read_jsonl, run_id
    from ctxbench.tasks.qa import ExtractiveQA

    clf, ner, qa = (load_sweep(t).cells()[0].to_dict() for t in ("clf", "ner", "qa"))
    assert "qa" not in clf and "ner" not in clf and "settings" not in clf
    assert "ner" in ner and "qa" not in ner and "qa" in qa and "ner" not in qa
    for task, key in (("clf", "qa.fold=auto"), ("qa", "ner.stitch=mean"), ("ner", "qa.fold=auto")):
        with pytest.raises(ConfigError, match="unknown key"):
            load_sweep(task, [key])
    d = load_sweep("ner").cells()[0].to_dict()
    bf16 = load_sweep("ner", ["precision=bfloat16"]).cells()[0].to_dict()
    rule = load_sweep("ner", ["ner.stitch=longest_entity"]).cells()[0].to_dict()
    assert "precision" not in d and bf16["precision"] == "bfloat16" and rule["ner"]["stitch"] == "longest_entity"
    assert len({run_id(d), run_id(bf16), run_id(rule)}) == 3
    committed = {r["run_id"] for r in read_jsonl(Path(__file__).parent.parent / "results" / "qa" / "runs.jsonl")}
    now = {run_id({**c.to_dict(), "task_version": ExtractiveQA.version}) for c in load_sweep("qa").cells()}
    assert now <= committed


def test_native_precision_resolves_per_machine_to_what_runs_record(monkeypatch):
    """``precision: native`` (the clf sweep's) is resolved when the sweep is loaded: ``bfloat16`` on a CPU
    with native bf16 (the run_ids of an explicit precision=bfloat16), ``auto`` elsewhere (the run_ids the
    float32 sweep always had, committed); the tables count both as the default sweep."""
    from pathlib import Path

    from ctxbench.bench.report.tables import default_sweep_specs
    from ctxbench.bench.results import read_jsonl, run_id
    from ctxbench.tasks.clf import Classification
    from ctxbench.tasks.model import encoder

    def ids(sweep):
        return {run_id({**c.to_dict(), "task_version": Classification.version}) for c in sweep.cells()}

    committed = {r["run_id"] for r in read_jsonl(Path(__file__).parent.parent / "results" / "clf" / "runs.jsonl")}
    monkeypatch.setenv("CTXBENCH_NATIVE_BF16", "0")
    plain = load_sweep("clf")
    assert plain.precision == "auto" and ids(plain) <= committed
    assert ids(plain) == ids(load_sweep("clf", ["precision=auto"]))
    monkeypatch.setenv("CTXBENCH_NATIVE_BF16", "1")
    native = load_sweep("clf")
    assert native.precision == "bfloat16" and ids(native) == ids(load_sweep("clf", ["precision=bfloat16"]))
    assert not ids(native) & ids(plain)
    assert load_sweep("clf", ["device=cuda"]).precision == "auto"  # CUDA's auto is bf16 autocast already
    assert load_sweep("clf", ["precision=float32"]).precision == "float32"  # an explicit choice is kept
    both = default_sweep_specs("clf")
    monkeypatch.setenv("CTXBENCH_NATIVE_BF16", "0")
    assert both == default_sweep_specs("clf")  # the same on every machine
    assert {c for c in both if '"precision":"bfloat16"' in c} and {c for c in both if '"precision"' not in c}
    monkeypatch.setenv("CTXBENCH_NATIVE_BF16", "yes")
    with pytest.raises(ConfigError, match="CTXBENCH_NATIVE_BF16 must be 0 or 1"):
        load_sweep("clf")
    monkeypatch.delenv("CTXBENCH_NATIVE_BF16")
    import torch

    assert encoder.native_bf16(torch.device("cpu")) == (torch.cpu._is_avx512_bf16_supported()
                                                        or torch.cpu._is_amx_tile_supported())
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_sweep("clf", ["precision=fp16"])


def test_precision_names_agree_and_resolve_per_device():
    import torch

    from ctxbench.tasks.model import encoder as model

    assert set(model.PRECISIONS) == {"auto", "float32", "bfloat16"}
    for p in model.PRECISIONS:  # the config's check (no torch import there) accepts exactly these
        load_sweep("clf", [f"precision={p}"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert model.compute_dtype(cpu) == torch.float32 and model.compute_dtype(cuda) == torch.bfloat16
    assert model.compute_dtype(cpu, "bfloat16") == torch.bfloat16
    assert model.compute_dtype(cuda, "float32") == torch.float32
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    for precision, dtype in (("auto", torch.float32), ("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        with model.autocast(cpu, precision):  # the region a task's inference forward runs in
            assert torch.nn.functional.linear(x, w).dtype == dtype, precision
    with pytest.raises(ConfigError, match="precision must be one of"):
        model.compute_dtype(cpu, "fp16")
    from ctxbench.tasks.ner import STITCH_CHOICES

    from ctxbench.tasks.ner import NERSettings

    assert NERSettings().stitch == "auto"
    for choice in ("auto", *STITCH_CHOICES):  # the settings' list accepts exactly these
        assert load_sweep("ner", [f"ner.stitch={choice}"]).settings.stitch == choice


def test_list_names_every_built_in_source_of_every_task(capsys):
    from ctxbench.bench.cli import main
    from ctxbench.tasks.data.ner_data import SILVER_SOURCES
    from ctxbench.tasks.data.qa_data import BUILTIN_FILES
    from ctxbench.tasks.data.sources import SOURCES

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*SOURCES, "wnut16", *SILVER_SOURCES, *BUILTIN_FILES, "clf", "ner", "qa", "sliding", "minilm"]:
        assert name in out, name
