"""Table 6 (the paper's Figure 5): what KaSA learns, the sigma heatmaps of two tasks' trained adapters.

    python benchmarks/quality/sigma.py

No training: it draws the ``|sigma|`` heatmap for the GLUE table's seed-0 ``kasa`` adapters (kept
under ``runs/quality/glue/<task>-kasa-s0/output`` by ``glue.py``) and tabulates ``|sigma|`` per layer. sigma
starts from ``randn(r)`` (the reference's init), so next to the trained values it shows how far they moved:
the initial sigma is rebuilt from the run's ``run_config.json`` (`kasa_peft.pipelines.run.start`: same seed,
same initial adapter) and ``|sigma - sigma_0|`` drawn as a second heatmap.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft import kasa_layers  # noqa: E402
from kasa_peft.analysis.inspection import draw_grid, inspect_adapter  # noqa: E402
from kasa_peft.pipelines.config import RunConfig  # noqa: E402
from kasa_peft.pipelines.run import start  # noqa: E402
from kasa_peft.pipelines.run_dir import RUN_CONFIG_FILE  # noqa: E402
from quality import glue  # noqa: E402
from quality.harness import RESULTS, WORK  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

TABLE = "sigma"
TASKS = ("sst2", "mrpc")


def adapter_dir(work: Path, task: str) -> Path:
    return work / glue.TABLE / f"{task}-kasa-s0" / "output"


def initial_sigma(run_dir: Path) -> dict[str, list[float]]:
    """sigma per adapted layer as the run in ``run_dir`` started (before its first step)."""
    config = RunConfig(**json.loads((run_dir / RUN_CONFIG_FILE).read_text()))
    return {name: layer.adapters[adapter].sigma.tolist() for name, layer in kasa_layers(start(config).prepared.model)
            for adapter in layer.adapters}


def sigma_rows(info: dict, initial: dict[str, list[float]]) -> list[list[str]]:
    """Per adapted layer: its name, mean and max of ``|sigma|``, mean ``|sigma - sigma_0|``, the values sorted."""
    rows = []
    for name, layer in info["layers"].items():
        values = sorted((abs(s) for s in layer["sigma"]), reverse=True)
        moved = statistics.fmean(abs(s - s0) for s, s0 in zip(layer["sigma"], initial[name], strict=True))
        rows.append([name, f"{statistics.fmean(values):.3f}", f"{values[0]:.3f}", f"{moved:.3f}",
                     " ".join(f"{v:.2f}" for v in values)])
    return rows


def plot_panels(info: dict, panels: list[tuple[str, str, str, str]], png: Path) -> Path:
    """Heatmaps of ``info``'s layer values, one per ``(key, label, title, colormap)``, blocks x modules x index."""
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(14, 5 * len(panels)), dpi=100, layout="constrained",
                                squeeze=False)
    for axis, (key, label, title, colormap) in zip(axes[:, 0], panels, strict=True):
        draw_grid(axis, info, key, label, title, colormap)
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png)
    plt.close(figure)
    return png


def plot_sigma(info: dict, png: Path) -> Path:
    """|sigma| above the dropped singular values S_d (the paper's Figure 5 layout)."""
    return plot_panels(info, [("sigma", "|sigma|", "|sigma|: learned singular values", "viridis"),
                              ("dropped_singular_values", "S_d", "S_d: dropped singular values", "magma")], png)


def plot_change(info: dict, initial: dict[str, list[float]], png: Path) -> Path:
    """Heatmap of ``|sigma - sigma_0|``, laid out as `plot_sigma`'s."""
    change = {"layers": {name: {"change": [s - s0 for s, s0 in zip(layer["sigma"], initial[name], strict=True)]}
                         for name, layer in info["layers"].items()}}
    return plot_panels(change, [("change", "|sigma - sigma_0|", "how far sigma moved in training", "viridis")], png)


def main(work: Path = WORK, results: Path = RESULTS) -> int:
    missing = [t for t in TASKS if not (adapter_dir(work, t) / "adapter_config.json").is_file()]
    if missing:
        print(f"no trained adapter in {', '.join(str(adapter_dir(work, t)) for t in missing)} (the repository keeps "
              "the GLUE runs' records, not their adapters): train them with "
              f"`{glue.retrain_command([f'{t}-kasa-s0' for t in missing], work)}`")
        return 1
    out = results / TABLE
    sections = []
    for task in TASKS:
        directory = adapter_dir(work, task)
        info, initial = inspect_adapter(directory), initial_sigma(directory)
        png = plot_sigma(info, out / f"sigma_{task}.png")
        moved = plot_change(info, initial, out / f"sigma_change_{task}.png")
        table = markdown_table(["layer", "mean abs(sigma)", "max", "mean abs(sigma - sigma_0)", "abs(sigma), sorted"],
                               sigma_rows(info, initial))
        sections.append(f"## {task}\n\n![sigma {task}]({png.name})\n\n![change {task}]({moved.name})\n\n{table}")
    (out / "summary.md").write_text(
        "# What KaSA learns (Figure 5): learned singular values sigma\n\n"
        "Seed-0 kasa adapters of the GLUE table (MiniLM-L6, r = 8 on query/value). First heatmap: |sigma| per "
        "layer (rows) and module x index (columns), above the dropped singular values S_d. Second: how far each "
        "sigma moved from its random initial value sigma_0 (randn, rebuilt from the run's seed). Where the moves "
        "are small next to |sigma|, the first heatmap shows the initialisation, not what the task taught.\n\n"
        + "\n".join(sections) + "\nCommand: `python benchmarks/quality/sigma.py`\n")
    print(f"{TABLE}: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
