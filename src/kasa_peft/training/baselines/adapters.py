"""The bottleneck-adapter baselines of the KaSA paper's tables, each placed as the paper that defined it.

With d the hidden size, m the bottleneck size (the method's ``r``) and L blocks, trainable parameters besides the
head:

* ``adapter-h`` (Houlsby et al. 2019): two adapters per block, on the attention's output and on the MLP's, before
  each residual; with biases, swish (as AdapterHub's Houlsby config); the model's normalisation layers are trained
  too, as in the paper: ``2 L (2md + d + m)`` plus the norms;
* ``adapter-p`` (Pfeiffer et al. 2021): one adapter per block, on the MLP's output; biases, ReLU: ``L (2md + d + m)``;
* ``adapter-l`` (Lin et al. 2020): one adapter per block on the block's output, with its own LayerNorm first;
  biases, ReLU: ``L (2md + d + m + 2d)``;
* ``adapter-d`` (AdapterDrop, Rücklé et al. 2021): ``adapter-p`` without the adapters of the lowest
  ``floor(5 L / 12)`` blocks (the paper's "5 of 12 layers dropped"): ``(L - floor(5L/12)) (2md + d + m)``;
* ``series`` / ``parallel`` (LLM-Adapters, Hu et al. 2023): one adapter per block after the MLP, or beside it (fed
  the MLP's input, added to its output), the placements that paper found best; no biases, tanh (its defaults):
  ``2 L m d`` each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .bottleneck import BottleneckAdapter, attach
from .placement import attention_output, mlp_module, mlp_output, transformer_blocks

ADAPTER_DROP_SHARE = 5 / 12  # AdapterDrop: adapters removed from the lowest 5 of 12 layers


@dataclass(frozen=True)
class AdapterDesign:
    """Where one method puts its adapters and what they are."""

    places: tuple[str, ...]  # "attention", "mlp", "block" (the block's output) or "beside-mlp"
    activation: str
    bias: bool = True
    layer_norm: bool = False
    train_norms: bool = False
    drop_lowest: float = 0.0  # the share of blocks, from the bottom, left without adapters


DESIGNS = {
    "adapter-h": AdapterDesign(("attention", "mlp"), "silu", train_norms=True),
    "adapter-p": AdapterDesign(("mlp",), "relu"),
    "adapter-l": AdapterDesign(("block",), "relu", layer_norm=True),
    "adapter-d": AdapterDesign(("mlp",), "relu", drop_lowest=ADAPTER_DROP_SHARE),
    "series": AdapterDesign(("mlp",), "tanh", bias=False),
    "parallel": AdapterDesign(("beside-mlp",), "tanh", bias=False),
}


def check_adapters_fit(model: nn.Module, method: str) -> None:
    """Raise, without changing anything, when ``model`` has no place for ``method``'s adapters."""
    _, blocks = transformer_blocks(model)
    for place in DESIGNS[method].places:
        _target(blocks[0], place)


def add_adapters(model: nn.Module, method: str, size: int) -> None:
    """Put ``method``'s adapters of bottleneck ``size`` into ``model`` and make them (and, for ``adapter-h``, the
    normalisation layers) trainable; every other parameter is left as it is."""
    design = DESIGNS[method]
    check_adapters_fit(model, method)
    _, blocks = transformer_blocks(model)
    config: Any = model.config
    width: int = config.hidden_size  # what every place outputs (and a parallel adapter's MLP takes in)
    for block in list(blocks)[int(design.drop_lowest * len(blocks)):]:
        for place in design.places:
            adapter = BottleneckAdapter(width, size, design.activation, design.bias, design.layer_norm)
            attach(block.get_submodule(_target(block, place)), adapter, parallel=place == "beside-mlp")
    if design.train_norms:
        for module in model.modules():
            if "Norm" in type(module).__name__:
                module.requires_grad_(True)


def _target(block: nn.Module, place: str) -> str:
    """The name inside ``block`` of the module whose output an adapter at ``place`` changes ("": the block)."""
    return {"attention": attention_output, "mlp": mlp_output, "beside-mlp": mlp_module,
            "block": lambda _: ""}[place](block)

