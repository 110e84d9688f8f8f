"""Issue 24's TRL benchmark: kasa-peft's TRL trainers against TRL's own, side by side in one run, on SmolLM2-135M.

  * SFT step time: ``KasaSFTTrainer`` (KaSA, its regulariser included) vs ``trl.SFTTrainer`` with a PEFT LoRA
    adapter of the same rank and targets, goal <= 1.02x;
  * DPO peak memory: ``KasaDPOTrainer`` (its reference is a frozen second adapter on the same base) vs
    ``trl.DPOTrainer`` on the model without PEFT (full fine-tuning, with the reference copy TRL loads), goal
    <= 0.6x, and vs ``trl.DPOTrainer`` with a PEFT LoRA adapter (the reference is the base with the adapter
    disabled), goal <= 1.05x; DPO step times are recorded too.

Same data (E2E training rows as plain prompt/completion text), rank r=8 on q_proj, v_proj, batch, sequence length,
fp32, no activation checkpointing. SFT: both trainers live in one process, on copies of one model, and take turns
(``--rounds`` turns of ``train()`` each, the order reversed every other turn, the same batches every turn), so
the shared machine's load hits both alike; step time is the interval between consecutive optimizer steps
(Trainer's ``on_step_end``), each turn's first step left out, median over turns. DPO: each configuration runs in
its own process (so a reference copy shows in its memory), the configurations alternating. Peak memory, two ways:
the process's peak resident set (``VmHWM`` of ``/proc/self/status``: model loading, the trainer's construction, a
reference copy and training all included; not ``getrusage``'s ``ru_maxrss``, which a child inherits from the
process that started it; tracemalloc does not see torch's allocations), which also counts the memory-mapped
weights' file pages as far as other programs' memory pressure leaves them resident (so it varies between runs on a
shared machine), and the peak of the anonymous resident memory (``RssAnon``, what the process allocated), sampled
every 5 ms during construction and training. CPU time per step is recorded next to wall-clock time: on a shared
machine it counts a step's work without the time other programs took.

    nice -n 5 python benchmarks/trl_trainers.py [--rounds 6] [--steps 2] [--dpo-repeats 2] [--dpo-steps 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from common import machine_info, machine_sentence, median, write_results
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

import kasa_peft
from kasa_peft.integrations.trl import KasaDPOTrainer, KasaSFTTrainer
from kasa_peft.models import load_model, loadable_name
from kasa_peft.pipelines.run import CHECKPOINTING_ARGUMENT
from kasa_peft.tasks.e2e import format_mr, format_target, load_e2e

MODEL = "smollm2"
R, ALPHA, TARGETS = 8, 16.0, ("q_proj", "v_proj")
RUNS = {"sft": ("sft-kasa", "sft-lora"), "dpo": ("dpo-kasa", "dpo-full", "dpo-lora")}
GOALS = {  # (ours, anchor, measure, goal)
    "sft_step_vs_lora": ("sft-kasa", "sft-lora", "step_s", 1.02),
    "sft_cpu_step_vs_lora": ("sft-kasa", "sft-lora", "step_cpu_s", 1.02),
    "dpo_peak_vs_full": ("dpo-kasa", "dpo-full", "peak_rss_mib", 0.6),
    "dpo_peak_vs_lora": ("dpo-kasa", "dpo-lora", "peak_rss_mib", 1.05),
    "dpo_anonymous_peak_vs_full": ("dpo-kasa", "dpo-full", "peak_anon_mib", 0.6),
    "dpo_anonymous_peak_vs_lora": ("dpo-kasa", "dpo-lora", "peak_anon_mib", 1.05),
    "dpo_step_vs_lora": ("dpo-kasa", "dpo-lora", "step_s", None),
    "dpo_cpu_step_vs_lora": ("dpo-kasa", "dpo-lora", "step_cpu_s", None),
    "dpo_step_vs_full": ("dpo-kasa", "dpo-full", "step_s", None),
    "dpo_cpu_step_vs_full": ("dpo-kasa", "dpo-full", "step_cpu_s", None),
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
    """The wall-clock and CPU time of each optimizer step of the latest ``train()``: the intervals between
    consecutive ``on_step_end`` calls (the first from ``on_train_begin``). CPU time (``time.process_time``, this
    process's threads) counts the work a step does, not the time other programs on a shared machine took."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.marks = [(time.perf_counter(), time.process_time())]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), time.process_time()))

    def step_times(self, clock: int = 0) -> list[float]:
        """Wall-clock (``clock=0``) or CPU (``clock=1``) seconds per step."""
        return [b[clock] - a[clock] for a, b in zip(self.marks, self.marks[1:], strict=False)]


def build_trainer(run: str, model, tokenizer, steps: int, args: argparse.Namespace, output_dir: str, clock: StepClock):
    """The trainer of ``run`` (``sft-kasa``, ``dpo-full``, ...) for ``steps`` steps on E2E rows."""
    rows = e2e_rows(steps * args.batch, args.data_dir)
    common = dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=args.batch, learning_rate=1e-4,
                  logging_steps=1, save_strategy="no", report_to="none", bf16=False, max_length=args.length, seed=0,
                  dataloader_num_workers=0, use_cpu=not torch.accelerator.is_available(),
                  **{CHECKPOINTING_ARGUMENT: False})
    kasa_config = kasa_peft.KasaConfig(r=R, alpha=ALPHA, target_modules=TARGETS)
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=list(TARGETS), task_type="CAUSAL_LM")
    kind, method = run.split("-")
    if kind == "sft":
        config, data, trainer_cls = SFTConfig(**common), sft_dataset(rows), {"kasa": KasaSFTTrainer, "lora": SFTTrainer}
    else:
        config, data = DPOConfig(**common), dpo_dataset(rows)
        trainer_cls = {"kasa": KasaDPOTrainer, "lora": DPOTrainer, "full": DPOTrainer}
    extra = {"kasa": {"kasa_config": kasa_config}, "lora": {"peft_config": lora}, "full": {}}[method]
    return trainer_cls[method](model=model, args=config, train_dataset=data, processing_class=tokenizer,
                               callbacks=[clock], **extra)


def sft_step_times(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Both SFT trainers in this process, on copies of one model, taking turns: ``args.rounds`` rounds of
    ``train()`` for ``1 + args.steps`` steps each (the same batches every round), the order reversed every other
    round; each round's steps after its first are kept."""
    model, tokenizer = load_model(MODEL, "causal_lm")
    clocks = {run: StepClock() for run in RUNS["sft"]}
    times: dict[str, dict[str, list[float]]] = {run: {"step_s": [], "step_cpu_s": []} for run in RUNS["sft"]}
    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {run: build_trainer(run, copy.deepcopy(model), tokenizer, 1 + args.steps, args,
                                       f"{output_dir}/{run}", clock) for run, clock in clocks.items()}
        for round_ in range(args.rounds):
            for run in (RUNS["sft"] if round_ % 2 == 0 else tuple(reversed(RUNS["sft"]))):
                trainers[run].train()
                times[run]["step_s"] += clocks[run].step_times()[1:]
                times[run]["step_cpu_s"] += clocks[run].step_times(clock=1)[1:]
            print(f"round {round_}: " + ", ".join(f"{run} {median(t['step_s'][-args.steps:]):.3f} s, cpu "
                                                   f"{median(t['step_cpu_s'][-args.steps:]):.3f} s"
                                                   for run, t in times.items()), file=sys.stderr, flush=True)
    return times


def status_kib(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``RssAnon``, ...), in KiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1])


def anonymous_peak_kib(work) -> int:
    """The peak of this process's anonymous resident memory (``RssAnon``: what it allocated, without the file pages
    it maps, such as memory-mapped safetensors weights, whose residency depends on other programs' memory pressure)
    while ``work()`` runs, sampled every 5 ms on a thread."""
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], status_kib("RssAnon"))
            done.wait(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak[0]


def probe(run: str, args: argparse.Namespace) -> dict:
    """One DPO run, in this (fresh) process: its step times and peak resident set."""
    model, tokenizer = load_model(MODEL, "causal_lm")
    model.config.name_or_path = loadable_name(MODEL)  # where TRL loads its reference copy from (dpo-full)
    clock = StepClock()
    trainer: list = []
    anonymous_peak = anonymous_peak_kib(lambda: trainer.append(
        build_trainer(run, model, tokenizer, args.dpo_steps, args, args.output_dir, clock)))
    constructed_rss = psutil.Process().memory_info().rss
    anonymous_peak = max(anonymous_peak, anonymous_peak_kib(trainer[0].train))
    return {"step_s": clock.step_times(), "step_cpu_s": clock.step_times(clock=1),
            "peak_rss_kib": status_kib("VmHWM"), "peak_anon_kib": anonymous_peak,
            "constructed_rss_kib": constructed_rss // 1024,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def dpo_measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every DPO run ``args.dpo_repeats`` times, each in its own subprocess, the order reversed every other
    repeat."""
    runs = RUNS["dpo"]
    results: dict[str, list[dict]] = {run: [] for run in runs}
    for repeat in range(args.dpo_repeats):
        for run in (runs if repeat % 2 == 0 else tuple(reversed(runs))):
            with tempfile.TemporaryDirectory() as output_dir:
                command = [sys.executable, __file__, "--probe", run, "--dpo-steps", str(args.dpo_steps), "--batch",
                           str(args.batch), "--length", str(args.length), "--threads", str(args.threads),
                           "--data-dir", args.data_dir, "--output-dir", output_dir]
                done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[run].append(result)
            print(f"{run} #{repeat}: step median {median(result['step_s'][1:]):.3f} s, peak "
                  f"{result['peak_rss_kib'] / 1024:.0f} MiB", file=sys.stderr, flush=True)
    return results


def summarize(sft: dict[str, dict[str, list[float]]], dpo: dict[str, list[dict]]) -> dict:
    medians = {run: {key: median(values) for key, values in times.items()} for run, times in sft.items()}
    medians |= {run: {key: median([t for r in results for t in r[key][1:]]) for key in ("step_s", "step_cpu_s")} | {
                      "peak_rss_mib": median([r["peak_rss_kib"] / 1024 for r in results]),
                      "peak_anon_mib": median([r["peak_anon_kib"] / 1024 for r in results]),
                      "constructed_rss_mib": median([r["constructed_rss_kib"] / 1024 for r in results]),
                      "trainable_parameters": results[0]["trainable_parameters"]}
                for run, results in dpo.items()}
    ratios = {name: medians[ours][measure] / medians[anchor][measure]
              for name, (ours, anchor, measure, _) in GOALS.items()}
    return {"medians": medians, "ratios": ratios,
            "met": {name: ratios[name] <= goal for name, (_, _, _, goal) in GOALS.items() if goal is not None}}


def markdown(summary: dict, info: dict, args: argparse.Namespace) -> str:
    medians, ratios = summary["medians"], summary["ratios"]
    lines = ["# KaSA in TRL: kasa-peft's trainers vs TRL's own", "",
             f"{machine_sentence(info, ('torch', 'transformers', 'peft', 'trl'))} SmolLM2-135M (fp32), r={R} on "
             f"{', '.join(TARGETS)}, batch {args.batch}, at most {args.length} tokens, E2E training rows, no "
             "activation checkpointing. SFT step time: both trainers in one process, taking turns, "
             f"{args.rounds} rounds of {args.steps} timed steps each (after one untimed), median interval between "
             "optimizer steps, in wall-clock time and in this process's CPU time (the work of a step, without the "
             "time other programs took on the shared machine: the fairer measure under load). DPO: each run its "
             f"own process, {args.dpo_repeats} run(s) of {args.dpo_steps} steps "
             "each, alternating; peak memory is the process's peak resident set (`VmHWM`: loading, "
             "construction, the reference and training included; it counts the memory-mapped weights' file pages "
             "as far as the machine's memory pressure leaves them resident), the anonymous peak that of `RssAnon` "
             "(what the process allocated, sampled every 5 ms during construction and training), step time the "
             "median interval between "
             "optimizer steps after the first (separate processes: noisier than the SFT times). Lower is better.",
             "", "| measure | ours (median) | anchor (median) | ratio | goal | met |", "|---|---|---|---|---|---|"]
    for name, (ours, anchor, measure, goal) in GOALS.items():
        unit, digits = ("MiB", 0) if measure.startswith("peak") else ("s", 3)
        verdict = "" if goal is None else ("yes" if summary["met"][name] else "**no**")
        lines.append(f"| {name.replace('_', ' ')} | {medians[ours][measure]:.{digits}f} {unit} ({LABELS[ours]}) | "
                     f"{medians[anchor][measure]:.{digits}f} {unit} ({LABELS[anchor]}) | {ratios[name]:.3f} | "
                     f"{'' if goal is None else f'<= {goal}'} | {verdict} |")
    lines += ["", "| DPO run | trainable parameters | resident set after construction | peak resident set | "
              "anonymous peak | step time | step CPU time |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {LABELS[run]} | {medians[run]['trainable_parameters']:,} | "
              f"{medians[run]['constructed_rss_mib']:.0f} MiB | {medians[run]['peak_rss_mib']:.0f} MiB | "
              f"{medians[run]['peak_anon_mib']:.0f} MiB | "
              f"{medians[run]['step_s']:.3f} s | {medians[run]['step_cpu_s']:.3f} s |" for run in RUNS["dpo"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="SFT: turns of each trainer")
    parser.add_argument("--steps", type=int, default=2, help="SFT: timed steps per turn")
    parser.add_argument("--dpo-repeats", type=int, default=2, help="DPO: runs of each configuration")
    parser.add_argument("--dpo-steps", type=int, default=3, help="DPO: steps per run")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=64, help="max_length, in tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each run")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--probe", choices=RUNS["dpo"], help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe(args.probe, args)))
        return
    info = machine_info()
    info["versions"]["trl"] = __import__("trl").__version__
    sft = sft_step_times(args)
    dpo = dpo_measure(args)
    summary = summarize(sft, dpo)
    settings = {key: getattr(args, key) for key in
                ("rounds", "steps", "dpo_repeats", "dpo_steps", "batch", "length", "threads")}
    json_path, md_path = write_results("trl", {"machine": info, "settings": settings, "goals": GOALS, **summary,
                                               "raw": {"sft_step_s": sft, "dpo": dpo}}, markdown(summary, info, args))
    print(markdown(summary, info, args))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
