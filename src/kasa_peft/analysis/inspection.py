"""What a saved adapter holds, at a glance: ``inspect_adapter``, ``format_inspection``, ``plot_adapter``.

Per adapted layer (``delta`` notation of ``factors``):

* ``update_norm``    ``||scale B diag(sigma) A||_F``, the learned change (0 before training: ``B`` starts at 0);
* ``dropped_rank``   ``d``, the number of singular components the truncation dropped;
* ``dropped_norm``   ``||U_d S_d V_d^T||_F = ||us vt||_F``, what the truncation removed;
* ``dropped_energy`` ``||U_d S_d V_d^T||_F^2 / ||W||_F^2``, the share of the base weight's energy removed
  (``||W||_F`` is the first entry of the stored base fingerprint, so no base model is needed);
* ``sigma``          the learned singular values;
* ``sigma_change``   ``sigma - sigma_init``, what training did to them (NaN where the file does not record
  ``sigma_init``: adapters saved before it was stored, or imported from PEFT);
* ``dropped_singular_values`` ``S_d``, descending (the singular values of ``us vt``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from ..core import KasaConfig, read_adapter
from .factors import product_norm, product_singular_values, update_factors


def inspect_adapter(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-serialisable summary of the adapter directory ``path`` (see the module doc for the per-layer fields)."""
    metadata, tensors = read_adapter(path)
    config = KasaConfig.from_dict(metadata["config"])
    layers = {}
    adapter_parameters = 0
    for name in metadata["layers"]:
        A, B, sigma = (tensors[f"{name}.{k}"].double() for k in ("A", "B", "sigma"))
        sigma_init = tensors.get(f"{name}.sigma_init", torch.full_like(sigma, float("nan"))).double()
        us, vt = tensors[f"{name}.dropped_us"].double(), tensors[f"{name}.dropped_vt"].double()
        weight_norm = float(tensors[f"{name}.base_fingerprint"][0])
        dropped_norm = product_norm(us, vt)
        adapter_parameters += A.numel() + B.numel() + (sigma.numel() if config.learn_sigma else 0)
        layers[name] = {
            "shape": list(metadata["layers"][name]),
            "update_norm": product_norm(*update_factors(A, B, sigma, config.scale)),
            "dropped_rank": us.shape[1],
            "dropped_norm": dropped_norm,
            "dropped_energy": dropped_norm ** 2 / weight_norm ** 2 if weight_norm > 0 else float("nan"),
            "sigma": sigma.tolist(),
            "sigma_change": (sigma - sigma_init).tolist(),
            "dropped_singular_values": product_singular_values(us, vt).tolist(),
        }
    saved_parameters = sum(v.numel() for k, v in tensors.items() if k.startswith("modules_to_save."))
    return {
        "path": str(path), "adapter_name": metadata.get("adapter_name"), "base_model": metadata.get("base_model"),
        "kasa_peft_version": metadata.get("kasa_peft_version"), "config": config.to_dict(), "scale": config.scale,
        "targets": list(dict.fromkeys(module_of(name) for name in layers)),
        "modules_to_save": metadata["modules_to_save"],
        "trainable_parameters": {"adapter": adapter_parameters, "modules_to_save": saved_parameters,
                                 "total": adapter_parameters + saved_parameters},
        "layers": layers,
    }


def format_inspection(info: dict[str, Any]) -> str:
    """``inspect_adapter``'s summary as text for a terminal."""
    config, params = info["config"], info["trainable_parameters"]
    modules = ", ".join(info["modules_to_save"])
    saved = f"; {params['modules_to_save']:,} in {modules}" if modules else ""
    lines = [
        f"adapter     {info['path']} (name {info['adapter_name']!r}, kasa-peft {info['kasa_peft_version']})",
        f"base model  {info['base_model']}",
        f"targets     {', '.join(info['targets'])} ({len(info['layers'])} layers)",
        f"r = {config['r']}, alpha = {config['alpha']:g} (scale {info['scale']:g}), dropout = {config['dropout']:g}, "
        f"beta = {config['beta']:g}, gamma = {config['gamma']:g}, drop_rank = {config.get('drop_rank', 'r')!r}",
        f"trainable   {params['total']:,} parameters ({params['adapter']:,} in A, B, sigma{saved})",
        "",
    ]
    width = max(len(name) for name in info["layers"])
    lines.append(f"{'layer':<{width}}  {'shape':>9}  {'||update||_F':>12}  {'d':>3}  {'||dropped||_F':>13}  "
                 f"{'energy removed':>14}  {'||sigma - sigma_init||':>22}  sigma (learned singular values)")
    for name, layer in info["layers"].items():
        shape = "x".join(str(n) for n in layer["shape"])
        sigma = " ".join(f"{s:+.3g}" for s in layer["sigma"])
        change = torch.tensor(layer["sigma_change"]).norm()
        lines.append(f"{name:<{width}}  {shape:>9}  {layer['update_norm']:>12.4g}  {layer['dropped_rank']:>3}  "
                     f"{layer['dropped_norm']:>13.4g}  {layer['dropped_energy']:>14.3e}  {change:>22.4g}  {sigma}")
    return "\n".join(lines)


def sigma_grid(info: dict[str, Any], key: str) -> tuple[torch.Tensor, list[str], list[str], int]:
    """Absolute layer values ``key`` (a list per layer, or one number) laid out as (block, module x index): rows
    are blocks (the first number in a layer name, e.g. ``layer.3``), columns are the modules of a block, each
    ``width`` wide. Missing cells are NaN.

    Returns the grid, the row labels, the module labels and ``width``.
    """
    positions = {name: _position(name) for name in info["layers"]}
    rows = sorted({row for row, _ in positions.values()},
                  key=lambda row: (not row.isdigit(), int(row) if row.isdigit() else 0, row))
    modules = list(dict.fromkeys(module for _, module in positions.values()))
    values_of = {name: torch.tensor(layer[key], dtype=torch.float32).reshape(-1).abs()
                 for name, layer in info["layers"].items()}
    width = max(values.numel() for values in values_of.values())
    grid = torch.full((len(rows), len(modules) * width), float("nan"))
    for name, (row, module) in positions.items():
        values = values_of[name]
        start = modules.index(module) * width
        grid[rows.index(row), start:start + len(values)] = values
    return grid, rows, _short_labels(modules), width


def module_of(name: str) -> str:
    """The module part of a layer name, without its block: ``encoder.layer.3.attention.self.query`` gives
    ``attention.self.query``."""
    return _position(name)[1]


def _position(name: str) -> tuple[str, str]:
    match = re.match(r"(?:.*?\.)?(\d+)\.(.+)$", name)
    return (match.group(1), match.group(2)) if match else ("-", name)


def _short_labels(modules: list[str]) -> list[str]:
    """Each module's shortest dotted suffix that no other module shares."""
    labels = []
    for module in modules:
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            label = ".".join(parts[-depth:])
            if sum(m == label or m.endswith("." + label) for m in modules) == 1:
                break
        labels.append(label)
    return labels


def draw_grid(axis, info: dict[str, Any], key: str, label: str, title: str, colormap: str = "viridis") -> None:
    """Draw `sigma_grid` ``(info, key)`` as a heatmap with its colour bar on a matplotlib ``axis``."""
    import matplotlib

    grid, rows, modules, width = sigma_grid(info, key)
    cmap = matplotlib.colormaps[colormap].copy()
    cmap.set_bad("#dddddd")
    image = axis.imshow(grid.numpy(), aspect="auto", interpolation="nearest", cmap=cmap)
    axis.figure.colorbar(image, ax=axis, fraction=0.04, pad=0.01, label=label)
    for boundary in range(1, len(modules)):
        axis.axvline(boundary * width - 0.5, color="white", linewidth=2)
    axis.set_xticks([i * width + (width - 1) / 2 for i in range(len(modules))], modules)
    axis.set_yticks(range(len(rows)), rows)
    axis.set_ylabel("layer")
    axis.set_xlabel("module")
    axis.set_title(title if width == 1 else f"{title}   (columns: module, then index 1..{width} within it)")


def plot_adapter(path: str | os.PathLike, png_path: str | os.PathLike, size: tuple[int, int] = (1400, 1200),
                 dpi: int = 100) -> Path:
    """Draw what training changed, as heatmaps over blocks x modules (the layout of the paper's Figure 5): the
    update norm ``||scale B diag(sigma) A||_F`` per layer, ``|sigma - sigma_init|`` per index (grey where the
    file does not record ``sigma_init``), and the energy the truncation removed per layer; writes a ``size`` PNG.
    """
    info = inspect_adapter(path)
    figure = _pyplot().figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    axes = figure.subplots(3, 1)
    panels = (("update_norm", "||update||_F", "||scale B diag(sigma) A||_F: the learned change per layer", "viridis"),
              ("sigma_change", "|sigma - sigma_init|", "|sigma - sigma_init|: what training did to sigma", "viridis"),
              ("dropped_energy", "share of ||W||_F^2", "energy the truncation removed per layer", "magma"))
    for axis, (key, label, title, colormap) in zip(axes, panels, strict=True):
        draw_grid(axis, info, key, label, title, colormap)
    figure.suptitle(f"{info['path']}  (r = {info['config']['r']}, base {info['base_model']})")
    return save_figure(figure, png_path, dpi)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def save_figure(figure, png_path: str | os.PathLike, dpi: int) -> Path:
    """Write a matplotlib ``figure`` as a PNG atomically (through a partial file and a rename) and close it."""
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    partial = png_path.with_name(f".{png_path.name}.partial")
    try:
        figure.savefig(partial, dpi=dpi, format="png")
        os.replace(partial, png_path)
    finally:
        _pyplot().close(figure)
        partial.unlink(missing_ok=True)
    return png_path
