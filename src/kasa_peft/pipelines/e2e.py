"""E2E NLG: meaning representation -> restaurant description with a causal LM, scored like the challenge.

Training pairs are ``(format_mr(mr), format_target(ref))``, one per reference row. Evaluation decodes
once per distinct MR (beam search by default) and scores the outputs against all references of that MR
with the official metric set. It writes ``e2e_predictions.txt`` (one line per MR) and
``e2e_references.csv`` (the evaluated MRs' rows), which ``kasa-peft score e2e`` scores again.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..tasks.e2e import e2e_metrics, format_mr, format_target, group_references, load_e2e, read_e2e_csv
from .base import Metrics, fixed_subset, write_atomically
from .config import RunConfig, required
from .generation import Decoding, PromptTargetPipeline

PREDICTIONS_FILE = "e2e_predictions.txt"
REFERENCES_FILE = "e2e_references.csv"


@dataclass
class E2EPipeline(PromptTargetPipeline):
    mrs: list[str]
    references: list[list[str]]
    main_metric = "BLEU"

    def evaluation_summary(self) -> str:
        return f"{len(self.mrs)} meaning representations, {self.decoding}"

    def evaluate(self, model: nn.Module, tokenizer, output_dir: Path | None) -> Metrics:
        generations = self.decoding.generate(model, tokenizer, [format_mr(mr) for mr in self.mrs])
        outputs = [" ".join(text.split()) for text in generations]  # one line per MR
        if output_dir is not None:
            write_atomically(output_dir / PREDICTIONS_FILE, "".join(line + "\n" for line in outputs))
            write_atomically(output_dir / REFERENCES_FILE, references_csv(self.mrs, self.references))
        return e2e_metrics(outputs, self.references)


def references_csv(mrs: list[str], references: list[list[str]]) -> str:
    """An E2E CSV (``mr,ref``, fully quoted like the official files) holding ``references``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["mr", "ref"])
    writer.writerows((mr, ref) for mr, refs in zip(mrs, references, strict=True) for ref in refs)
    return buffer.getvalue()


def e2e_pipeline(config: RunConfig) -> E2EPipeline:
    """Train on ``--train-file`` or ``e2e/train.csv``; evaluate on ``--eval-file`` or ``e2e/test.csv``.

    ``--max-train-samples`` limits reference rows, ``--max-eval-samples`` limits distinct MRs.
    """
    train = read_e2e_csv(config.train_file) if config.train_file else load_e2e(config.data_dir, "train")
    evaluation = read_e2e_csv(config.eval_file) if config.eval_file else load_e2e(config.data_dir, "test")
    mrs, references = group_references(evaluation)
    keep = fixed_subset(range(len(mrs)), config.max_eval_samples)
    pairs = [(format_mr(mr), format_target(ref)) for mr, ref in fixed_subset(train, config.max_train_samples)]
    return E2EPipeline(pairs, required(config.max_length, "max_length"), Decoding.from_config(config),
                       [mrs[i] for i in keep], [references[i] for i in keep])
