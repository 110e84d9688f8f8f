"""The KaSA-adapted layer.

For a base layer ``y = W x + b`` and an active adapter, the forward pass is

    y = W x + b  -  us (vt x)  +  scale * B diag(sigma) A dropout(x)
        \\_____/     \\_______/     \\__________________________________/
         base      truncation:           knowledge-aware update
                   U_d S_d V_d^T x

The base weight ``W`` is never modified (until ``merge``): the truncation is a frozen rank-``d`` correction
(``d`` dropped components, ``d = r`` by default, ``KasaConfig.drop_rank``; ``us`` is out x d, ``vt`` d x in).
That keeps the original model exactly recoverable, lets several adapters each drop their own components
from the same untouched ``W`` (and mix per example in one batch), and is already the shape of a rank-``(r + d)``
LoRA on the original base. Both terms run as one rank-``(r + d)`` product, so a training step costs what a
rank-``(r + d)`` LoRA's does (benchmarks/core_speed.py compares it with PEFT's rank-``r`` LoRA).
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .config import KasaConfig
from .quantized import check_readable, looks_quantized, quantized_support, set_stored_weight, stored_weight
from .truncation import DroppedComponents

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def conv1d_class() -> type | None:
    """transformers' ``Conv1D`` if transformers is already loaded (a model using it implies it is)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def is_supported_layer(module: nn.Module) -> bool:
    """``nn.Linear``, transformers' ``Conv1D``, or a quantized linear layer registered in `core.quantized`."""
    if looks_quantized(module):
        return quantized_support(module) is not None
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def is_adaptable_layer(module: nn.Module) -> bool:
    """A supported layer, or a quantized linear layer KaSA cannot read (targeting it gives a clear error)."""
    return is_supported_layer(module) or looks_quantized(module)


def is_transposed(module: nn.Module) -> bool:
    """Conv1D stores its weight as (in, out); nn.Linear as (out, in)."""
    return not isinstance(module, nn.Linear)


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The ``weight`` tensor a layer stores (as stored: (in, out) for ``Conv1D``, packed for a quantized layer)."""
    return cast(torch.Tensor, module.weight)


def weight_matrix(module: nn.Module, layer_name: str = "") -> torch.Tensor:
    """The layer's weight as an (out, in) matrix: a view (no copy) of a float weight; for a quantized layer a new
    float tensor, the dequantized weight the layer computes with (an unsupported quantized layer raises)."""
    check_readable(module, layer_name or type(module).__name__)
    support = quantized_support(module)
    if support is not None:
        return support.dequantize(stored_weight(module, support))
    weight = layer_weight(module)
    return weight.T if is_transposed(module) else weight


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """``(out, in)`` of a supported layer, without dequantizing a quantized one."""
    if quantized_support(module) is not None:
        return cast(int, module.out_features), cast(int, module.in_features)
    return cast(tuple[int, int], tuple(weight_matrix(module).shape))


def is_half_precision(module: nn.Module) -> bool:
    return quantized_support(module) is None and layer_weight(module).element_size() < 4


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor; a DTensor sharded by FSDP2 is all-gathered (a collective: every rank must call it).

    Differentiable: the gradient of a function of the full tensor flows back to each rank's shard.
    """
    gather = getattr(tensor, "full_tensor", None)
    return gather() if callable(gather) else tensor


@torch.no_grad()
def copy_full_into(target: torch.Tensor, value: torch.Tensor) -> None:
    """``target.copy_(value)`` where ``value`` is the whole tensor; a DTensor ``target`` (FSDP2) keeps only its
    own shard of ``value``, cut locally (every rank holds ``value``, so nothing is communicated)."""
    if hasattr(target, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        sharded = cast("DTensor", target)
        value = distribute_tensor(value.to(target.device, target.dtype), sharded.device_mesh, sharded.placements,
                                  src_data_rank=None)
    target.copy_(value)


def adapter_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """Adapters train in float32 on half-precision bases (as PEFT's autocast_adapter_dtype)."""
    return weight_dtype if weight_dtype in (torch.float32, torch.float64) else torch.float32


class KasaAdapter(nn.Module):
    """One adapter of one layer: trainable ``A``, ``B``, ``sigma``, the frozen dropped components (``d`` of them,
    the width of ``dropped``'s factors) and ``sigma_init``, the values ``sigma`` started from (NaN where unknown,
    e.g. an adapter imported from PEFT), so what training changed can be shown."""

    sigma: torch.Tensor  # an nn.Parameter, or a buffer when sigma is not learnt
    sigma_init: torch.Tensor
    dropped_us: torch.Tensor
    dropped_vt: torch.Tensor

    def __init__(self, in_features: int, out_features: int, config: KasaConfig, dropped: DroppedComponents,
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> None:
        super().__init__()
        r = config.r
        self.scale = config.scale
        self.A = nn.Parameter(torch.empty(r, in_features, dtype=dtype, device=device))
        self.B = nn.Parameter(torch.zeros(out_features, r, dtype=dtype, device=device))
        if config.learn_sigma:
            start = torch.randn if config.sigma_init == "randn" else torch.ones
            self.sigma = nn.Parameter(start(r, dtype=dtype, device=device))
        else:
            self.register_buffer("sigma", torch.ones(r, dtype=dtype, device=device))
        self.register_buffer("sigma_init", self.sigma.detach().clone())
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.register_buffer("dropped_us", dropped.us.to(device=device, dtype=dtype))
        self.register_buffer("dropped_vt", dropped.vt.to(device=device, dtype=dtype))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @property
    def dropped_rank(self) -> int:
        """``d``, the number of singular components this adapter drops from the layer's weight."""
        return self.dropped_vt.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``scale * B diag(sigma) A dropout(x) - us vt x`` for ``x`` of any leading shape."""
        # one rank-(r + d) product [B diag(scale sigma), -us] [A; vt] x, so x and y are read and written once
        x = x.to(self.A.dtype)
        if isinstance(self.dropout, nn.Identity):
            down = x @ torch.cat([self.A, self.dropped_vt]).T
        else:
            down = torch.cat([self.dropout(x) @ self.A.T, x @ self.dropped_vt.T], dim=-1)
        return down @ torch.cat([self.B * (self.scale * self.sigma), -self.dropped_us], dim=1).T

    def delta_weight(self) -> torch.Tensor:
        """The (out, in) matrix this adapter adds to the original weight, in float32 or wider."""
        dtype = torch.promote_types(self.A.dtype, torch.float32)
        a, b, sigma = self.A.to(dtype), self.B.to(dtype), self.sigma.to(dtype)
        return (b * (self.scale * sigma)) @ a - self.dropped_us.to(dtype) @ self.dropped_vt.to(dtype)


class KasaLayer(nn.Module):
    """Wraps an ``nn.Linear`` or transformers ``Conv1D`` and holds its KaSA adapters by name."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None
        # what a merge replaced, when subtracting the delta again would not restore it (see ``merge``)
        self.replaced_by_merge: dict[str, Any] | None = None
        self.disabled = False
        # set for one forward pass by ``kasa_peft.adapters_per_example``: one adapter name (or None) per row
        self.per_example_adapters: Sequence[str | None] | None = None

    @property
    def out_features(self) -> int:
        return weight_shape(self.base_layer)[0]

    @property
    def in_features(self) -> int:
        return weight_shape(self.base_layer)[1]

    def adapter(self, name: str) -> KasaAdapter:
        """The adapter ``name`` of this layer (``KeyError`` if that adapter does not adapt it)."""
        return cast(KasaAdapter, self.adapters[name])

    def add_adapter(self, name: str, config: KasaConfig, dropped: DroppedComponents) -> KasaAdapter:
        weight = layer_weight(self.base_layer)
        dtype = torch.float32 if quantized_support(self.base_layer) is not None else adapter_dtype(weight.dtype)
        adapter = KasaAdapter(self.in_features, self.out_features, config, dropped, dtype=dtype, device=weight.device)
        self.adapters[name] = adapter
        return adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base_layer(x)
        if self.disabled or self.merged_adapter is not None:
            return y
        if self.per_example_adapters is not None:
            return self._forward_per_example(x, y)
        if self.active_adapter is None or self.active_adapter not in self.adapters:  # none active, or not here
            return y
        delta: torch.Tensor = self.adapter(self.active_adapter)(x)
        return y + delta.to(y.dtype)

    def _forward_per_example(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        names = self.per_example_adapters
        assert names is not None  # forward calls this only within adapters_per_example
        if len(names) != x.shape[0]:
            raise ValueError(f"adapters_per_example got {len(names)} names for a batch of {x.shape[0]} examples")
        y = y.clone()
        for name in dict.fromkeys(n for n in names if n is not None and n in self.adapters):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=x.device)
            y[rows] += self.adapters[name](x[rows]).to(y.dtype)
        return y

    def _add_to_weight(self, delta: torch.Tensor) -> None:
        weight = layer_weight(self.base_layer)
        oriented = delta.T if is_transposed(self.base_layer) else delta
        weight.data = (weight.data.to(delta.dtype) + oriented.to(weight.device)).to(weight.dtype)

    @torch.no_grad()
    def merge(self, keep_replaced: bool = True) -> None:
        """Fold the active adapter (truncation and update) into the base weight: ``W <- W + delta``.

        ``unmerge`` gives back the base weight bit-exact on every base but float32 / float64 ones, where it
        subtracts ``delta`` again (exact to float32 rounding, ~1e-7 relative). On a float16 / bfloat16 weight
        ``W + delta`` is rounded to 8 or 11 bits, which subtraction cannot undo (up to 7.8e-3 relative and logits
        0.6 off on SmolLM2 in bfloat16), so the weight it replaces is kept (one more copy of each merged weight).
        A quantized weight is dequantized, ``delta`` added and the sum requantized as the base was (with a warning: the
        merged layer computes the adapter only up to the base's rounding); the quantized weight it replaces is
        kept (an eighth of a float32 copy for 4 bits). ``keep_replaced=False`` keeps nothing (for
        ``merge_and_unload``: no unmerge follows).
        """
        if self.merged_adapter is not None or self.active_adapter is None or self.active_adapter not in self.adapters:
            return
        delta = self.adapter(self.active_adapter).delta_weight()
        support = quantized_support(self.base_layer)
        if support is not None:
            warnings.warn(f"merging a KaSA adapter into a {support.description} requantizes its weight: the merged "
                          "model computes the adapter only up to the base's rounding (unmerge restores the base "
                          "exactly)", stacklevel=3)
            replaced: dict[str, Any] | None = stored_weight(self.base_layer, support)
            merged = weight_matrix(self.base_layer).to(delta.dtype) + delta.to(layer_weight(self.base_layer).device)
            set_stored_weight(self.base_layer, support.quantize(self.base_layer, merged))
        else:
            replaced = {"data": layer_weight(self.base_layer).data} if is_half_precision(self.base_layer) else None
            self._add_to_weight(delta)
        self.replaced_by_merge = replaced if keep_replaced else None
        self.merged_adapter = self.active_adapter

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged_adapter is None:
            return
        if self.replaced_by_merge is None:
            self._add_to_weight(-self.adapter(self.merged_adapter).delta_weight())
        elif "data" in self.replaced_by_merge:
            self.base_layer.weight.data = self.replaced_by_merge["data"]
        else:
            set_stored_weight(self.base_layer, self.replaced_by_merge)
        self.replaced_by_merge = None
        self.merged_adapter = None


class ModulesToSave(nn.Module):
    """A module trained fully: one copy per adapter, the original kept untouched for the base model."""

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original = original
        self.copies = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self.per_example_adapters: Sequence[str | None] | None = None

    def add_copy(self, name: str) -> nn.Module:
        module = copy.deepcopy(self.original)
        for param in module.parameters():
            param.requires_grad_(True)
        self.copies[name] = module
        return module

    def module_for(self, name: str | None) -> nn.Module:
        if self.disabled or name is None or name not in self.copies:
            return self.original
        return self.copies[name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.per_example_adapters is None:
            output: torch.Tensor = self.module_for(self.active_adapter)(x, *args, **kwargs)
            return output
        names = self.per_example_adapters
        groups = {n: [i for i, m in enumerate(names) if m == n] for n in dict.fromkeys(names)}
        outputs: dict[str | None, torch.Tensor] = {n: self.module_for(n)(x[rows], *args, **kwargs)
                                                   for n, rows in groups.items()}
        first = next(iter(outputs.values()))
        result = first.new_empty((x.shape[0], *first.shape[1:]))
        for n, rows in groups.items():
            result[torch.tensor(rows, device=x.device)] = outputs[n]
        return result
