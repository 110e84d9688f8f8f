"""Issue 24's TRL benchmark: kasa-peft's TRL trainers against TRL's own, side by side in one run, on SmolLM2-135M.

  * SFT step time: ``KasaSFTTrainer`` (KaSA, its regulariser included) vs ``trl.SFTTrainer`` with a PEFT LoRA
    adapter of the same rank and targets, goal <= 1.02x;
  * DPO peak memory: ``KasaDPOTrainer`` (its reference is a frozen second adapter on the same base) vs
    ``trl.DPOTrainer`` on the model without PEFT (full fine-tuning, with the reference copy TRL loads), goal
    <= 0.6x, and vs ``trl.DPOTrainer`` with a PEFT LoRA adapter (the reference is the base with the adapter
    disabled), goal <= 1.05x; DPO step times are recorded too.

Every run is its own subprocess (same data, rank r=8 on q_proj, v_proj, batch, sequence length, fp32, no
activation checkpointing), the runs alternating in order so drifting load hits all alike. Step time: the interval
between consecutive optimizer steps (Trainer's ``on_step_end``), the warm-up steps dropped, median over steps and
runs. Peak memory: the subprocess's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: model
loading, the trainer's construction, a reference copy and training all included), median over runs; the resident
set after the trainer's construction is recorded next to it.

    nice -n 5 python benchmarks/trl.py [--repeats 2] [--steps 5] [--warmup 1] [--batch 1] [--length 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# this file is named trl.py: run as a script, its folder comes first on sys.path and would shadow TRL itself
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]

import psutil  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

sys.path.append(str(HERE))
import kasa_peft  # noqa: E402
from common import machine_info, machine_sentence, median, write_results  # noqa: E402
from kasa_peft.integrations.trl import KasaDPOTrainer, KasaSFTTrainer  # noqa: E402
from kasa_peft.models import load_model, loadable_name  # noqa: E402
from kasa_peft.pipelines.run import CHECKPOINTING_ARGUMENT  # noqa: E402
from kasa_peft.tasks.e2e import format_mr, format_target, load_e2e  # noqa: E402

MODEL = "smollm2"
R, ALPHA, TARGETS = 8, 16.0, ("q_proj", "v_proj")
RUNS = {"sft": ("sft-kasa", "sft-lora"), "dpo": ("dpo-kasa", "dpo-full", "dpo-lora")}
GOALS = {  # (ours, anchor, measure, goal)
    "sft_step_vs_lora": ("sft-kasa", "sft-lora", "step_s", 1.02),
    "dpo_peak_vs_full": ("dpo-kasa", "dpo-full", "peak_rss_mib", 0.6),
    "dpo_peak_vs_lora": ("dpo-kasa", "dpo-lora", "peak_rss_mib", 1.05),
    "dpo_step_vs_lora": ("dpo-kasa", "dpo-lora", "step_s", None),
    "dpo_step_vs_full": ("dpo-kasa", "dpo-full", "step_s", None),
}
LABELS = {"sft-kasa": "KasaSFTTrainer", "sft-lora": "SFTTrainer + PEFT LoRA", "dpo-kasa": "KasaDPOTrainer",
          "dpo-full": "DPOTrainer, no PEFT (+ reference copy)", "dpo-lora": "DPOTrainer + PEFT LoRA"}


def e2e_rows(count: int, data_dir: str) -> list[tuple[str, str]]:
    """``count`` E2E training rows as plain text (no chat template, whose system prompt alone would fill a short
    sequence): the MR prompt and its continuation ``" " + reference``."""
    return [(format_mr(mr), format_target(ref)) for mr, ref in load_e2e(data_dir, "train")[:count]]


def sft_dataset(rows: list[tuple[str, str]]) -> Dataset:
    return Dataset.from_list([{"prompt": prompt, "completion": completion} for prompt, completion in rows])


def dpo_dataset(rows: list[tuple[str, str]]) -> Dataset:
    """Chosen: the row's reference; rejected: the next row's (another restaurant's description)."""
    return Dataset.from_list([{"prompt": prompt, "chosen": chosen, "rejected": rows[(i + 1) % len(rows)][1]}
                              for i, (prompt, chosen) in enumerate(rows)])


class StepClock(TrainerCallback):
    """The wall-clock time of each optimizer step: the interval between consecutive ``on_step_end`` calls."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def step_times(self) -> list[float]:
        marks = [self.start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def probe(run: str, steps: int, batch: int, length: int, data_dir: str, output_dir: str) -> dict:
    """One run, in this (fresh) process: its step times and peak resident set."""
    model, tokenizer = load_model(MODEL, "causal_lm")
    model.config.name_or_path = loadable_name(MODEL)  # where TRL loads its reference copy from (dpo-full)
    rows = e2e_rows(steps * batch, data_dir)
    common = dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                  logging_steps=1, save_strategy="no", report_to="none", bf16=False, max_length=length, seed=0,
                  dataloader_num_workers=0, use_cpu=not torch.accelerator.is_available(),
                  **{CHECKPOINTING_ARGUMENT: False})
    kasa_config = kasa_peft.KasaConfig(r=R, alpha=ALPHA, target_modules=TARGETS)
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM")
    clock = StepClock()
    kind, method = run.split("-")
    if kind == "sft":
        args, data, trainer_cls = SFTConfig(**common), sft_dataset(rows), {"kasa": KasaSFTTrainer, "lora": SFTTrainer}
        extra = {"kasa": {"kasa_config": kasa_config}, "lora": {"peft_config": lora}}[method]
    else:
        args, data = DPOConfig(**common), dpo_dataset(rows)
        trainer_cls = {"kasa": KasaDPOTrainer, "lora": DPOTrainer, "full": DPOTrainer}
        extra = {"kasa": {"kasa_config": kasa_config}, "lora": {"peft_config": lora}, "full": {}}[method]
    trainer = trainer_cls[method](model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                  callbacks=[clock], **extra)
    constructed_rss = psutil.Process().memory_info().rss
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"step_s": clock.step_times(), "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "constructed_rss_kib": constructed_rss // 1024, "losses": losses,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def measure(runs: tuple[str, ...], args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every run ``args.repeats`` times, each in its own subprocess, the order reversed every other repeat."""
    results: dict[str, list[dict]] = {run: [] for run in runs}
    for repeat in range(args.repeats):
        for run in (runs if repeat % 2 == 0 else tuple(reversed(runs))):
            with tempfile.TemporaryDirectory() as output_dir:
                command = [sys.executable, __file__, "--probe", run, "--steps", str(args.steps), "--batch",
                           str(args.batch), "--length", str(args.length), "--threads", str(args.threads),
                           "--data-dir", args.data_dir, "--output-dir", output_dir]
                done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[run].append(result)
            print(f"{run} #{repeat}: step median {median(result['step_s'][args.warmup:]):.3f} s, peak "
                  f"{result['peak_rss_kib'] / 1024:.0f} MiB", file=sys.stderr, flush=True)
    return results


def summarize(raw: dict[str, list[dict]], warmup: int) -> dict:
    medians = {run: {"step_s": median([t for r in results for t in r["step_s"][warmup:]]),
                     "peak_rss_mib": median([r["peak_rss_kib"] / 1024 for r in results]),
                     "constructed_rss_mib": median([r["constructed_rss_kib"] / 1024 for r in results]),
                     "trainable_parameters": results[0]["trainable_parameters"]}
               for run, results in raw.items()}
    ratios = {name: medians[ours][measure] / medians[anchor][measure]
              for name, (ours, anchor, measure, _) in GOALS.items()}
    return {"medians": medians, "ratios": ratios,
            "met": {name: ratios[name] <= goal for name, (_, _, _, goal) in GOALS.items() if goal is not None}}


def markdown(summary: dict, info: dict, args: argparse.Namespace) -> str:
    medians, ratios = summary["medians"], summary["ratios"]
    lines = ["# KaSA in TRL: kasa-peft's trainers vs TRL's own", "",
             f"{machine_sentence(info, ('torch', 'transformers', 'peft', 'trl'))} SmolLM2-135M (fp32), r={R} on "
             f"{', '.join(TARGETS)}, batch {args.batch}, at most {args.length} tokens, E2E training rows, "
             f"{args.steps} optimizer steps per run of which the first {args.warmup} are warm-up, {args.repeats} "
             "runs of each, alternating, each its own process. Step time: median interval between optimizer steps; "
             "peak memory: median of the process's peak resident set (`ru_maxrss`: loading, construction, reference "
             "and training included). Lower is better.", "",
             "| measure | ours (median) | anchor (median) | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for name, (ours, anchor, measure, goal) in GOALS.items():
        unit = "s" if measure == "step_s" else "MiB"
        digits = 3 if measure == "step_s" else 0
        verdict = "" if goal is None else ("yes" if summary["met"][name] else "**no**")
        lines.append(f"| {name.replace('_', ' ')} | {medians[ours][measure]:.{digits}f} {unit} ({LABELS[ours]}) | "
                     f"{medians[anchor][measure]:.{digits}f} {unit} ({LABELS[anchor]}) | {ratios[name]:.3f} | "
                     f"{'' if goal is None else f'<= {goal}'} | {verdict} |")
    lines += ["", "| run | trainable parameters | resident set after construction | peak resident set | step time |",
              "|---|---|---|---|---|"]
    lines += [f"| {LABELS[run]} | {m['trainable_parameters']:,} | {m['constructed_rss_mib']:.0f} MiB | "
              f"{m['peak_rss_mib']:.0f} MiB | {m['step_s']:.3f} s |" for run, m in medians.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="steps of each run left out of the step times")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=64, help="max_length, in tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each run")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--probe", choices=[run for runs in RUNS.values() for run in runs], help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe, args.steps, args.batch, args.length, args.data_dir, args.output_dir)))
        return
    info = machine_info()
    info["versions"]["trl"] = __import__("trl").__version__
    raw = {run: results for runs in RUNS.values() for run, results in measure(runs, args).items()}
    summary = summarize(raw, args.warmup)
    settings = {key: getattr(args, key) for key in ("repeats", "steps", "warmup", "batch", "length", "threads")}
    json_path, md_path = write_results("trl", {"machine": info, "settings": settings, "goals": GOALS, **summary,
                                               "raw": raw}, markdown(summary, info, args))
    print(markdown(summary, info, args))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
