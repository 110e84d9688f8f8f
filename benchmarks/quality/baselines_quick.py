"""The quick pass of the added baselines (issue 25): one seed, one short task each, to catch one that does not learn.

    python benchmarks/quality/baselines_quick.py [--jobs 1 --threads 1] [--only sst2- boolq-]

Not a comparison (one seed, a few dozen steps): each method must beat the untrained model, i.e. the majority
class on SST-2 dev, and lower its training loss. ``lora`` is the reference row, with the same schedule.

* MiniLM (``minilm``) on ``glue:sst2``: the GLUE table's SST-2 settings (`glue.settings`: r = 8, lr 1e-2 for
  adapter and head, batch 16, max length 128) on ``TRAIN_SAMPLES`` fixed training examples for one epoch, dev on
  ``DEV_SAMPLES`` fixed examples; ``ft-top2`` trains its two blocks at the table's full fine-tuning rate
  (``glue.FFT_LR``). Every added method a BERT encoder takes (``prefix`` and ``parallel`` are refused on it).
* SmolLM2 (``smollm2``) on ``commonsense:boolq``: ``prefix`` and ``parallel``, which need a causal LM with its MLP as
  one module, and ``lora``: ``LLM_STEPS`` steps of batch 4 (lr 3e-4, r = 8, cutoff 256), scored on
  ``LLM_TEST`` fixed test questions by option log-likelihood.

A method whose score and loss barely moved at the shared rate gets one more run at another rate (``PROBES``,
``LLM_PROBES``): a check that it learns at all, not a tuned rate for the tables (`harness.METHOD_LR_FACTOR` is where a
table's recorded probe would go).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality import glue  # noqa: E402
from quality.glue import Schedule  # noqa: E402
from quality.harness import REPO, Record, Run, main, with_method  # noqa: E402
from quality.summary import machine_line, markdown_table  # noqa: E402

TABLE = "baselines_quick"
TRAIN_SAMPLES, DEV_SAMPLES = 512, 300
QUICK = Schedule(train_samples=TRAIN_SAMPLES, epochs=1, lr=1e-2)
GLUE_METHODS = ("lora", "bitfit", "adapter-h", "adapter-p", "adapter-l", "adapter-d", "series", "ft-top2", "vera",
                "dylora")
LLM_METHODS = ("lora", "prefix", "parallel")
# Second tries at another learning rate for the methods whose score or loss barely moved at the first rate
# (ft-top2 at glue.FFT_LR, vera at 1e-2; on boolq parallel and prefix at 3e-4): do they learn at all on this budget?
PROBES = {"ft-top2": 1e-3, "vera": 5e-2}
LLM_PROBES = {"parallel": 3e-3, "prefix": 1e-2}
LLM_STEPS, LLM_TEST = 20, 40


def runs() -> list[Run]:
    glue_runs = [Run(f"sst2-{method}-s0",
                     glue.settings("sst2", method, 0, QUICK, max_eval_samples=DEV_SAMPLES,
                                   **({"lr": glue.FFT_LR} if method == "ft-top2" else {})),
                     {"task": "sst2", "method": method}) for method in GLUE_METHODS]
    glue_runs += [Run(f"sst2-{method}-lr{lr:g}-s0",
                      glue.settings("sst2", method, 0, QUICK, max_eval_samples=DEV_SAMPLES, lr=lr),
                      {"task": "sst2", "method": method}) for method, lr in PROBES.items()]
    llm = {"task": "commonsense:boolq", "model": "smollm2", "r": 8, "alpha": 16.0, "lr": 3e-4, "epochs": 1.0,
           "max_steps": LLM_STEPS, "batch_size": 4, "max_length": 256, "max_train_samples": 4 * LLM_STEPS,
           "max_eval_samples": LLM_TEST, "num_beams": 1, "max_new_tokens": 16, "seed": 0}
    llm_runs = [Run(f"boolq-{method}-s0", with_method(llm, method), {"task": "boolq", "method": method})
                for method in LLM_METHODS]
    llm_runs += [Run(f"boolq-{method}-lr{lr:g}-s0", {**with_method(llm, method), "lr": lr},
                     {"task": "boolq", "method": method}) for method, lr in LLM_PROBES.items()]
    return glue_runs + llm_runs


def majority_share(record: Record) -> float:
    """The share of the run's evaluation examples in their most common class (what an untrained model that always
    answers the same scores at best), from the same fixed subset the run was scored on."""
    from collections import Counter

    from kasa_peft.pipelines.base import fixed_subset
    from kasa_peft.tasks.commonsense import gold_option, load_commonsense
    from kasa_peft.tasks.glue import load_glue

    config = record["run"]["config"]
    data, limit, task = REPO / config["data_dir"], config["max_eval_samples"], record["labels"]["task"]
    if task == "boolq":
        golds = [gold_option(task, e) for e in fixed_subset(load_commonsense(task, data, "test"), limit)]
    else:
        golds = fixed_subset(load_glue(task, data, "dev").labels, limit)
    return max(Counter(golds).values()) / len(golds)


def summarise(records: list[Record], out: Path) -> None:
    rows = []
    for record in records:
        run = record["run"]
        losses = [entry["loss"] for entry in run["losses"]] if run.get("losses") else []
        first, last = (f"{losses[0]:.3f}", f"{losses[-1]:.3f}") if losses else ("", "")
        metrics = run["final"]["metrics"]
        rows.append([record["labels"]["task"], record["labels"]["method"], run["config"]["model"],
                     f"{run['config']['lr']:g}", str(run["trainable_parameters"]), str(run["optimizer_steps"]),
                     first, last, f"{100 * metrics[run['main_metric']]:.1f}",
                     f"{100 * majority_share(record):.1f}", run["main_metric"],
                     f"{run['wall_time_seconds']:.0f}"])
    (out / "summary.md").write_text(
        "# Quick pass of the added baselines (one seed, short runs)\n\n"
        "Does each added method learn? Not a comparison: one seed, a few dozen steps (module docstring of "
        "benchmarks/quality/baselines_quick.py). Loss: the first and last logged training losses.\n\n"
        + markdown_table(["task", "method", "model", "lr", "trainable", "steps", "first loss", "last loss",
                          "score x100", "majority class x100", "metric", "wall s"], rows)
        + f"\nMachine: {machine_line(records)}.\nCommand: `python benchmarks/quality/baselines_quick.py`\n")


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
