"""Run specs and sweeps: frozen dataclasses, one YAML per sweep, ``key=value`` overrides.

Unknown keys are errors with a "did you mean". No default depends on the
environment except the device, and ``mode: auto``, which follows it: ``probe``
(frozen encoder, cached spans) on a CPU, ``finetune`` on CUDA. The resolved mode
is what the spec, the run_id and the tables hold.
"""
from __future__ import annotations

import dataclasses
import itertools
from importlib import resources
import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

import ctxbench.strategies as strategies
from ctxbench.strategies import ConfigError
from ctxbench.tasks import get_task
from ctxbench.tasks.model.encoder import PRECISIONS, SWEEP_PRECISIONS
from ctxbench.tasks.model.peft import KINDS

# the packaged sweep YAMLs (package data: found in a checkout and in an installed wheel alike)
CONFIG_DIR = Path(str(resources.files("ctxbench.bench") / "configs"))
MODES = ("probe", "finetune")


@dataclass(frozen=True)
class Limits:
    """Documents per split (a fixed sample drawn with ``data_seed``); None = all."""

    train: int | None = 2000
    val: int | None = 500
    test: int | None = 1000


@dataclass(frozen=True)
class Train:
    """Classifier-head / fine-tuning optimisation."""

    optimizer: str = "adamw"  # adamw | lbfgs (lbfgs: probe mode only)
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 40
    batch_size: int = 64
    patience: int = 8  # early stopping on the validation metric (under the epoch rule only; see schedule)
    warmup_ratio: float = 0.1
    grad_accum: int = 1
    dropout: float = 0.1
    steps: int | None = None  # this many optimizer steps for every strategy (no early stopping); None: schedule
    # auto: equal_steps when fine-tuning, epochs for a probe head. equal_steps: every strategy of a grid takes the
    # optimizer steps `epochs` passes over the training *documents* take (the steps head takes), however many
    # windows it makes of them, and is scored at its final weights; epochs: `epochs` passes over a strategy's own
    # training windows with early stopping (sliding then takes ~3x head's steps: a training gap, not a context one)
    schedule: str = "auto"
    # finetune mode (tasks/model/peft.py)
    finetune: str = "full"  # full | lora | adalora | prefix | ia3
    lora_r: int = 8  # lora: the rank; adalora: the average rank it prunes to
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: tuple[str, ...] | None = None  # lora and adalora; None: the family's (tasks/model/families.py)
    max_windows_train: int | None = 8  # finetune: windows per document used in training
    adalora_init_r: int = 12  # adalora: the rank every adapter starts at
    adalora_tinit: float = 0.1  # adalora: share of optimizer steps before ranks are pruned
    adalora_tfinal: float = 0.2  # adalora: share of optimizer steps after the final allocation
    prefix_tokens: int = 20  # prefix: virtual tokens (they take positions on learned absolute positions)
    ia3_target_modules: tuple[str, ...] | None = None  # ia3: None = peft's default for the architecture
    ia3_feedforward_modules: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StrategySpec:
    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + "[" + ",".join(f"{k}={v}" for k, v in self.params) + "]"

    def build(self) -> strategies.Strategy:
        return strategies.build(self.name, **dict(self.params))


@dataclass(frozen=True)
class RunSpec:
    """One grid cell. Its canonical JSON hashes to the ``run_id``."""

    task: str
    dataset: str
    model: str
    mode: str
    strategy: StrategySpec
    budget: int | None  # None: the model's maximum
    seed: int
    data_seed: int = 0
    limits: Limits = field(default_factory=Limits)
    train: Train = field(default_factory=Train)
    pooler: str = "mean"  # mean | cls: how a window becomes one vector
    empty_docs: str = "keep"  # keep (encoded as special tokens only, counted) | error
    text_col: str = "text"
    label_col: str = "label"
    batch_size: int = 64  # inference windows per batch
    device: str = "auto"
    precision: str = "auto"  # inference: auto (bf16 autocast on CUDA, fp32 elsewhere) | float32 | bfloat16
    # (a sweep may say ``native``: bf16 on a CPU with native bf16, else auto; resolved when it is loaded)
    cost_docs: int = 16  # the measured cost pass: test documents timed per (model, strategy, budget, ...) key
    cost_repeats: int = 5  # timed passes after one warm-up; their median is the cost (0: no cost pass)
    settings: Any = None  # the task's own settings (its ``Settings`` dataclass; YAML key = the task's name)

    def __post_init__(self) -> None:  # a spec built in code gets its task's default settings
        if self.train.schedule == "auto":
            object.__setattr__(self, "train", dataclasses.replace(self.train,
                                                                  schedule=resolve_schedule(self.mode, self.task)))
        if self.settings is None:
            cls = getattr(get_task(self.task), "Settings", None)
            if cls is not None:
                object.__setattr__(self, "settings", cls())

    def to_dict(self) -> dict[str, Any]:
        """The spec as the run record and the run_id hold it. Fields added after results were
        first recorded (``LATER_FIELDS``) are left out at their defaults, so a spec that does
        not use them keeps the run_id it had before they existed."""
        d = dataclasses.asdict(self)
        del d["settings"]  # a spec holds only its own task's settings, under the task's name
        if self.settings is not None:
            own = dataclasses.asdict(self.settings)
            default = type(self.settings)()
            for name in getattr(self.settings, "later_fields", ()):  # added later: absent at their default
                if own.get(name) == getattr(default, name):
                    del own[name]
            if own:
                d[self.task] = own
        if d["train"].get("schedule") == "epochs" or d["train"].get("steps"):  # the epoch rule (as before
            del d["train"]["schedule"]  # `schedule` existed), or fixed steps, which it does not change: run_ids kept
        d["strategy"] = {"name": self.strategy.name, "params": dict(self.strategy.params), "label": self.strategy.label}
        for name in LATER_FIELDS:
            if getattr(self, name) == _DEFAULTS[name]:
                del d[name]
        return d


@dataclass(frozen=True)
class Sweep:
    task: str = "clf"
    dataset: str = "20ng"
    model: str = "minilm"
    mode: str = "probe"
    strategies: tuple[StrategySpec, ...] = ()
    budgets: tuple[int, ...] = (64, 128, 256, 512)
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seed: int = 0
    limits: Limits = field(default_factory=Limits)
    train: Train = field(default_factory=Train)
    pooler: str = "mean"
    empty_docs: str = "keep"
    text_col: str = "text"
    label_col: str = "label"
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    cost_docs: int = 16
    cost_repeats: int = 5
    settings: Any = None  # built from the YAML key named after the task (load_sweep)
    variants: tuple[Any, ...] = ()  # the task settings per value of a grid axis (Settings.grid_keys); () = (settings,)

    def cells(self) -> list[RunSpec]:
        if not self.strategies:
            raise ConfigError("the sweep names no strategies (strategies: [...] is empty)")
        shared = {f.name: getattr(self, f.name) for f in fields(RunSpec) if hasattr(self, f.name)}
        for key in ("strategy", "budget", "seed", "settings"):
            shared.pop(key, None)
        return [
            RunSpec(strategy=s, budget=b, seed=seed, settings=v, **shared)
            for v in (self.variants or (self.settings,))
            for b in self.budgets
            for s in self.strategies
            for seed in self.seeds
        ]


LATER_FIELDS = ("precision", "cost_docs", "cost_repeats")
SCHEDULES = ("auto", "equal_steps", "epochs")


def resolve_schedule(mode: str, task: str) -> str:
    """``train.schedule: auto``: fine-tuned strategies compare at equal optimizer steps; a probe head
    (cheap, convex-ish, early-stopped) trains by epochs, and so does a task whose one trained model
    serves every strategy (``shared_training``: QA), where the steps are equal by construction."""
    shared = getattr(get_task(task), "shared_training", False)
    return "epochs" if mode == "probe" or shared else "equal_steps"
_DEFAULTS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
             for f in fields(RunSpec) if f.name in LATER_FIELDS}


def _err_unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}.{hint} Valid: {', '.join(valid)}")


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check and convert a YAML value to a dataclass field type."""
    origin = getattr(typ, "__origin__", None)
    args = getattr(typ, "__args__", ())
    if is_dataclass(typ):
        return _build(typ, value or {}, where)
    if typ is Any:
        return value
    if origin is tuple or typ is tuple:
        if isinstance(value, (str, int, float)) or value is None:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, where)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            raise _err_unknown(key, valid, where)
        if cls is Sweep and key == "strategies":
            kwargs[key] = tuple(parse_strategy(s) for s in (value or []))
            continue
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def parse_strategy(item: Any) -> StrategySpec:
    """``"head"`` or ``{name: sliding, pool: max}``; validated by building it."""
    if isinstance(item, str):
        name, params = item, {}
    elif isinstance(item, dict) and "name" in item:
        params = {k: v for k, v in item.items() if k != "name"}
        name = item["name"]
    else:
        raise ConfigError(f"a strategy is a name or a mapping with 'name', got {item!r}")
    if not isinstance(name, str):
        raise ConfigError(f"a strategy name is a string, got {name!r}")
    cls = strategies.strategy_class(name)  # raises "did you mean" on unknown names
    hints = get_type_hints(cls)
    for key, value in params.items():
        if key in hints and not _type_ok(value, hints[key]):
            raise ConfigError(f"strategy {name!r}: parameter {key!r} expects {_type_name(hints[key])}, got {value!r}")
    try:
        strategies.build(name, **params)  # raises on unknown params / values
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"strategy {name!r}: bad parameter value(s) {params!r}: {e}") from None
    return StrategySpec(name, tuple(sorted(params.items())))


def _type_ok(value: Any, typ: Any) -> bool:
    """A strict check (no conversion: the spec keeps the value as written, it is part of the run_id)."""
    origin, args = getattr(typ, "__origin__", None), getattr(typ, "__args__", ())
    if typ is Any:
        return True
    if args and type(None) in args and origin is not tuple:  # X | None
        return value is None or any(_type_ok(value, a) for a in args if a is not type(None))
    if origin is tuple or typ is tuple:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0] if args else Any) for v in value)
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(typ, type):
        return isinstance(value, typ)
    return True


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for p in path[:-1]:
        node = tree.get(p)
        if not isinstance(node, dict):
            node = {}
            tree[p] = node
        tree = node
    tree[path[-1]] = value


def load_sweep(path_or_task: str, overrides: list[str] = (), profile: str | None = None) -> Sweep:
    """Load ``bench/configs/<task>.yaml`` (or a path), apply a profile, then overrides."""
    path = Path(path_or_task)
    if not path.suffix:
        path = CONFIG_DIR / f"{path_or_task}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no sweep config {str(path)!r}; built-in sweeps: {', '.join(known)}")
    data = yaml.safe_load(path.read_text()) or {}
    profiles = data.pop("profiles", {}) or {}
    if profile and profile != "default":
        if profile not in profiles:
            raise ConfigError(f"unknown profile {profile!r}; {path.name} defines: default, {', '.join(profiles)}")
        _merge(data, profiles[profile])
    for text in overrides:
        keys, value = parse_override(text)
        _set(data, keys, value)
    task = data.get("task", Sweep.task)
    settings_cls = getattr(get_task(task), "Settings", None)  # unknown task names: "did you mean"
    raw = data.pop(task, None) if settings_cls is not None else None
    valid = [f.name for f in fields(Sweep) if f.name not in ("settings", "variants")] + ([task] if settings_cls else [])
    for key in data:
        if key not in valid:  # another task's settings key is unknown here too
            raise _err_unknown(key, valid, path.name)
    sweep = _build(Sweep, data, path.name)
    if settings_cls is not None:
        raw = dict(raw or {})
        axes = {k: raw.pop(k) for k in getattr(settings_cls, "grid_keys", ()) if isinstance(raw.get(k), list)}
        variants = [dict(raw, **dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]
        built = tuple(_build(settings_cls, v, f"{path.name}: {task}") for v in variants)
        sweep = dataclasses.replace(sweep, settings=built[0], variants=built if axes else ())
    if sweep.mode == "auto":
        sweep = dataclasses.replace(sweep, mode=auto_mode(sweep.device))
    if sweep.precision == "native":
        sweep = dataclasses.replace(sweep, precision=native_precision(sweep.device))
    validate(sweep)
    return sweep


def auto_mode(device: str) -> str:
    """``probe`` on a CPU (end-to-end fine-tuning of every cell does not fit there), ``finetune`` on CUDA."""
    from ctxbench.tasks.model.encoder import pick_device

    return "finetune" if pick_device(device).type == "cuda" else "probe"


def native_precision(device: str) -> str:
    """``precision: native``: ``bfloat16`` on a CPU that runs bf16 matmuls natively, ``auto`` elsewhere
    (``ctxbench.tasks.model.encoder.resolve_precision``)."""
    from ctxbench.tasks.model.encoder import pick_device, resolve_precision

    return resolve_precision("native", pick_device(device))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def validate(sweep: Sweep) -> None:
    if sweep.mode not in MODES:
        raise ConfigError(f"mode must be one of {(*MODES, 'auto')}, got {sweep.mode!r}")
    if not sweep.strategies:
        raise ConfigError("the sweep names no strategies (strategies: [...] is empty)")
    for b in sweep.budgets:
        if b is not None and (not isinstance(b, int) or b < 1):
            raise ConfigError(f"budget must be an integer >= 1, got {b!r}")
    if not sweep.seeds:
        raise ConfigError("seeds is empty")
    if sweep.pooler not in ("mean", "cls"):
        raise ConfigError(f"pooler must be 'mean' or 'cls', got {sweep.pooler!r}")
    if sweep.empty_docs not in ("keep", "error"):
        raise ConfigError(f"empty_docs must be 'keep' or 'error', got {sweep.empty_docs!r}")
    if sweep.precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {SWEEP_PRECISIONS}, got {sweep.precision!r}")
    if sweep.train.optimizer not in ("adamw", "lbfgs"):
        raise ConfigError(f"train.optimizer must be 'adamw' or 'lbfgs', got {sweep.train.optimizer!r}")
    t = sweep.train
    if t.schedule not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {t.schedule!r}")
    if t.schedule == "equal_steps" and getattr(get_task(sweep.task), "shared_training", False):
        raise ConfigError(f"train.schedule=equal_steps: the {sweep.task} task trains one model that every strategy "
                          f"reads, so its steps are already equal; leave train.schedule at auto (epochs there)")
    if t.schedule == "equal_steps" and sweep.mode == "probe" and t.optimizer == "lbfgs":
        raise ConfigError("train.schedule=equal_steps counts AdamW steps; an L-BFGS probe trains by epochs")
    if t.finetune not in KINDS:
        raise ConfigError(f"train.finetune must be one of {', '.join(KINDS)}, got {t.finetune!r}")
    if t.lora_r < 1:
        raise ConfigError(f"train.lora_r must be >= 1, got {t.lora_r}")
    if t.finetune == "adalora" and t.adalora_init_r < t.lora_r:
        raise ConfigError(f"train.adalora_init_r ({t.adalora_init_r}) must be >= train.lora_r ({t.lora_r}), "
                          f"the average rank AdaLoRA prunes to")
    if not (0 <= t.adalora_tinit and 0 <= t.adalora_tfinal and t.adalora_tinit + t.adalora_tfinal < 1):
        raise ConfigError(f"train.adalora_tinit and train.adalora_tfinal are shares of the optimizer steps: each "
                          f">= 0 and together < 1, got {t.adalora_tinit} and {t.adalora_tfinal}")
    if t.prefix_tokens < 1:
        raise ConfigError(f"train.prefix_tokens must be >= 1, got {t.prefix_tokens}")
    _check_ranges(sweep)
    _dry_run_strategies(sweep)


def _check_ranges(sweep: Sweep) -> None:
    """Ranges the type check cannot see (each error names its key and what it expects)."""
    def at_least(key: str, value: Any, lo: int, none_ok: bool = False) -> None:
        if value is None and none_ok:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"{key} must be an integer >= {lo}{' or null' if none_ok else ''}, got {value!r}")

    at_least("batch_size", sweep.batch_size, 1)
    at_least("data_seed", sweep.data_seed, 0)
    at_least("cost_docs", sweep.cost_docs, 1)
    at_least("cost_repeats", sweep.cost_repeats, 0)
    at_least("train.steps", sweep.train.steps, 1, none_ok=True)
    for s in sweep.seeds:
        at_least("seeds[]", s, 0)
    for split in ("train", "val", "test"):
        at_least(f"limits.{split}", getattr(sweep.limits, split), 0, none_ok=True)  # qa: val=0
    t = sweep.train
    for key in ("epochs", "batch_size", "patience", "grad_accum"):
        at_least(f"train.{key}", getattr(t, key), 1)
    at_least("train.max_windows_train", t.max_windows_train, 1, none_ok=True)
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {t.lr!r}")
    if not t.weight_decay >= 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {t.weight_decay!r}")
    for key in ("dropout", "lora_dropout"):
        if not 0.0 <= getattr(t, key) < 1.0:
            raise ConfigError(f"train.{key} must lie in [0, 1), got {getattr(t, key)!r}")
    if not 0.0 <= t.warmup_ratio <= 1.0:
        raise ConfigError(f"train.warmup_ratio must lie in [0, 1], got {t.warmup_ratio!r}")


def _dry_run_strategies(sweep: Sweep) -> None:
    """Ask every pure strategy for the windows of a long document at every budget, so a
    parameter that only fails against a budget (step > window without allow_gaps,
    overlap >= chunk) is an error at load time, not one failed cell per budget later.
    (A task may shrink the budget further, e.g. by a question: that is checked per cell.)"""
    for spec in sweep.strategies:
        strategy = spec.build()
        if strategies.needs(strategy):
            continue  # selection strategies need sentences; their parameters were checked when built
        for b in sweep.budgets:
            if b is None:
                continue
            try:
                strategy.windows(4 * b + 3, b)
            except ConfigError as e:
                raise ConfigError(f"strategy {spec.label} at budget {b}: {e}") from None
