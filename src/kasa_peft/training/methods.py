"""What to train: KaSA (ours) and the baselines, prepared from one `MethodSpec` so comparisons are fair.

Every method gets the same rank ``r``, ``alpha``, dropout, target layers and fully trained modules
(``modules_to_save``; for a sequence classifier its head is always added). The PEFT baselines come from
peft 0.21.2:

* ``lora``: ``LoraConfig``; ``dora``: ``use_dora=True``; ``pissa``: ``init_lora_weights="pissa"`` (the r
  *largest* singular components become the factors and are subtracted from the base);
* ``milora`` (MiLoRA, Wang et al. 2024, arXiv 2406.09044): PiSSA with the r *smallest* components, saved as
  a plain LoRA of the original base (`kasa_peft.training.milora`);
* ``adalora``: ``AdaLoraConfig`` with ``target_r = r`` over ``total_steps`` (`kasa_peft.training.adalora`);
  checkpoints also hold its importance averages, so a resumed run is the same run;
* ``peft-kasa``: ``LoraConfig(kasa_config=KasaConfig(beta, gamma))``, with the loss PEFT defines (paper
  form, summed over layers) added to the task loss; ``regularizer`` / ``reduction`` apply to ``kasa`` only;
* ``fft``: every parameter trained, nothing injected;
* ``prefix`` (prefix tuning, Li & Liang 2021): ``PrefixTuningConfig`` with ``num_virtual_tokens = r``, no
  reparameterisation MLP; causal LMs only (PEFT feeds the prefix through their key/value cache), and
  ``generate`` made to use the prefix under transformers 5 (`baselines.prefix`);
* ``vera`` (Kopiczko et al. 2024): ``VeraConfig`` with rank ``r`` (frozen shared random projections, trained
  scaling vectors; no alpha);
* ``bitfit``, ``adapter-h``, ``adapter-p``, ``adapter-l``, ``adapter-d``, ``series``, ``parallel``, ``ft-top2`` and
  ``dylora``: our own modules (`kasa_peft.training.baselines`, whose docstrings carry their equations and counts);
  ``r`` is the adapters' bottleneck size and DyLoRA's largest rank. They save only what they train.

A method that cannot apply to a model is refused before the model changes (`baselines.check_applies`): BitFit on a
model without bias terms, prefix tuning on a model that is not a causal LM, adapters on a model without
transformer blocks, a parallel adapter on a block whose MLP is not one module (BERT).

On a quantized base (bitsandbytes 4-bit / 8-bit) ``kasa``, ``lora``, ``dora`` and ``adalora`` train beside the
quantized weights. The others are refused up front (`check_method_fits_base`): PEFT refuses PiSSA there (its
initialisation rewrites the base weight; PEFT asks for a float base, quantized afterwards), MiLoRA is built the
same way, PEFT 0.21.2's KaSA silently becomes a plain LoRA there (its bitsandbytes LoRA layers ignore
``kasa_config``: no truncation, no ``lora_diag``), and packed weights cannot be fully trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from ..core import (
    KasaConfig, ParameterCount, RegularizationTerms, load_adapter, orthogonality_penalty, regularization_terms,
    restore_adapter, singular_value_penalty, trainable_parameters,
)
from ..core.config import DropRank, Reduction, Regularizer, SigmaInit
from ..core.files import check_tensor_file, read_json_object, write_text_atomically
from ..core.model import STATE_ATTRIBUTE, kasa_layers
from ..core.quantized import looks_quantized
from .baselines import (
    OWN_METHODS, RankSchedule, check_applies, generate_with_prefix, load_trained_into, prepare_own, save_trained,
)
from .distributed import inject_distributed, on_main_process, save_adapter_distributed
from .method_names import METHODS
from .adalora import adalora_config, load_adalora_state, save_adalora_state
from .milora import init_milora, save_milora_as_lora, trained_milora_factors

PeftModule = Any  # a PEFT model or layer: its attributes (peft_config, lora_A, rankallocator...) are PEFT's

HEAD_NAMES = ("classifier", "score")  # what transformers calls a sequence classifier's head
METHOD_FILE = "kasa_peft_method.json"
RECORD_FIX = ("restore the run's record from a copy, or train the run again (the weights beside it cannot be read "
              "without it)")
QUANTIZED_BASE_METHODS = ("kasa", "lora", "dora", "adalora")
KASA_ONLY = {"drop_rank": "r", "drop_budget": None, "sigma_init": "randn"}  # settings only `kasa` has, with defaults
# the MethodSpec fields a KasaConfig carries under the same name (`kasa_config` maps them back)
SPEC_FIELDS_OF_CONFIG = ("r", "alpha", "dropout", "target_modules", "modules_to_save", "beta", "gamma", "regularizer",
                         "reduction", "learn_sigma", "sigma_init", "drop_rank", "drop_budget")


@dataclass(frozen=True)
class MethodSpec:
    """What to train. The same fields for every method, so that only the adapter differs between runs.

    ``beta``, ``gamma`` weight KaSA's penalties (``kasa`` and ``peft-kasa``); ``regularizer``,
    ``reduction``, ``learn_sigma``, ``sigma_init``, ``drop_rank`` and ``drop_budget`` are those of
    `kasa_peft.KasaConfig` (``kasa`` only); ``total_steps`` is the number of optimizer steps, needed by AdaLoRA's
    rank schedule.
    """

    method: str = "kasa"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = ("query", "value")
    modules_to_save: tuple[str, ...] = ()
    beta: float = 1e-4
    gamma: float = 1e-3
    regularizer: str = "paper"
    reduction: str = "mean"
    learn_sigma: bool = True
    sigma_init: str = "randn"
    drop_rank: int | str = "r"
    drop_budget: float | None = None
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        for name in ("alpha", "dropout", "beta", "gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"MethodSpec.{name} must be a finite number, got {getattr(self, name)!r}")
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))
        kasa_only = [name for name, default in KASA_ONLY.items() if getattr(self, name) != default]
        if self.method != "kasa" and kasa_only:
            raise ValueError(f"{' / '.join(kasa_only)} apply to method 'kasa' only, not {self.method!r}: leave "
                             f"{'it' if len(kasa_only) == 1 else 'them'} out")
        if self.method == "adalora" and (self.total_steps is None or self.total_steps < 1):
            raise ValueError("method 'adalora' needs total_steps (the number of optimizer steps of the run) for its "
                             f"rank schedule; got {self.total_steps!r}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class PreparedModel:
    """A model ready to train with one method.

    Attributes:
        model: what to train and call (a ``PeftModel`` for the PEFT methods).
        spec: the method and its settings.
        head_modules: the modules trained fully (``spec.modules_to_save`` plus a classifier's head).
    """

    model: nn.Module
    spec: MethodSpec
    head_modules: tuple[str, ...] = ()
    milora_init: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # (A_0, B_0) per LoRA layer
    rank_schedule: RankSchedule | None = None  # DyLoRA's rank per step

    def regularization(self) -> RegularizationTerms | None:
        """``(beta * L2, gamma * L3)`` to add to the task loss (``kasa``, ``peft-kasa``); ``None`` for the others."""
        if self.spec.method == "kasa":
            return regularization_terms(self.model)
        if self.spec.method == "peft-kasa":
            return peft_kasa_terms(self.model)
        return None

    def save(self, directory: str | os.PathLike) -> None:
        """Write what was trained (an adapter; the whole model for ``fft``) and the spec to ``directory``.

        Under torch.distributed a collective: every rank calls it, a sharded KaSA adapter is gathered, rank 0
        writes, and no rank returns before the files are in place.
        """
        directory = Path(directory)
        if self.spec.method == "kasa":
            save_adapter_distributed(self.model, directory)

        def write() -> None:
            if self.spec.method == "milora":
                save_milora_as_lora(self.model, directory, cast(dict, self.milora_init))  # set for milora
            elif self.spec.method in OWN_METHODS:
                save_trained(self.model, directory)
            elif self.spec.method != "kasa":
                cast(PeftModule, self.model).save_pretrained(directory)
            if self.spec.method == "adalora":
                save_adalora_state(self.model, directory)
            write_method_file(directory, self.spec)
        on_main_process(write, f"saving the {self.spec.method} model to {directory}")

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        """Put the weights ``save`` wrote back into this model (resuming, or picking the best checkpoint).

        For ``kasa`` the values are copied into the adapter in place (``restore_adapter``: the optimizer's
        parameters stay valid, FSDP2 shards take their share).
        """
        recorded_method(directory, self.spec.method)
        if self.spec.method == "kasa":
            restore_adapter(self.model, directory)
        elif self.spec.method == "fft":
            _load_full_weights(self.model, directory)
        elif self.spec.method == "adalora":
            load_adalora_state(self.model, directory)
        elif self.spec.method in OWN_METHODS:
            load_trained_into(self.model, directory)
        else:
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            weights = load_peft_weights(str(directory))
            if self.spec.method == "milora":
                weights = trained_milora_factors(weights, self.spec.r)
            set_peft_model_state_dict(self.model, weights)

    def trainable_parameters(self) -> ParameterCount:
        return trainable_parameters(self.model)

    def on_optimizer_step(self, global_step: int) -> None:
        """Call after each optimizer step, before gradients are zeroed: AdaLoRA's rank allocation."""
        if self.spec.method == "adalora":
            cast(PeftModule, self.model).base_model.update_and_allocate(global_step)

    def on_step_begin(self, global_step: int) -> None:
        """Call before each optimizer step (``global_step``: the steps already taken): DyLoRA's rank of the step."""
        if self.rank_schedule is not None:
            self.rank_schedule.set_step(global_step)


def prepare_model(model: nn.Module, spec: MethodSpec) -> PreparedModel:
    """Make ``model`` trainable with ``spec.method`` (in place for ``kasa``, ``fft`` and our own baselines; PEFT
    wraps it)."""
    check_method_fits_base(model, spec.method)
    heads = _heads(model, spec)
    check_applies(model, spec.method, heads)
    if spec.method == "kasa":
        model = inject_distributed(model, kasa_config(spec, heads))
    elif spec.method == "fft":
        model.requires_grad_(True)
    elif spec.method in OWN_METHODS:
        prepare_own(model, spec.method, spec.r, spec.alpha, spec.dropout, spec.target_modules, heads)
        if spec.method == "dylora":
            schedule = RankSchedule(model, spec.r, seed=int(torch.randint(2**31 - 1, ())))
            schedule.set_step(0)
            return PreparedModel(model, spec, heads, rank_schedule=schedule)
    else:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config(model, spec, heads))
        if spec.method == "prefix":
            generate_with_prefix(model)
        if spec.method == "milora":
            return PreparedModel(model, spec, heads, init_milora(_lora_layers(model)))
    return PreparedModel(model, spec, heads)


def prepared_from_adapter(model: nn.Module) -> PreparedModel:
    """The `PreparedModel` of a model adapted by ``kasa_peft.inject`` or ``load_adapter``: its one KaSA adapter,
    active and unmerged, trained with that adapter's config (``beta``, ``gamma``, ``modules_to_save``, ...)."""
    state = getattr(model, STATE_ATTRIBUTE, None)
    if state is None or not state.configs:
        raise ValueError(f"{type(model).__name__} has no KaSA adapter: adapt it first with kasa_peft.inject(model, "
                         "KasaConfig(...)) or kasa_peft.load_adapter(model, DIR), or pass kasa_config=KasaConfig(...) "
                         "to the trainer")
    if len(state.configs) > 1 or state.active is None:
        raise ValueError(f"the model holds the KaSA adapters {sorted(state.configs)} (active: {state.active!r}); a "
                         "trainer trains exactly one: remove the others with kasa_peft.delete_adapter(model, NAME) "
                         "and keep the one to train")
    if any(layer.merged_adapter is not None for _, layer in kasa_layers(model)):
        raise ValueError("the model's KaSA adapter is merged into its weights, so training would not change what it "
                         "computes: call kasa_peft.unmerge(model) first")
    config = state.configs[state.active]
    return PreparedModel(model, kasa_method_spec(config), config.modules_to_save)


def kasa_method_spec(config: KasaConfig) -> MethodSpec:
    """The `MethodSpec` recording a KaSA adapter's training settings (the inverse of `kasa_config`)."""
    return MethodSpec(method="kasa", **{name: getattr(config, name) for name in SPEC_FIELDS_OF_CONFIG})


def write_method_file(directory: str | os.PathLike, spec: MethodSpec) -> None:
    """Record the method of what ``directory`` holds (``METHOD_FILE``), which `load_trained` and the CLI read."""
    write_text_atomically(Path(directory) / METHOD_FILE, json.dumps(spec.to_dict(), indent=2) + "\n")


def check_method_fits_base(model: nn.Module, method: str) -> None:
    """Refuse, before any change, a method that cannot train on ``model``'s quantized weights (module docstring)."""
    quantized = next((name for name, m in model.named_modules() if looks_quantized(m)), None)
    if quantized is not None and method not in QUANTIZED_BASE_METHODS:
        raise ValueError(f"method '{method}' cannot train on a quantized base (layer '{quantized}' is "
                         f"{type(model.get_submodule(quantized)).__name__}): its initialisation rewrites or trains "
                         f"the base weights. On a quantized base use one of {', '.join(QUANTIZED_BASE_METHODS)}, or "
                         "load the model unquantized.")


def load_trained(base_model: nn.Module, directory: str | os.PathLike, method: str | None = None) -> nn.Module:
    """The trained model saved in ``directory`` by `PreparedModel.save`, built on a fresh ``base_model``.

    ``method`` defaults to the one recorded in the directory; a different one is an error.
    """
    method = recorded_method(directory, method)
    if method == "kasa":
        return load_adapter(base_model, directory)
    for path in sorted(Path(directory).glob("*.bin")):  # PEFT / transformers read a .bin without naming it
        if path.name != "training_args.bin":
            check_tensor_file(path, "save the model again, as safetensors, or restore the file from a copy")
    if method == "fft":
        return _load_full_weights(base_model, directory)
    if method in OWN_METHODS:
        spec = _recorded_spec(directory)
        prepare_own(base_model, method, spec.r, spec.alpha, spec.dropout, spec.target_modules, _heads(base_model, spec))
        return load_trained_into(base_model, directory).requires_grad_(False)
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model, str(directory))  # pissa / peft-kasa redo their base change here
    if method == "prefix":
        generate_with_prefix(model)
    return model


def _heads(model: nn.Module, spec: MethodSpec) -> tuple[str, ...]:
    """The modules trained fully: ``spec.modules_to_save`` and a sequence classifier's head."""
    return tuple(dict.fromkeys((*spec.modules_to_save, *classification_head_names(model))))


def _recorded_spec(directory: str | os.PathLike) -> MethodSpec:
    """The `MethodSpec` a run saved with its weights (our own baselines are rebuilt from it)."""
    record = Path(directory) / METHOD_FILE
    if not record.is_file():
        raise FileNotFoundError(f"{directory} has no {METHOD_FILE}, which a baseline's saved weights need to be "
                                "rebuilt: pass the directory a kasa-peft run wrote")
    fields = {f.name for f in dataclasses.fields(MethodSpec)}
    values = read_json_object(record, RECORD_FIX)
    try:
        return MethodSpec(**{k: v for k, v in values.items() if k in fields})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{record} is damaged ({err}): {RECORD_FIX}") from None


def classification_head_names(model: nn.Module) -> tuple[str, ...]:
    """The head of a transformers sequence classifier (``classifier`` for BERT/RoBERTa, ``score`` for
    Llama/GPT-2); ``()`` for any other model."""
    if not is_sequence_classifier(model):
        return ()
    heads = tuple(name for name, _ in model.named_children() if name in HEAD_NAMES)
    if not heads:
        raise ValueError(f"{type(model).__name__} is a sequence classifier but has no module named {HEAD_NAMES}; "
                         "name its head in modules_to_save")
    return heads


def is_sequence_classifier(model: nn.Module) -> bool:
    return type(model).__name__ in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a ``PeftModel`` (the model itself otherwise)."""
    return cast(PeftModule, model).get_base_model() if hasattr(model, "get_base_model") else model


def kasa_config(spec: MethodSpec, head_modules: tuple[str, ...]) -> KasaConfig:
    return KasaConfig(r=spec.r, alpha=spec.alpha, dropout=spec.dropout, target_modules=spec.target_modules,
                      modules_to_save=head_modules, beta=spec.beta, gamma=spec.gamma,
                      regularizer=cast(Regularizer, spec.regularizer), reduction=cast(Reduction, spec.reduction),
                      learn_sigma=spec.learn_sigma, sigma_init=cast(SigmaInit, spec.sigma_init),
                      drop_rank=cast(DropRank, spec.drop_rank), drop_budget=spec.drop_budget)  # str in the spec


def peft_config(model: nn.Module, spec: MethodSpec, head_modules: tuple[str, ...]):
    """The PEFT config of a baseline, with the spec's rank, scaling, dropout, targets and saved modules."""
    from peft import LoraConfig, PrefixTuningConfig, VeraConfig
    from peft import KasaConfig as PeftKasaConfig

    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    if spec.method == "prefix":  # PEFT trains a sequence classifier's head itself
        return PrefixTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=spec.r)
    if spec.method == "vera":
        return VeraConfig(r=spec.r, target_modules=targets, vera_dropout=spec.dropout,
                          modules_to_save=list(head_modules) or None, task_type=peft_task_type(model))
    common: dict[str, Any] = dict(lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                                  modules_to_save=list(head_modules) or None, task_type=peft_task_type(model))
    if spec.method == "adalora":
        return adalora_config(spec.r, cast(int, spec.total_steps), **common)  # __post_init__ requires total_steps
    variants: dict[str, dict[str, Any]] = {
        "lora": {}, "milora": {}, "pissa": {"init_lora_weights": "pissa"}, "dora": {"use_dora": True},
        "peft-kasa": {"kasa_config": PeftKasaConfig(beta=spec.beta, gamma=spec.gamma)}}
    variant = variants[spec.method]
    return LoraConfig(r=spec.r, **common, **variant)


def peft_task_type(model: nn.Module) -> str | None:
    """PEFT's task type for a transformers model: it picks the ``PeftModel`` subclass (and the head to save)."""
    if is_sequence_classifier(model):
        return "SEQ_CLS"
    if type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "CAUSAL_LM"
    return None


def peft_kasa_terms(model: PeftModule) -> RegularizationTerms:
    """PEFT's ``_get_kasa_loss()`` split into its parts: ``sum_layers beta * L2`` and ``sum_layers gamma * L3``."""
    l2, l3 = [], []
    for _, layer in _lora_layers(model):
        for name in model.active_adapters:
            if name in getattr(layer, "lora_diag", {}):
                config = model.peft_config[name].kasa_config
                l2.append(config.beta * singular_value_penalty(layer.lora_diag[name]))
                l3.append(config.gamma * orthogonality_penalty(layer.lora_A[name].weight, layer.lora_B[name].weight))
    if not l2:
        zero = torch.zeros(())
        return RegularizationTerms(zero, zero)
    return RegularizationTerms(torch.stack(l2).sum(), torch.stack(l3).sum())


def _lora_layers(model: nn.Module) -> list[tuple[str, PeftModule]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def _load_full_weights(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Copy a ``save_pretrained`` directory's weights into ``model`` (transformers resolves shards and ties)."""
    saved = cast(Any, type(model)).from_pretrained(  # a transformers model
       str(directory), dtype=next(model.parameters()).dtype)
    model.load_state_dict(saved.state_dict())
    return model


def recorded_method(directory: str | os.PathLike, method: str | None = None) -> str:
    """The method recorded in ``directory`` (or ``method`` when there is no record); a mismatch, or a damaged
    record, is an error. `load_trained` checks it too; call this to fail before loading a base model."""
    record = Path(directory) / METHOD_FILE
    if not record.is_file():
        if method is None:
            raise FileNotFoundError(f"{directory} has no {METHOD_FILE}: pass the training method explicitly")
        return method
    recorded = read_json_object(record, RECORD_FIX).get("method")
    if recorded not in METHODS:
        raise ValueError(f"{record} is damaged: its 'method' is {recorded!r}, not one of {', '.join(METHODS)}: "
                         f"{RECORD_FIX}")
    if method is not None and method != recorded:
        raise ValueError(f"{directory} holds a '{recorded}' run, not '{method}': pass method='{recorded}'")
    return recorded
