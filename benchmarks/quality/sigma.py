"""Table 6 (the paper's Figure 5): what KaSA learns, the sigma heatmaps of two tasks' trained adapters.

    python benchmarks/quality/sigma.py

No training: it draws `kasa_peft.interop.plot_sigma` for the GLUE table's seed-0 ``kasa`` adapters (kept
under ``runs/quality/glue/<task>-kasa-s0/output`` by ``glue.py``) and tabulates ``|sigma|`` per layer.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft.interop.inspection import inspect_adapter, plot_sigma  # noqa: E402
from quality import glue  # noqa: E402
from quality.harness import RESULTS, WORK  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

TABLE = "sigma"
TASKS = ("sst2", "mrpc")


def adapter_dir(work: Path, task: str) -> Path:
    return work / glue.TABLE / f"{task}-kasa-s0" / "output"


def sigma_rows(info: dict) -> list[list[str]]:
    """Per adapted layer: its name, mean and max of ``|sigma|`` and the values, largest first."""
    rows = []
    for name, layer in info["layers"].items():
        values = sorted((abs(s) for s in layer["sigma"]), reverse=True)
        rows.append([name, f"{statistics.fmean(values):.3f}", f"{values[0]:.3f}",
                     " ".join(f"{v:.2f}" for v in values)])
    return rows


def main(work: Path = WORK, results: Path = RESULTS) -> int:
    missing = [str(adapter_dir(work, t)) for t in TASKS if not (adapter_dir(work, t) / "adapter_config.json").is_file()]
    if missing:
        print(f"no trained adapter in {', '.join(missing)}: run `python benchmarks/quality/glue.py` first "
              "(its seed-0 kasa runs of these tasks)")
        return 1
    out = results / TABLE
    sections = []
    for task in TASKS:
        png = plot_sigma(adapter_dir(work, task), out / f"sigma_{task}.png")
        table = markdown_table(["layer", "mean abs(sigma)", "max", "abs(sigma), sorted"],
                               sigma_rows(inspect_adapter(adapter_dir(work, task))))
        sections.append(f"## {task}\n\n![sigma {task}]({png.name})\n\n{table}")
    (out / "summary.md").write_text(
        "# What KaSA learns (Figure 5): learned singular values sigma\n\n"
        "Seed-0 kasa adapters of the GLUE table (MiniLM-L6, r = 8 on query/value). Each heatmap: |sigma| per "
        "layer (rows) and module x index (columns), above the dropped singular values S_d.\n\n"
        + "\n".join(sections) + "\nCommand: `python benchmarks/quality/sigma.py`\n")
    print(f"{TABLE}: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
