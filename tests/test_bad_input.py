"""Bad input, each with a clear message or an explicit counted policy: odd documents (a
single token, control characters, undecodable bytes, duplicates, a 10^6-token document),
bad labels, bad config, missing models and hub ids while offline."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from ctxbench.bench.cli import main as cli_main
from ctxbench.bench.config import load_sweep
from ctxbench.tasks.model.packaged import resolve_model
from ctxbench.bench.results import check_store, read_jsonl, runs_path
from ctxbench.bench.run.runner import run_sweep
from ctxbench.strategies import ConfigError
from ctxbench.tasks import Context

from tests.conftest import WORDS, make_doc

BASE = ["limits.train=null", "limits.val=null", "limits.test=null", "train.epochs=1", "train.patience=1",
        "seeds=[0]", "device=cpu"]
BIG = 10**6  # tokens in the big test document


def write_csv(path: Path, rows: list[tuple], header=("text", "label")) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def normal_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    return [(make_doc(rng, list(WORDS)[i % 3], rng.randint(8, 60)), list(WORDS)[i % 3]) for i in range(n)]


def run(model, data, root, *extra):
    sweep = load_sweep("clf", [f"model={model}", f"dataset={data}", *BASE, *extra])
    summary = run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)
    return summary, read_jsonl(runs_path(root, "clf"))


def test_odd_documents_are_kept_counted_and_a_million_token_document_streams_through(tiny_model, tmp_path,
                                                                                     cache_env):
    rng = random.Random(5)
    data = tmp_path / "data"
    data.mkdir()
    train = normal_rows(rng, 30)
    train += [
        (train[0][0], train[0][1]),  # the same text twice in train
        ("orbit", "space"),  # a single token
        ("hockey \x07 goal\x1b[0m team \x0b season", "sport"),  # control characters
        ("\x01\x02\x03", "autos"),  # only control characters: no token at all
        ("UNDECODABLE rocket launch", "space"),  # becomes invalid UTF-8 below
    ]
    ids = [f"d{i}" for i in range(len(train))]
    ids[-1] = ids[0]  # a duplicated id
    write_csv(data / "train.csv", [(t, lab, i) for (t, lab), i in zip(train, ids)], ("text", "label", "id"))
    raw = (data / "train.csv").read_bytes().replace(b"UNDECODABLE", b"caf\xe9 \xff\xfe")
    (data / "train.csv").write_bytes(raw)
    val = normal_rows(rng, 9)
    write_csv(data / "val.csv", [(t, lab, f"v{i}") for i, (t, lab) in enumerate(val)], ("text", "label", "id"))
    test = normal_rows(rng, 9) + [(train[1][0], train[1][1]), ("orbit. " * (BIG // 2), "space")]
    write_csv(data / "test.csv", [(t, lab, f"t{i}") for i, (t, lab) in enumerate(test)], ("text", "label", "id"))

    # capped: encoding all 7,937 chunks of the big document is linear but takes minutes on a shared CPU; the
    # uncapped window arithmetic on 10^6 tokens is checked in test_fuzz.py
    summary, runs = run(tiny_model, data, tmp_path / "r", "budgets=[126]", "strategies=[head, "
                        "{name: sliding, max_windows: 8}, {name: hierarchical, pool: mean, max_chunks: 16}]")
    assert summary.ok, summary.failed
    for r in runs:
        info = r["info"]
        assert info["replacement_char_docs_train"] == 1  # decoded with errors="replace", counted
        assert info["control_char_docs_train"] == 2 and info["single_token_docs_train"] == 1
        assert info["empty_docs_train"] == 1  # the control-character-only document tokenizes to nothing
        assert info["duplicate_docs_train"] == 1 and info["duplicate_ids_train"] == 1
        assert info["leaked_docs_test"] == 1 and info["leaked_docs_val"] == 0
        assert info["duplicate_ids_val"] == info["duplicate_ids_test"] == 0
    by = {r["spec"]["strategy"]["name"]: r for r in runs}
    big = {name: json.loads((tmp_path / "r" / "clf" / r["predictions_file"]).read_text().splitlines()[-1])
           for name, r in by.items()}
    assert all(b["n_tokens"] == BIG for b in big.values())
    assert big["head"]["spans"] == [[[0, 126]]]
    assert len(big["sliding"]["spans"]) == 8 and big["sliding"]["spans"][-1] == [[BIG - 126, BIG]]
    chunks = big["hierarchical"]["spans"]
    assert len(chunks) == 16 and chunks[0] == [[0, 126]] and chunks[-1] == [[BIG - 126, BIG]]
    assert by["hierarchical"]["measurements"]["windows_per_doc"] < 16


@pytest.mark.parametrize("case,match", [
    ("single_class", r"single class \['space'\]; need >= 2"),
    ("missing_label_column", r"no column\(s\) \['topic'\]; columns: \['text', 'label'\]"),
    ("empty_label", r"1 train document\(s\) have no label"),
])
def test_bad_labels_are_clear_errors(tiny_model, tmp_path, cache_env, case, match):
    rng = random.Random(6)
    data = tmp_path / "data"
    data.mkdir()
    train = normal_rows(rng, 12)
    if case == "single_class":
        train = [(t, "space") for t, _ in train]
    if case == "empty_label":
        train[3] = (train[3][0], "")
    write_csv(data / "train.csv", train)
    write_csv(data / "val.csv", normal_rows(rng, 6))
    write_csv(data / "test.csv", normal_rows(rng, 6))
    extra = ["label_col=topic"] if case == "missing_label_column" else []
    with pytest.raises(ConfigError, match=match) as err:  # once, before the grid: no cell ran or was recorded
        run(tiny_model, data, tmp_path / "r", "budgets=[16]", "strategies=[head, tail]", *extra)
    assert "before any cell ran" in str(err.value) and not runs_path(tmp_path / "r", "clf").exists()


@pytest.mark.parametrize("override,match", [
    ("strategies=[{name: sliding, step: 100}]", "step 100 > window 64 leaves tokens unseen; set allow_gaps"),
    ("strategies=[{name: hierarchical, overlap: 64}]", "at budget 64: hierarchical: overlap 64 must be < chunk 64"),
    ("strategies=[{name: head_tail, head_share: half}]", "parameter 'head_share' expects float, got 'half'"),
    ("strategies=[{name: sliding, max_windows: '8'}]", "parameter 'max_windows' expects int | None"),
    ("strategies=[{name: sliding, allow_gaps: 1}]", "parameter 'allow_gaps' expects bool"),
    ("strategies=[{name: 3}]", "a strategy name is a string"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.dropout=1.0", r"train.dropout must lie in \[0, 1\)"),
    ("limits.train=-5", "limits.train must be an integer >= 0 or null"),
    ("seeds=[-1]", "seeds"),
    ("batch_size=0", "batch_size must be an integer >= 1"),
    ("train.epochs=0", "train.epochs must be an integer >= 1"),
    ("budgets=[two]", "expected an integer"),
])
def test_more_bad_config_is_a_clear_error(override, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep("clf", [override, "budgets=[64]"] if "budgets" not in override else [override])


def test_gaps_are_allowed_when_asked():
    sweep = load_sweep("clf", ["strategies=[{name: sliding, step: 100, allow_gaps: true}]", "budgets=[64]"])
    assert sweep.strategies[0].label == "sliding[allow_gaps=True,step=100]"


def test_a_model_path_that_does_not_exist_names_the_path_and_what_was_expected(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ConfigError, match=f"model path '{missing}' does not exist.*expected a folder with config.json"):
        resolve_model(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json; expected a save_pretrained folder"):
        resolve_model(str(tmp_path / "empty"))


def test_a_hub_id_while_offline_says_so_and_how_to_use_a_packaged_or_local_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="this machine is offline.*packaged model \\(minilm.*\\) or a local folder"):
        resolve_model("bert-base-uncased")
    from ctxbench.tasks.data.sources import load_clf

    with pytest.raises(ConfigError, match="offline"):
        load_clf("imdb")


def test_the_cli_turns_config_errors_into_a_message_and_exit_code_2(capsys):
    assert cli_main(["bench", "clf", "budgts=[16]"]) == 2
    assert "ctxbench: error: unknown key 'budgts' in clf.yaml. Did you mean 'budgets'?" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    sweep = load_sweep("clf", ["device=cuda", "strategies=[head]", "budgets=[16]", "seeds=[0]"])
    with pytest.raises(ConfigError, match="torch sees no CUDA device"):
        run_sweep(sweep, tmp_path, progress=False)


def test_rerun_replaces_a_line_only_when_its_new_run_is_ok_and_a_data_error_drops_nothing(
        tiny_model, tiny_data, tmp_path, cache_env, monkeypatch):
    """--rerun measures recorded cells again; their old lines go only once the new runs are ok. A data
    error (here: the data check fails) stops the sweep before the grid and leaves the store as it was."""
    from ctxbench.bench.results import read_jsonl
    from ctxbench.tasks.clf import Classification

    common = ["--results", str(tmp_path), "bench", "clf", "--quiet", f"model={tiny_model}", f"dataset={tiny_data}",
              "budgets=[16]", "seeds=[0]", "strategies=[head, tail]", "train.epochs=2", "cost_repeats=1"]
    assert cli_main(common) == 0
    runs = tmp_path / "clf" / "runs.jsonl"
    first = read_jsonl(runs)
    assert len(first) == 2
    assert cli_main([*common[:3], "--rerun", *common[3:]]) == 0
    again = read_jsonl(runs)
    assert len(again) == 2 and {r["run_id"] for r in again} == {r["run_id"] for r in first}
    old = {r["run_id"]: r["measurements"]["wall_s"] for r in first}
    assert all(r["measurements"]["wall_s"] != old[r["run_id"]] for r in again)  # measured again, not kept
    assert check_store(tmp_path, "clf") == {"torn_lines": [], "duplicate_ok": [], "missing_sidecar": [],
                                            "sidecar_mismatch": []}

    real_run = Classification.run

    def fails_for_tail(self, spec, ctx):
        if spec.strategy.name == "tail":
            raise RuntimeError("planted: this cell fails on its rerun")
        return real_run(self, spec, ctx)

    monkeypatch.setattr(Classification, "run", fails_for_tail)
    assert cli_main([*common[:3], "--rerun", *common[3:]]) != 0  # the failure is reported...
    kept = {r["run_id"]: r for r in read_jsonl(runs)}
    assert len(kept) == 2 and all(r["status"] == "ok" for r in kept.values())  # ...and tail's ok line stays
    tail_id = next(r["run_id"] for r in again if r["spec"]["strategy"]["name"] == "tail")
    assert kept[tail_id] == next(r for r in again if r["run_id"] == tail_id)
    monkeypatch.setattr(Classification, "run", real_run)
    again = read_jsonl(runs)

    def broken(self, spec, ctx):
        raise ConfigError("planted: the data cannot be had")

    monkeypatch.setattr(Classification, "check_data", broken)
    assert cli_main([*common[:3], "--rerun", *common[3:]]) != 0
    assert read_jsonl(runs) == again  # nothing dropped, no error lines
