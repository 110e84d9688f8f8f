"""What KaSA's truncation does to SmolLM2 before any training, per target module (the E2E table's diagnosis).

    python benchmarks/quality/truncation_damage.py [--samples 64]

For each target set it builds the exact state an E2E run of the E2E table starts from
(`kasa_peft.pipelines.run.start`: same data, seed and r = 8; the adapter's ``B = 0``, so the model is the base
with the ``r`` smallest singular components of each target removed) and reports:

* the share of each weight's norm the truncation removes (`dropped_share`), mean and max over layers;
* the language-model loss on the first ``--samples`` training examples (prompt tokens masked, as in
  training), next to the base model's (a ``lora`` start: ``B = 0`` leaves the base unchanged).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft import kasa_layers  # noqa: E402
from kasa_peft.core.layer import weight_matrix  # noqa: E402
from kasa_peft.core.truncation import DroppedComponents, dropped_share  # noqa: E402
from kasa_peft.pipelines.causal_lm import IGNORE_INDEX  # noqa: E402
from kasa_peft.pipelines.config import resolve_config  # noqa: E402
from kasa_peft.pipelines.run import RunStart, start  # noqa: E402
from quality import e2e  # noqa: E402
from quality.harness import DATA, RESULTS  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

TABLE = "truncation_damage"
TARGET_SETS = (("q_proj",), ("k_proj",), ("v_proj",), ("o_proj",), ("q_proj", "v_proj"))


def initial_state(targets: tuple[str, ...], method: str, samples: int, data_dir: Path = DATA) -> RunStart:
    """`start` of an E2E-table run with these targets (its settings, ``samples`` training examples)."""
    settings = {**e2e.SETTINGS, "method": method, "target_modules": list(targets), "max_train_samples": samples,
                "data_dir": str(data_dir)}
    return start(resolve_config({}, settings))


@torch.no_grad()
def mean_loss(begun: RunStart) -> float:
    """Token-weighted mean loss of ``begun.prepared.model`` on the run's training features."""
    model, collate = begun.prepared.model.eval(), begun.pipeline.data_collator(begun.tokenizer)
    total, tokens = 0.0, 0
    for first in range(0, len(begun.features), 8):
        batch = collate([begun.features[i] for i in range(first, min(first + 8, len(begun.features)))])
        counted = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # causal LMs predict token t + 1
        total += model(**batch).loss.item() * counted
        tokens += counted
    return total / tokens


def truncated_shares(model: torch.nn.Module) -> list[float]:
    return [dropped_share(weight_matrix(layer.base_layer), DroppedComponents(adapter.dropped_us, adapter.dropped_vt))
            for _, layer in kasa_layers(model) for adapter in layer.adapters.values()]


def main(argv: list[str] | None = None, results: Path = RESULTS) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    args = parser.parse_args(argv)
    samples = args.samples
    base_loss = mean_loss(initial_state(("q_proj", "v_proj"), "lora", samples, args.data_dir))
    rows = [["none (base model)", "-", "-", f"{base_loss:.3f}"]]
    for targets in TARGET_SETS:
        begun = initial_state(targets, "kasa", samples, args.data_dir)
        shares = truncated_shares(begun.prepared.model)
        rows.append([",".join(targets), f"{100 * statistics.fmean(shares):.2f}", f"{100 * max(shares):.2f}",
                     f"{mean_loss(begun):.3f}"])
        print(rows[-1])
    out = results / TABLE
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(
        "# KaSA's truncation on SmolLM2-135M before training (r = 8)\n\n"
        f"Share of each weight's norm removed (%, over the 30 layers) and the loss on the first {samples} E2E "
        "training examples of the E2E table (prompt masked), for the untrained KaSA model (B = 0: the base "
        "minus its 8 smallest singular components per target).\n\n"
        + markdown_table(["targets", "removed, mean %", "removed, max %", "E2E loss"], rows)
        + f"\nCommand: `python benchmarks/quality/truncation_damage.py --samples {samples}`\n")
    print(f"{TABLE}: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
