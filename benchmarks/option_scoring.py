"""How fast the commonsense options are scored: our `option_logliks` (each prompt run once, its key/value cache
shared by its options) against lm-evaluation-harness (`HFLM`: one forward pass per prompt + option, except that
options differing only in their last token share one, its logits cache), on SmolLM2 and the same fixed examples of
the eight commonsense sets.

Both score the same options through the chat template (the commonsense table's setting), so their accuracies
must be equal set by set (issue 18's cross-check); the two alternate (A B A B ...) and the medians are compared.

    python benchmarks/option_scoring.py [--samples 6 --repeats 3 --threads 1]
"""

from __future__ import annotations

import argparse
import functools
import sys
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine_info, machine_sentence, median, write_results  # noqa: E402

from kasa_peft.models import load_model  # noqa: E402
from kasa_peft.pipelines.base import fixed_subset  # noqa: E402
from kasa_peft.pipelines.causal_lm import OPTION_SCORER, choose_option, option_logliks  # noqa: E402
from kasa_peft.pipelines.harness import run_harness  # noqa: E402
from kasa_peft.tasks.commonsense import (  # noqa: E402
    COMMONSENSE_SETS, answer_options, answer_target, format_prompt, gold_option, load_commonsense,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH_SIZE = 8


def our_accuracies(model, tokenizer, data_dir: Path, samples: int) -> dict[str, float]:
    accuracies = {}
    for name in COMMONSENSE_SETS:
        examples = fixed_subset(load_commonsense(name, str(data_dir), "test"), samples)
        options = [[answer_target(o) for o in answer_options(name, e)] for e in examples]
        logliks = option_logliks(model, tokenizer, [format_prompt(e) for e in examples], options,
                                 batch_size=BATCH_SIZE, use_chat_template=True, progress=False)
        chosen = choose_option(logliks)
        accuracies[name] = sum(c == gold_option(name, e) for c, e in zip(chosen, examples, strict=True)) / len(examples)
    return accuracies


def lm_eval_accuracies(model, tokenizer, data_dir: Path, samples: int) -> dict[str, float]:
    results = run_harness(model, tokenizer, ["commonsense:all"], str(data_dir), True, BATCH_SIZE, samples)
    return {name: results[f"kasa_commonsense_{name}"]["acc,none"] for name in COMMONSENSE_SETS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--samples", type=int, default=6, help="examples per set (fixed subset)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2", "causal_lm")
    scorers = {"ours": our_accuracies, "lm_eval": lm_eval_accuracies}
    accuracies: dict[str, dict[str, float]] = {}

    def score(name: str) -> None:
        accuracies[name] = scorers[name](model, tokenizer, args.data_dir, args.samples)

    candidates = {name: functools.partial(score, name) for name in scorers}
    times = alternate(candidates, args.repeats)
    medians = {name: median(values) for name, values in times.items()}
    options = sum(len(answer_options(name, e)) for name in COMMONSENSE_SETS
                  for e in fixed_subset(load_commonsense(name, str(args.data_dir), "test"), args.samples))
    equal = accuracies["ours"] == accuracies["lm_eval"]
    per_set = ", ".join(f"{name} {100 * accuracy:.0f}" for name, accuracy in accuracies["ours"].items())
    machine = {**machine_info(), "lm_eval": metadata.version("lm_eval")}
    markdown = "\n".join([
        "# Scoring multiple-choice options: kasa-peft against lm-evaluation-harness", "",
        machine_sentence(machine, ("torch", "transformers")) + f" lm-eval {machine['lm_eval']}.", "",
        f"SmolLM2-135M-Instruct, {args.samples} fixed examples of each of the eight commonsense sets ({options} "
        f"options), chat template, batch {BATCH_SIZE}; median of {args.repeats} alternating runs, seconds.", "",
        "| lm-eval (a pass per option but its last token) | ours (a pass per prompt) | lm-eval / ours |",
        "|---|---|---|",
        f"| {medians['lm_eval']:.1f} | {medians['ours']:.1f} | **{medians['lm_eval'] / medians['ours']:.2f}x** |", "",
        f"Accuracies equal on every set: {'yes' if equal else '**no**'} "
        f"({per_set}).", ""])
    write_results("option_scoring", {"machine": machine, "evaluation": {"option_scorer": OPTION_SCORER},
                                     "samples": args.samples, "options": options, "times": times, "medians": medians,
                                     "accuracies": accuracies}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
