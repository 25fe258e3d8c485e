from __future__ import annotations

import pytest

from bench.config import load_sweep, parse_strategy
from strategies import ConfigError


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
])
def test_bad_config_is_a_clear_error(override, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep("clf", [override])


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
    import bench.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_bench", lambda args: seen.update(overrides=args.overrides, profile=args.profile) or 0)
    assert cli.main(["bench", "clf", "seeds=[0]", "--profile", "smoke", "--isolate", "train.lr=0.1"]) == 0
    assert seen == {"overrides": ["seeds=[0]", "train.lr=0.1"], "profile": "smoke"}
    with pytest.raises(SystemExit):
        cli.main(["bench", "clf", "--profile", "smoke", "--no-such-flag"])
