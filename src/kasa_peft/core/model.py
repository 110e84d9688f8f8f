"""Model-level operations: inject adapters, switch, disable, merge, unload, count parameters."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch
from torch import nn

from ..providers import MODEL_INTEGRATIONS
from .config import ALL_LINEAR, KasaConfig, matches
from .layer import KasaLayer, ModulesToSave, is_adaptable_layer, is_transposed, weight_matrix, weight_shape
from .quantized import check_readable, quantized_support
from .truncation import DroppedComponents, check_drop, check_rank, dropped_share, truncate_for, warn_if_large

STATE_ATTRIBUTE = "_kasa_state"
# the attribute names transformers gives sequence/token classification heads (as PEFT's SEQ_CLS_HEAD_NAMES)
CLASSIFICATION_HEADS = ("classifier", "score")


@dataclass
class KasaState:
    """What the model knows about its adapters (stored on the model as ``_kasa_state``)."""

    configs: dict[str, KasaConfig] = field(default_factory=dict)
    active: str | None = None


def kasa_state(model: nn.Module) -> KasaState:
    state: KasaState | None = getattr(model, STATE_ATTRIBUTE, None)
    if state is None:
        raise ValueError("this model has no KaSA adapter: call kasa_peft.inject(model, config) or load_adapter first")
    return state


def kasa_layers(model: nn.Module) -> Iterator[tuple[str, KasaLayer]]:
    return ((name, m) for name, m in unwrapped_modules(model) if isinstance(m, KasaLayer))


def saved_modules(model: nn.Module) -> Iterator[tuple[str, ModulesToSave]]:
    return ((name, m) for name, m in unwrapped_modules(model) if isinstance(m, ModulesToSave))


def adapter_wrappers(model: nn.Module) -> list[tuple[str, KasaLayer | ModulesToSave]]:
    """Every `KasaLayer`, then every `ModulesToSave`: the modules that hold adapters, by name."""
    return [*kasa_layers(model), *saved_modules(model)]


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers KaSA can adapt (wrapped ones by their original name), and of quantized linear layers it
    cannot read (so that targeting one is a clear error, not a silent skip)."""
    return [name for name, module in unwrapped_modules(model)
            if isinstance(module, KasaLayer) or is_adaptable_layer(module)]


def unwrapped_modules(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Like ``named_modules`` (without the root), but not inside a ``KasaLayer`` or ``ModulesToSave``."""
    for name, child in module.named_children():
        yield prefix + name, child
        if not isinstance(child, (KasaLayer, ModulesToSave)):
            yield from unwrapped_modules(child, f"{prefix}{name}.")


def _under(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` or one of its parent modules matches ``patterns``."""
    parts = name.split(".")
    return any(matches(".".join(parts[:i]), patterns) for i in range(1, len(parts) + 1))


def _output_head_names(model: nn.Module) -> set[str]:
    """The LM head (``get_output_embeddings``), or else a classification head (transformers names it
    ``classifier`` or ``score``), with everything inside it (e.g. RoBERTa's ``classifier.out_proj``)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        head = next((m for n, m in model.named_children() if n in CLASSIFICATION_HEADS), None)
    head_modules = {id(m) for m in head.modules()} if head is not None else set()
    return {name for name, m in model.named_modules() if id(m) in head_modules}


def target_layer_names(model: nn.Module, config: KasaConfig) -> list[str]:
    """The layers ``config`` selects, in model order. Raises if it selects none."""
    candidates = linear_layer_names(model)
    excluded = _output_head_names(model) if config.target_modules == ALL_LINEAR else set()
    selected = [
        name for name in candidates
        if (config.target_modules == ALL_LINEAR or matches(name, config.target_modules))
        and not (config.exclude_modules and matches(name, config.exclude_modules))
        and not _under(name, config.modules_to_save)
        and name not in excluded
    ]
    if not selected:
        shown = ", ".join(candidates[:40]) + (f", ... ({len(candidates)} in all)" if len(candidates) > 40 else "")
        raise ValueError(
            f"target_modules={config.target_modules!r} matches no nn.Linear/Conv1D layer of this model "
            f"(after exclude_modules={config.exclude_modules!r}). Its linear layers are: {shown or 'none'}"
        )
    return selected


def check_adapter_name(name: object) -> None:
    """Raise unless ``name`` can name an adapter: a non-empty string without ``.`` (torch module dicts key on it)
    and without a path separator (names also name files, e.g. the judge's answers, which must stay in their
    directory)."""
    if not isinstance(name, str) or not name or any(c in name for c in "./\\\0"):
        raise ValueError(f"invalid adapter name {name!r}: use a non-empty name without '.', '/' or '\\', e.g. "
                         "'sst2' or 'sst2_v2'")


def _base_layer(model: nn.Module, name: str) -> nn.Module:
    module = model.get_submodule(name)
    return module.base_layer if isinstance(module, KasaLayer) else module


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject(model: nn.Module, config: KasaConfig, adapter_name: str = "default",
           dropped: Mapping[str, DroppedComponents] | None = None) -> nn.Module:
    """Add a KaSA adapter to ``model`` in place and make it the active, only trainable one.

    Each targeted weight gets its smallest singular components computed (``config.drop_rank``: ``r`` of them by
    default) or taken from ``dropped`` (e.g. loaded from disk or computed on another process; each layer's count
    ``d`` is the width of its factors), and the adapter ``B = 0, A ~ Kaiming, sigma ~ N(0, 1)``.
    Every check runs before the model is changed. Computing the truncation warns when it removes more than 1% of a
    weight's norm (`warn_if_large`).
    """
    check_adapter_name(adapter_name)
    state = getattr(model, STATE_ATTRIBUTE, None) or KasaState()
    if adapter_name in state.configs:
        raise ValueError(f"an adapter named '{adapter_name}' already exists on this model; pick another adapter_name "
                         "or remove it with kasa_peft.delete_adapter")
    if any(layer.merged_adapter is not None for _, layer in kasa_layers(model)):
        raise ValueError("the model has a merged adapter: call kasa_peft.unmerge(model) before adding another")
    names = target_layer_names(model, config)
    if dropped is not None and set(dropped) != set(names):
        raise ValueError(f"precomputed dropped components cover {sorted(set(dropped) ^ set(names))[:5]} differently "
                         "from the layers the config targets")
    for name in names:
        check_readable(_base_layer(model, name), name)
        shape = weight_shape(_base_layer(model, name))
        if dropped is None:
            check_drop(config, *shape, layer_name=name)
        else:
            check_dropped_shape(dropped[name], *shape, layer_name=name)
    save_names = _modules_to_save_names(model, config)
    shares = {}
    for name in names:
        base = _base_layer(model, name)
        if dropped is None:
            weight = weight_matrix(base)  # dequantized once for a quantized layer
            parts = truncate_for(weight, config)
            shares[name] = dropped_share(weight, parts)
        else:
            parts = dropped[name]
        layer = model.get_submodule(name)
        if not isinstance(layer, KasaLayer):
            layer = KasaLayer(base)
            _replace(model, name, layer)
        layer.add_adapter(adapter_name, config, parts)
    for name in save_names:
        wrapper = model.get_submodule(name)
        if not isinstance(wrapper, ModulesToSave):
            wrapper = ModulesToSave(wrapper)
            _replace(model, name, wrapper)
        wrapper.add_copy(adapter_name)
    state.configs[adapter_name] = config
    setattr(model, STATE_ATTRIBUTE, state)
    set_adapter(model, adapter_name)
    warn_if_large(shares, config)
    run_model_integrations(model)
    return model


def run_model_integrations(model: nn.Module) -> None:
    """Call ``on_adapted(model)`` of the integration registered for the library ``model``'s class comes from
    (`kasa_peft.providers.register_model_integration`): e.g. a transformers model's ``save_pretrained`` then writes
    the KaSA adapter, not a state dict that ``from_pretrained`` would load with the adapted layers at random."""
    packages = {cls.__module__.split(".")[0] for cls in type(model).__mro__}
    for package, module in MODEL_INTEGRATIONS.items():
        if package in packages:
            importlib.import_module(module).on_adapted(model)


def check_dropped_shape(dropped: DroppedComponents, out_features: int, in_features: int, layer_name: str) -> None:
    """Precomputed components must be ``us`` (out x d), ``vt`` (d x in) with ``0 <= d < min(out, in)``."""
    us, vt = dropped
    if us.dim() != 2 or vt.dim() != 2 or us.shape[0] != out_features or vt.shape[1] != in_features \
            or us.shape[1] != vt.shape[0]:
        raise ValueError(f"the dropped components given for layer '{layer_name}' have shapes {tuple(us.shape)} and "
                         f"{tuple(vt.shape)}; a ({out_features}, {in_features}) weight needs (out, d) and (d, in)")
    check_rank(us.shape[1], out_features, in_features, layer_name, setting="d")


def _modules_to_save_names(model: nn.Module, config: KasaConfig) -> list[str]:
    names = [name for name, m in unwrapped_modules(model)
             if matches(name, config.modules_to_save) and not isinstance(m, KasaLayer)]
    missing = [p for p in config.modules_to_save if not any(matches(n, (p,)) for n in names)]
    if missing:
        raise ValueError(f"modules_to_save {missing} match no module of this model; top-level modules are: "
                         f"{[n for n, _ in model.named_children()]}")
    return names


def set_adapter(model: nn.Module, adapter_name: str) -> None:
    """Make ``adapter_name`` the active adapter; only its parameters require gradients."""
    state = kasa_state(model)
    if adapter_name not in state.configs:
        raise ValueError(f"no adapter named '{adapter_name}'; this model has {sorted(state.configs)}")
    if any(layer.merged_adapter is not None for _, layer in kasa_layers(model)):
        raise ValueError("an adapter is merged into the weights: call kasa_peft.unmerge(model) before switching")
    for param in model.parameters():
        param.requires_grad_(False)
    for _, module in adapter_wrappers(model):
        module.active_adapter = adapter_name
    for param in _adapter_parameters(model, adapter_name):
        param.requires_grad_(True)
    state.active = adapter_name


def _adapter_parameters(model: nn.Module, adapter_name: str) -> Iterator[nn.Parameter]:
    for _, layer in kasa_layers(model):
        if adapter_name in layer.adapters:
            yield from layer.adapters[adapter_name].parameters()
    for _, wrapper in saved_modules(model):
        if adapter_name in wrapper.copies:
            yield from wrapper.copies[adapter_name].parameters()


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove one adapter; the others (and the base) are untouched. Deleting the active one leaves none active."""
    state = kasa_state(model)
    if adapter_name not in state.configs:
        raise ValueError(f"no adapter named '{adapter_name}'; this model has {sorted(state.configs)}")
    for _, module in adapter_wrappers(model):
        if getattr(module, "merged_adapter", None) == adapter_name:
            cast(KasaLayer, module).unmerge()  # only a KasaLayer merges
        container = module.adapters if isinstance(module, KasaLayer) else module.copies
        if adapter_name in container:
            container.pop(adapter_name)  # nn.ModuleDict.pop takes no default
        if module.active_adapter == adapter_name:
            module.active_adapter = None
    del state.configs[adapter_name]
    if state.active == adapter_name:
        state.active = None


def adapter_names_on(model: nn.Module) -> set[str]:
    """The names of the KaSA adapters on ``model`` (none for a plain model)."""
    return set(kasa_state(model).configs) if next(kasa_layers(model), None) is not None else set()


@contextlib.contextmanager
def temporary_adapter(model: nn.Module, attach: Callable[[nn.Module, str], object],
                      adapter_name: str | None = None) -> Iterator[str]:
    """Attach an adapter (``attach(model, name)``) for the duration of the block, then remove it.

    The name is ``adapter_name`` or a fresh one. Afterwards (also when ``attach`` fails) the model is exactly as
    before (`_restore`): the temporary adapter is deleted, the layers it wrapped are unwrapped, and the previously
    active adapter and every parameter's ``requires_grad`` are back.
    """
    existing = adapter_names_on(model)
    name = adapter_name or next(f"interop{i}" for i in range(len(existing) + 1) if f"interop{i}" not in existing)
    before = _snapshot(model)
    try:
        attach(model, name)
        yield name
    finally:
        _restore(model, before)


@contextlib.contextmanager
def unchanged_on_error(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block adapters may be added to ``model``; if the block raises, the model is put back exactly as
    it was (`_restore`: wrappers, state, active adapter and ``requires_grad`` included) and the error goes on."""
    before = _snapshot(model)
    try:
        yield model
    except BaseException:
        _restore(model, before)
        raise


@dataclass
class _Snapshot:
    """What adding adapters changes on a model: its state, its wrappers' active adapters, ``requires_grad``."""

    state: KasaState | None
    configs: dict[str, KasaConfig]
    active: str | None
    wrappers: dict[str, str | None]  # name of each KasaLayer / ModulesToSave -> its active adapter
    requires_grad: list[tuple[nn.Parameter, bool]]


def _snapshot(model: nn.Module) -> _Snapshot:
    state = getattr(model, STATE_ATTRIBUTE, None)
    wrappers = {name: m.active_adapter for name, m in unwrapped_modules(model)
                if isinstance(m, (KasaLayer, ModulesToSave))}
    return _Snapshot(state, dict(state.configs) if state else {}, state.active if state else None, wrappers,
                     [(p, p.requires_grad) for p in model.parameters()])


def _restore(model: nn.Module, before: _Snapshot) -> None:
    """Delete the adapters added since ``before``, put back the modules wrapped since, and the rest as it was."""
    state = getattr(model, STATE_ATTRIBUTE, None)
    for name in [n for n in (state.configs if state else {}) if n not in before.configs]:
        delete_adapter(model, name)
    for name, module in list(unwrapped_modules(model)):
        if isinstance(module, (KasaLayer, ModulesToSave)) and name not in before.wrappers:
            _replace(model, name, module.base_layer if isinstance(module, KasaLayer) else module.original)
        elif name in before.wrappers:
            cast("KasaLayer | ModulesToSave", module).active_adapter = before.wrappers[name]  # a wrapper then
    if before.state is None:
        if hasattr(model, STATE_ATTRIBUTE):
            delattr(model, STATE_ATTRIBUTE)
    else:
        setattr(model, STATE_ATTRIBUTE, before.state)
        before.state.active = before.active
    for param, requires_grad in before.requires_grad:
        param.requires_grad_(requires_grad)


def copy_adapter(model: nn.Module, source: str, adapter_name: str) -> None:
    """Add ``adapter_name``, a frozen copy of adapter ``source`` (its values now, its config); ``source`` stays the
    active, trainable one. The copy shares ``source``'s dropped components (no second truncation, no memory for
    them), so the two adapters differ only in what training changes afterwards."""
    state = kasa_state(model)
    if source not in state.configs:
        raise ValueError(f"no adapter named '{source}' to copy; this model has {sorted(state.configs)}")
    inject(model, state.configs[source], adapter_name, dropped=dropped_components(model, source))
    with torch.no_grad():
        for _, layer in kasa_layers(model):
            if source in layer.adapters:
                original, copy = layer.adapters[source], layer.adapters[adapter_name]
                for key in ("A", "B", "sigma", "sigma_init"):
                    getattr(copy, key).copy_(getattr(original, key))
        for _, wrapper in saved_modules(model):
            if source in wrapper.copies:
                wrapper.copies[adapter_name].load_state_dict(wrapper.copies[source].state_dict())
    set_adapter(model, source)


@contextlib.contextmanager
def computing_with(model: nn.Module, adapter_name: str) -> Iterator[nn.Module]:
    """Within the block the model computes with adapter ``adapter_name`` instead of the active one; which parameters
    train is unchanged (e.g. a frozen reference adapter evaluated in the middle of a training step)."""
    state = kasa_state(model)
    if adapter_name not in state.configs:
        raise ValueError(f"no adapter named '{adapter_name}'; this model has {sorted(state.configs)}")
    modules = [m for _, m in adapter_wrappers(model)]
    if any(getattr(m, "merged_adapter", None) is not None for m in modules):
        raise ValueError("an adapter is merged into the weights: call kasa_peft.unmerge(model) before switching")
    previous = [(m, m.active_adapter) for m in modules]
    active = state.active
    for module in modules:
        module.active_adapter = adapter_name
    state.active = adapter_name
    try:
        yield model
    finally:
        for module, name in previous:
            module.active_adapter = name
        state.active = active


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes exactly as the original (merged adapters are unmerged first: bit-exact
    except on a float32 / float64 weight, restored to float32 rounding, see `KasaLayer.merge`)."""
    modules = [m for _, m in adapter_wrappers(model)]
    remerge = [cast(KasaLayer, m) for m in modules if getattr(m, "merged_adapter", None) is not None]  # layers
    for layer in remerge:
        layer.unmerge()
    for module in modules:
        module.disabled = True
    try:
        yield model
    finally:
        for module in modules:
            module.disabled = False
        for layer in remerge:
            layer.merge()


@contextlib.contextmanager
def adapters_per_example(model: nn.Module, adapter_names: Sequence[str | None]) -> Iterator[nn.Module]:
    """Within the block, row ``i`` of every batch uses adapter ``adapter_names[i]`` (``None``: the original model)."""
    known = set(kasa_state(model).configs)
    unknown = sorted({n for n in adapter_names if n is not None} - known)
    if unknown:
        raise ValueError(f"unknown adapter names {unknown}; this model has {sorted(known)}")
    modules = [m for _, m in adapter_wrappers(model)]
    if any(getattr(m, "merged_adapter", None) is not None for m in modules):
        raise ValueError("per-example adapters need unmerged weights: call kasa_peft.unmerge(model) first")
    names = list(adapter_names)
    for module in modules:
        module.per_example_adapters = names
    try:
        yield model
    finally:
        for module in modules:
            module.per_example_adapters = None


def merge(model: nn.Module) -> None:
    """Fold the active adapter into the base weights: ``W <- W - us vt + scale B diag(sigma) A``."""
    for _, layer in kasa_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for _, layer in kasa_layers(model):
        layer.unmerge()


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter and give back the original model: bit-exact, also after a merge, except for a merge
    into a float32 / float64 weight, restored to float32 rounding (`KasaLayer.merge`)."""
    for name, layer in list(kasa_layers(model)):
        layer.unmerge()
        _replace(model, name, layer.base_layer)
    for name, wrapper in list(saved_modules(model)):
        _replace(model, name, wrapper.original)
    _drop_state(model)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapter and return a plain model with no trace of this library."""
    active = kasa_state(model).active
    for name, layer in list(kasa_layers(model)):
        layer.merge(keep_replaced=False)
        _replace(model, name, layer.base_layer)
    for name, wrapper in list(saved_modules(model)):
        _replace(model, name, wrapper.module_for(active))
    _drop_state(model)
    return model


def _drop_state(model: nn.Module) -> None:
    if hasattr(model, STATE_ATTRIBUTE):
        delattr(model, STATE_ATTRIBUTE)
    for param in model.parameters():
        param.requires_grad_(param.dtype.is_floating_point)  # packed quantized weights cannot require gradients


class ParameterCount(NamedTuple):
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def trainable_parameters(model: nn.Module) -> ParameterCount:
    """Trainable vs all parameters (each shared tensor counted once)."""
    params = {id(p): p for p in model.parameters()}.values()
    return ParameterCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def dropped_components(model: nn.Module, adapter_name: str) -> dict[str, DroppedComponents]:
    """The dropped components of one adapter, by layer name (what ``inject(dropped=...)`` takes)."""
    return {name: DroppedComponents(layer.adapter(adapter_name).dropped_us, layer.adapter(adapter_name).dropped_vt)
            for name, layer in kasa_layers(model) if adapter_name in layer.adapters}


def original_weight(layer: KasaLayer) -> torch.Tensor:
    """The (out, in) weight of the untouched base (what a merge replaced, or unmerging the delta on the fly)."""
    replaced = layer.replaced_by_merge
    if replaced is not None:
        support = quantized_support(layer.base_layer)
        if support is not None:
            return support.dequantize(replaced)
        data: torch.Tensor = replaced["data"]
        return data.T if is_transposed(layer.base_layer) else data
    weight = weight_matrix(layer.base_layer)
    if layer.merged_adapter is None:
        return weight
    return (weight.float() - layer.adapter(layer.merged_adapter).delta_weight()).to(weight.dtype)
