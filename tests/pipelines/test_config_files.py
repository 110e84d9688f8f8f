"""The published settings in configs/ load as run configs, and the GLUE ones match the reference's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kasa_peft.pipelines.config import read_config_file, resolve_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METHOD_NOTES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "KASA_METHOD.md"
TABLE_NAMES = {"CoLA": "cola", "SST-2": "sst2", "MRPC": "mrpc", "QNLI": "qnli", "RTE": "rte", "STS-B": "stsb"}
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_file_resolves(path):
    config = resolve_config(read_config_file(path), {"output_dir": "unused"})
    assert config.method == "kasa" and config.seed == 0


def published_glue_rows() -> dict[str, list[str]]:
    """The rows of the GLUE table in KASA_METHOD.md: task -> [batch, epochs, lr, beta, gamma]."""
    rows = {}
    for line in METHOD_NOTES.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.match(r"(\S+) \(", cells[0]) if len(cells) == 7 else None
        if name and name.group(1) in TABLE_NAMES:
            rows[TABLE_NAMES[name.group(1)]] = cells[1:6]
    return rows


def test_glue_configs_are_the_published_settings():
    if not METHOD_NOTES.is_file():
        pytest.skip(f"{METHOD_NOTES} not found")
    rows = published_glue_rows()
    assert set(rows) == set(TABLE_NAMES.values())
    for task, (batch, epochs, lr, beta, gamma) in rows.items():
        config = resolve_config(read_config_file(CONFIGS / "glue" / f"{task}.yaml"), {})
        assert config.task == f"glue:{task}"
        assert (config.batch_size, config.epochs, config.lr) == (int(batch), float(epochs), float(lr))
        assert config.beta == float(beta.split("/")[0]) and config.gamma == float(gamma.split("/")[0])
        assert (config.r, config.alpha, config.dropout, config.target_modules) == (8, 16, 0, ["query", "value"])
        assert (config.warmup_ratio, config.weight_decay, config.max_length) == (0.06, 0, 512)
