"""`RunConfig`: every setting of a training run, from a YAML/JSON file and/or the command line.

A run's settings are resolved in three layers, later ones winning: the task family's defaults
(:data:`TASK_DEFAULTS`), a config file (``--config``), then the flags given on the command line. The resolved
config has no ``None`` left for a setting the task uses and is recorded in full in ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from ..tasks._common import read_text
from ..training.method_names import METHODS
from .task_names import parse_task

Quantization = Literal["4bit", "8bit"]  # as kasa_peft.models.bitsandbytes, which imports bitsandbytes
QUANTIZE_CHOICES = (None, *typing.get_args(Quantization))
T = TypeVar("T")


@dataclass(frozen=True)
class RunConfig:
    """The settings of one ``kasa-peft train`` run (a ``None`` means "the task's default")."""

    task: str
    model: str
    quantize: Quantization | None = None
    output_dir: str | None = None
    method: str = "kasa"
    # adapter
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    beta: float = 1e-4
    gamma: float = 1e-3
    regularizer: str = "paper"
    reduction: str = "mean"
    learn_sigma: bool = True
    sigma_init: str = "randn"
    drop_rank: str = "r"  # "r", "auto" or an integer (held as int once checked)
    drop_budget: float | None = None
    target_modules: list[str] | None = None
    # optimisation
    lr: float | None = None
    head_lr: float | None = None
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    max_length: int | None = None
    group_by_length: bool = False
    seed: int = 0
    # how the Trainer computes and reports (a resumed run may change these: `run.CHANGEABLE_ON_RESUME`)
    bf16: bool = False
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    report_to: str = "none"  # "none" or comma-separated logging backends of transformers' Trainer
    # evaluation and checkpoints
    eval_steps: int | None = None
    eval_every_epoch: bool | None = None
    save_steps: int | None = None
    # data
    data_dir: str | None = None
    train_file: str | None = None
    eval_file: str | None = None
    text_columns: list[str] | None = None
    label_column: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    instruct_eval_sets: list[str] | None = None
    # generation (causal-LM tasks)
    num_beams: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    max_new_tokens: int | None = None
    use_chat_template: bool | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(RunConfig)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) and bool not in (typing.get_args(hints[field.name]) or (hints[field.name],)):
                raise ValueError(f"--{_flag(field.name)} must be {_type_name(value_type(hints[field.name]))}, "
                                 f"got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
                raise ValueError(f"--{_flag(field.name)} must be a finite number, got {value!r}")
        positive = ("r", "alpha", "epochs", "max_steps", "batch_size", "eval_batch_size", "gradient_accumulation_steps",
                    "max_length", "eval_steps", "save_steps", "max_train_samples", "max_eval_samples", "num_beams",
                    "max_new_tokens", "lr", "head_lr")
        for name in positive:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"--{_flag(name)} must be positive, got {value!r}")
        for name in ("beta", "gamma", "weight_decay", "no_repeat_ngram_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {value!r}")
        if not 0 <= self.dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--dropout and --warmup-ratio must be in [0, 1), got {self.dropout!r} and "
                             f"{self.warmup_ratio!r}")
        if self.quantize not in QUANTIZE_CHOICES:
            raise ValueError(f"--quantize must be one of {', '.join(q for q in QUANTIZE_CHOICES if q)}, got "
                             f"{self.quantize!r}")
        # imported here: the core imports torch, which `kasa-peft --help` need not load
        from ..core.config import DropRank, KasaConfig, SigmaInit

        object.__setattr__(self, "drop_rank", parse_drop_rank(self.drop_rank))
        try:  # KasaConfig checks the values the casts name
            KasaConfig(r=self.r, drop_rank=cast(DropRank, self.drop_rank), drop_budget=self.drop_budget,
                       sigma_init=cast(SigmaInit, self.sigma_init))
        except ValueError as err:
            flags = "--sigma-init" if "sigma_init" in str(err) else "--drop-rank / --drop-budget"
            raise ValueError(f"{flags}: {err}".replace("invalid KasaConfig: ", "")) from None
        parse_task(self.task)  # an unknown task or method fails here, before anything is loaded
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")

    @property
    def family(self) -> str:
        return parse_task(self.task).family

    @property
    def evaluation_batch_size(self) -> int:
        """How many examples evaluation takes at once: ``eval_batch_size``, else ``batch_size``."""
        return required(self.eval_batch_size or self.batch_size, "batch_size")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# Settings each task family uses unless the file or the command line says otherwise.
_CLASSIFICATION = {"lr": 4e-4, "epochs": 3.0, "batch_size": 32, "max_length": 128, "eval_every_epoch": True}
_GENERATION = {"num_beams": 1, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "eval_every_epoch": False}
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "glue": _CLASSIFICATION,
    "classify": _CLASSIFICATION,
    # `kasa-peft demo`: sized for about 5 minutes on 2 CPU cores (1500 training / 500 held-out tweets, one epoch;
    # batching by length halves the padding of tweets, whose median is 33 tokens).
    "sentiment": _CLASSIFICATION | {"max_length": 64, "max_train_samples": 1500, "max_eval_samples": 500,
                                    "group_by_length": True, "lr": 2e-3, "epochs": 1.0},
    # E2E decoding as in the LoRA paper (beam 10, length penalty 0.9, no-repeat 4-grams).
    "e2e": {"lr": 2e-4, "epochs": 1.0, "batch_size": 8, "max_length": 128, "eval_every_epoch": False,
            "num_beams": 10, "length_penalty": 0.9, "no_repeat_ngram_size": 4, "max_new_tokens": 64},
    # LLM-Adapters' commonsense settings (cutoff 256, lr 3e-4, batch 16, 3 epochs).
    "commonsense": _GENERATION | {"lr": 3e-4, "epochs": 3.0, "batch_size": 16, "max_length": 256,
                                  "max_new_tokens": 32},
    "sft": _GENERATION | {"lr": 2e-4, "epochs": 1.0, "batch_size": 8, "max_length": 512, "max_new_tokens": 128,
                          "instruct_eval_sets": ["user_oriented", "seed"]},
    # sft's training; IFEval's evaluation with lm-evaluation-harness's generation budget (1280 new tokens, greedy).
    "ifeval": _GENERATION | {"lr": 2e-4, "epochs": 1.0, "batch_size": 8, "max_length": 512, "max_new_tokens": 1280},
}


def resolve_config(file_values: dict[str, Any], cli_values: dict[str, Any]) -> RunConfig:
    """The run's config: task defaults, overridden by the config file, overridden by the command line."""
    given = {**normalise_settings(file_values, "the config file"), **normalise_settings(cli_values, "the command line")}
    missing = [f"--{_flag(name)}" for name in ("task", "model") if given.get(name) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: give them on the command line or in the --config file")
    family = parse_task(given["task"]).family
    defaults = TASK_DEFAULTS[family]
    nulled = [name for name, value in given.items() if value is None and name in defaults]
    if nulled:
        raise ValueError(f"{', '.join(_flag(n) for n in nulled)} set to null: {family} tasks need a value; remove "
                         f"the setting to use the task's default ({', '.join(f'{defaults[n]!r}' for n in nulled)})")
    return RunConfig(**{**defaults, **given})


def required(value: T | None, name: str) -> T:
    """A setting the run cannot do without, checked: `resolve_config` fills each one from the task's defaults
    (``TASK_DEFAULTS``), so only a `RunConfig` built by hand can lack it."""
    if value is None:
        raise ValueError(f"--{_flag(name)} is not set: give it, or build the config with resolve_config(), which "
                         "fills in the task's default")
    return value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings in a ``.yaml``/``.yml``/``.json`` file: a mapping of RunConfig field names (``-`` or ``_``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found: check the --config path")
    text = read_text(path)
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}"
                         ) from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings (e.g. `lr: 4.0e-4`), "
                         f"found {type(values).__name__}")
    normalise_settings(values, f"config file {path}")  # a wrong value is named with its file
    return values


def normalise_settings(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Keys as field names, values converted to the field's type (YAML reads ``4e-4`` as a string)."""
    hints = typing.get_type_hints(RunConfig)
    normalised = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in hints:
            raise ValueError(f"unknown setting {key!r} in {source}; known settings: "
                             f"{', '.join(_flag(n) for n in hints)}")
        normalised[name] = None if value is None else _convert(name, value, hints[name], source)
    return normalised


def value_type(hint: Any) -> Any:
    """``int`` for ``int | None``, ``str`` for a ``Literal`` of strings: the type a setting's values have."""
    kind = next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))
    return str if typing.get_origin(kind) is Literal else kind


def _convert(name: str, value: Any, hint: Any, source: str) -> Any:
    kind = value_type(hint)
    try:
        if typing.get_origin(kind) is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(item).strip() for item in items if str(item).strip()]
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError  # YAML reads yes / on / true as True: never a number, a name or a path
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        note = "; YAML reads yes, no, on, off as true / false" if isinstance(value, bool) else ""
        raise ValueError(f"setting {_flag(name)!r} must be {_type_name(kind)}, got {value!r} ({source}{note})"
                         ) from None


def parse_drop_rank(value: str | int) -> str | int:
    """``--drop-rank`` as KasaConfig takes it: ``"r"``, ``"auto"`` or an integer (``"4"`` is 4)."""
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return "a list or a comma-separated string"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, str(kind))


def _flag(name: str) -> str:
    return name.replace("_", "-")


__all__ = ["TASK_DEFAULTS", "RunConfig", "normalise_settings", "parse_drop_rank", "read_config_file", "required",
           "resolve_config", "value_type"]
