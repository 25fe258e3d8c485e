"""ctxbench scale on a tiny random model and short documents: the fit must show head/tail
flat and sliding/hierarchical linear in tokens processed, and the outputs must be written."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ctxbench.bench.studies import scale
from ctxbench.bench.cli import main as cli_main


def test_lengths_are_powers_of_two():
    assert scale.lengths(512, 65536) == [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
    assert scale.lengths(500, 2100) == [512, 1024, 2048]
    with pytest.raises(ValueError):
        scale.lengths(1024, 512)


@pytest.mark.parametrize("e, word", [(0.02, "flat"), (-0.1, "flat"), (0.97, "linear"), (1.12, "linear"),
                                     (2.0, "~n^2.00"), (float("nan"), "–")])
def test_growth_words(e, word):
    assert scale.growth(e) == word


def test_fit_on_exact_data():
    n = [512, 1024, 2048, 4096]
    rows = [{"strategy": "head", "doc_len": x, "real_tokens": 512, "median_s": 0.1, "utilisation": 0.3} for x in n]
    rows += [{"strategy": "sliding", "doc_len": x, "real_tokens": 2 * x, "median_s": x / 1000, "utilisation": 0.3}
             for x in n]
    fits = scale.fit(pd.DataFrame(rows), budget=510).set_index("strategy")
    assert fits.loc["head", "tokens exponent"] == pytest.approx(0.0, abs=1e-9)
    assert fits.loc["sliding", "tokens exponent"] == pytest.approx(1.0)
    assert fits.loc["sliding", "tokens per doc token"] == pytest.approx(2.0)
    assert fits.loc["sliding", "ms per 1k doc tokens"] == pytest.approx(1000.0)
    assert fits.loc["sliding", "time growth"] == "linear" and fits.loc["head", "time growth"] == "flat"


def test_scale_command_on_a_tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rc = cli_main(["scale", "--model", "tiny", "--device", "cpu", "--budget", "32", "--min-len", "64",
                   "--max-len", "1024",
                    "--repeats", "1", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("cpu-")
    for ext in ("md", "png", "csv", "json"):
        assert (folder / f"scale.{ext}").stat().st_size > 0
    df = pd.read_csv(folder / "scale.csv")
    assert len(df) == 5 * 5  # five strategies x 64..1024
    fits = scale.fit(df, 32).set_index("strategy")
    for name in ("head", "tail", "head_tail"):
        assert fits.loc[name, "tokens growth"] == "flat", fits
        assert (df[df.strategy == name]["real_tokens"] == 34).all()  # budget + [CLS] + [SEP]
    for name in ("sliding", "hierarchical"):
        assert fits.loc[name, "tokens growth"] == "linear", fits
    assert all(math.isfinite(x) for x in fits["time exponent"])
    text = (folder / "scale.md").read_text()
    assert "Growth fit" in text and "sliding" in text and "utilisation" in capsys.readouterr().out.lower()
