"""MkDocs hooks: publish the plots under ``benchmarks/results/`` with the site, so that the results pages show
the committed figures themselves rather than copies kept in ``docs/``."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    for path in sorted(FIGURES.rglob("*.png")):
        files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files
