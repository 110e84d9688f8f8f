"""Before training: what KaSA's truncation would remove from each targeted weight (the pre-flight report).

For a weight ``W`` (out x in) and the ``d`` components a `KasaConfig` drops from it (``drop_rank``: ``r``, a
fixed ``d`` or ``"auto"``), the report gives ``d`` and the share of the weight's norm they carry,

    share = ||U_d S_d V_d^T||_F / ||W||_F = sqrt(s_{k-d+1}^2 + ... + s_k^2) / sqrt(s_1^2 + ... + s_k^2),

computed by the same code ``inject`` runs (so it is what training would start from), per layer and per target
module (mean and max over the layers, the worst layer named). A share above a percent or so means the
untrained adapter no longer computes the base model (README, "Spectrum-aware truncation");
`kasa_peft.pipelines.preflight` adds the loss of that untrained model next to the base model's.
"""

from __future__ import annotations

import os
import statistics
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..core import KasaConfig, inject, kasa_layers, kasa_state
from ..core.model import original_weight, temporary_adapter
from ..core.truncation import DroppedComponents, dropped_share
from .inspection import module_of, save_figure


@dataclass(frozen=True)
class LayerTruncation:
    """One targeted weight: its shape, the ``dropped`` count ``d`` and the ``share`` of ``||W||_F`` they carry;
    ``singular_values`` (descending, float64) when the report was asked for spectra."""

    name: str
    shape: tuple[int, int]
    dropped: int
    share: float
    singular_values: list[float] | None = None


@dataclass(frozen=True)
class ModuleTruncation:
    """The layers of one target module (e.g. every ``v_proj``): mean and max share, the worst layer, each ``d``."""

    module: str
    shape: tuple[int, int]
    mean_share: float
    max_share: float
    worst_layer: str
    dropped: list[int]


@dataclass(frozen=True)
class TruncationReport:
    """`truncation_report`'s result; ``base_loss`` / ``truncated_loss`` are filled in by the pipelines' pre-flight
    (the untrained truncated model's loss on ``loss_examples`` training examples, next to the base model's)."""

    r: int
    drop_rank: int | str
    drop_budget: float | None
    layers: list[LayerTruncation]
    base_loss: float | None = None
    truncated_loss: float | None = None
    loss_examples: int | None = None

    def modules(self) -> list[ModuleTruncation]:
        """Per target module, in model order."""
        groups: dict[str, list[LayerTruncation]] = {}
        for layer in self.layers:
            groups.setdefault(module_of(layer.name), []).append(layer)
        summaries = []
        for module, layers in groups.items():
            worst = max(layers, key=lambda layer: layer.share)
            shapes = {layer.shape for layer in layers}
            summaries.append(ModuleTruncation(module, layers[0].shape if len(shapes) == 1 else (-1, -1),
                                              statistics.fmean(layer.share for layer in layers), worst.share,
                                              worst.name, [layer.dropped for layer in layers]))
        return summaries

    def with_losses(self, base_loss: float, truncated_loss: float, examples: int) -> TruncationReport:
        return replace(self, base_loss=base_loss, truncated_loss=truncated_loss, loss_examples=examples)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "modules": [asdict(m) for m in self.modules()]}


def truncation_report(model: nn.Module, config: KasaConfig, spectra: bool = False) -> TruncationReport:
    """What ``inject(model, config)`` would drop from each targeted weight; ``model`` is left as it was.

    ``spectra=True`` also records each weight's singular values (a float64 SVD per layer, for `plot_spectra`).
    """
    def attach(target: nn.Module, name: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the large-truncation warning: the report shows it all
            inject(target, config, name)

    with temporary_adapter(model, attach) as name:
        return read_truncation(model, name, spectra)


def read_truncation(model: nn.Module, adapter_name: str = "default", spectra: bool = False) -> TruncationReport:
    """The report of an adapter already on ``model`` (e.g. a run's untrained start)."""
    config = kasa_state(model).configs[adapter_name]
    layers = []
    for name, layer in kasa_layers(model):
        if adapter_name not in layer.adapters:
            continue
        adapter = layer.adapter(adapter_name)
        weight = original_weight(layer)
        singular_values = torch.linalg.svdvals(weight.detach().double()).tolist() if spectra else None
        layers.append(LayerTruncation(name, cast(tuple[int, int], tuple(weight.shape)), adapter.dropped_rank,
                                      dropped_share(weight, DroppedComponents(adapter.dropped_us, adapter.dropped_vt)),
                                      singular_values))
    budget = config.drop_target()[1]
    return TruncationReport(config.r, config.drop_rank, budget, layers)


def format_truncation_report(report: TruncationReport) -> str:
    """The report as text for a terminal: one row per target module, then the losses when measured."""
    if report.drop_rank == "auto":
        setting = f"the most d <= r = {report.r} within {report.drop_budget:.2%} of ||W||_F"
    else:
        setting = f"d = {report.r if report.drop_rank == 'r' else report.drop_rank}, r = {report.r}"
    lines = [f"KaSA truncation before training: {len(report.layers)} layers, drop_rank {report.drop_rank!r} "
             f"({setting})", ""]
    modules = report.modules()
    width = max(len(m.module) for m in modules)
    worst_width = max(len(m.worst_layer) for m in modules)
    lines.append(f"{'module':<{width}}  {'shape':>9}  {'removed, mean':>13}  {'removed, max':>12}  "
                 f"{'worst layer':<{worst_width}}  d per layer (model order)")
    for m in modules:
        shape = "x".join(map(str, m.shape)) if m.shape[0] > 0 else "mixed"
        lines.append(f"{m.module:<{width}}  {shape:>9}  {m.mean_share:>13.2%}  {m.max_share:>12.2%}  "
                     f"{m.worst_layer:<{worst_width}}  {' '.join(map(str, m.dropped))}")
    if report.base_loss is not None:
        truncated_loss = cast(float, report.truncated_loss)  # with_losses sets both
        lines += ["", f"loss on {report.loss_examples} training examples: base model {report.base_loss:.4f}, "
                      f"truncated untrained model {truncated_loss:.4f} "
                      f"({truncated_loss - report.base_loss:+.4f})"]
    return "\n".join(lines)


def plot_spectra(report: TruncationReport, png_path: str | os.PathLike, dpi: int = 100) -> Path:
    """Each target module's singular-value spectra (one line per layer, log scale) with the cut marked: a dot on
    each layer's largest dropped singular value, and a dashed line at ``k - r`` (the paper's cut). Top row: the
    whole spectrum; bottom row: its last ``4 r`` values. Needs a report made with ``spectra=True``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if any(layer.singular_values is None for layer in report.layers):
        raise ValueError("the report holds no spectra: make it with truncation_report(..., spectra=True)")
    modules = report.modules()
    figure, axes = plt.subplots(2, len(modules), figsize=(4.2 * len(modules), 7), dpi=dpi, squeeze=False,
                                layout="constrained")
    for column, module in enumerate(modules):
        layers = [layer for layer in report.layers if module_of(layer.name) == module.module]
        for row, axis in enumerate(axes[:, column]):
            for layer in layers:
                values = torch.tensor(layer.singular_values)
                k = len(values)
                first = 0 if row == 0 else max(k - 4 * report.r, 0)
                positions = torch.arange(first + 1, k + 1)
                axis.plot(positions, values[first:], linewidth=0.8, alpha=0.6)
                if layer.dropped:
                    axis.plot([k - layer.dropped + 1], [values[k - layer.dropped]], "o", color="black", markersize=3)
            k = len(cast(list[float], layers[0].singular_values))  # checked above: every layer has spectra
            axis.axvline(k - report.r + 0.5, color="red", linestyle="--", linewidth=1)
            axis.set_yscale("log")
            axis.set_xlabel("index i (descending)")
        axes[0, column].set_title(f"{module.module}\nremoved {module.mean_share:.2%} mean, {module.max_share:.2%} max")
        axes[0, column].set_ylabel("singular value s_i")
        axes[1, column].set_ylabel(f"last {4 * report.r} (dots: first dropped; dashed: k - r)")
    figure.suptitle(f"KaSA truncation: r = {report.r}, drop_rank {report.drop_rank!r}"
                    + (f", budget {report.drop_budget:.2%}" if report.drop_budget else ""))
    return save_figure(figure, png_path, dpi)
