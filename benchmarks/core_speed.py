"""Issue 2's speed benchmark: kasa-peft vs PEFT 0.21.2 (plain LoRA and its KaSA variant) on real models.

Measured side by side in one run, interleaved, reported as medians and ratios:
  * injection: truncation of every target (ours: ``inject``; PEFT-KaSA: ``get_peft_model``), goal <= 0.5x;
  * reload of a saved adapter onto a fresh base (PEFT-KaSA recomputes every SVD), goal <= 0.05x;
  * a training step (forward + backward + AdamW, our regulariser included) vs PEFT LoRA, goal <= 1.00x,
    and vs the frozen base alone (backward through the network with no adapter: the floor);
  * peak resident memory during training steps (one subprocess per method), goal <= 1.02x PEFT LoRA.

    python benchmarks/core_speed.py [--models minilm smollm2] [--repeats 5] [--steps 8]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from peft import KasaConfig as PeftKasaConfig
from peft import LoraConfig, PeftModel, get_peft_model

sys.path.insert(0, str(Path(__file__).parent))
import kasa_peft  # noqa: E402
from common import alternate, machine_info, machine_sentence, median, peak_rss, timed, write_results  # noqa: E402
from kasa_peft.models import load_model  # noqa: E402

SETUPS = {
    "minilm": dict(task="sequence_classification", targets=["query", "value"], head=["classifier"],
                   batch=16, length=128),
    "smollm2": dict(task="causal_lm", targets=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], head=[],
                    batch=4, length=128),
}
R, ALPHA = 8, 16
GOALS = {"injection": 0.5, "reload": 0.05, "step_vs_lora": 1.00, "peak_memory_vs_lora": 1.02}


def load_base(name: str) -> torch.nn.Module:
    setup = SETUPS[name]
    model, _ = load_model(name, setup["task"], num_labels=3 if setup["task"] == "sequence_classification" else None)
    return model


def ours(base, setup):
    config = kasa_peft.KasaConfig(r=R, alpha=ALPHA, target_modules=tuple(setup["targets"]),
                                  modules_to_save=tuple(setup["head"]))
    return kasa_peft.inject(base, config)


def peft_config(setup, kasa: bool) -> LoraConfig:
    task_type = "SEQ_CLS" if setup["task"] == "sequence_classification" else "CAUSAL_LM"
    return LoraConfig(r=R, lora_alpha=ALPHA, target_modules=setup["targets"], task_type=task_type,
                      kasa_config=PeftKasaConfig() if kasa else None)


def method_model(method: str, base, setup):
    if method == "kasa":
        return ours(base, setup)
    if method == "floor":
        for param in base.parameters():
            param.requires_grad_(False)
        base.enable_input_require_grads()
        return base
    return get_peft_model(base, peft_config(setup, kasa=method == "peft-kasa"))


def batch(setup, vocab: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (setup["batch"], setup["length"]), generator=generator)
    classify = setup["task"] == "sequence_classification"
    labels = torch.randint(0, 3, (setup["batch"],), generator=generator) if classify else ids
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def step_fn(method: str, model, inputs):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None

    def step():
        loss = model(**inputs).loss
        if method == "kasa":
            loss = loss + kasa_peft.regularization_loss(model)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def bench_injection_and_reload(name: str, base, repeats: int) -> dict:
    setup = SETUPS[name]
    injection = {"kasa": [], "peft-kasa": []}
    reload = {"kasa": [], "peft-kasa": []}
    with tempfile.TemporaryDirectory() as tmp:
        kasa_dir, peft_dir = Path(tmp) / "kasa", Path(tmp) / "peft"
        kasa_peft.save_adapter(ours(copy.deepcopy(base), setup), kasa_dir)
        method_model("peft-kasa", copy.deepcopy(base), setup).save_pretrained(peft_dir)
        loaders = {"kasa": lambda m: kasa_peft.load_adapter(m, kasa_dir),
                   "peft-kasa": lambda m: PeftModel.from_pretrained(m, peft_dir)}
        for i in range(repeats):
            for method in (["kasa", "peft-kasa"] if i % 2 == 0 else ["peft-kasa", "kasa"]):
                injection[method].append(timed(partial(method_model, method, copy.deepcopy(base), setup)))
                reload[method].append(timed(partial(loaders[method], copy.deepcopy(base))))
                gc.collect()
    return {"injection_s": injection, "reload_s": reload}


def bench_steps(name: str, base, steps: int) -> dict:
    setup = SETUPS[name]
    inputs = batch(setup, base.config.vocab_size)
    fns = {m: step_fn(m, method_model(m, copy.deepcopy(base), setup), inputs) for m in ("kasa", "lora", "floor")}
    for fn in fns.values():  # warm-up
        fn()
    return {"step_s": alternate(fns, steps)}


def memory_probe(name: str, method: str, steps: int) -> dict:
    """Run in a subprocess: peak RSS while training steps run, sampled every millisecond."""
    setup = SETUPS[name]
    base = load_base(name)
    model = method_model(method, base, setup)
    step = step_fn(method, model, batch(setup, base.config.vocab_size))
    step()
    baseline, peak = peak_rss(step, steps)
    return {"peak_rss": peak, "baseline_rss": baseline}


def bench_memory(name: str, repeats: int, steps: int) -> dict:
    results = {"kasa": [], "lora": []}
    for i in range(repeats):
        for method in (["kasa", "lora"] if i % 2 == 0 else ["lora", "kasa"]):
            command = [sys.executable, __file__, "--memory-probe", name, method, "--steps", str(steps),
                       "--threads", str(torch.get_num_threads())]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[method].append(json.loads(out.strip().splitlines()[-1]))
    return {"memory": results}


def summarize(name: str, raw: dict) -> dict:
    inj, rel, step, mem = raw["injection_s"], raw["reload_s"], raw["step_s"], raw["memory"]
    peak = {m: median([r["peak_rss"] for r in runs]) for m, runs in mem.items()}
    return {
        "injection": median(inj["kasa"]) / median(inj["peft-kasa"]),
        "reload": median(rel["kasa"]) / median(rel["peft-kasa"]),
        "step_vs_lora": median(step["kasa"]) / median(step["lora"]),
        "step_vs_floor": median(step["kasa"]) / median(step["floor"]),
        "lora_step_vs_floor": median(step["lora"]) / median(step["floor"]),
        "peak_memory_vs_lora": peak["kasa"] / peak["lora"],
        "medians_s": {key: {m: median(v) for m, v in runs.items()}
                      for key, runs in (("injection", inj), ("reload", rel), ("step", step))},
        "peak_rss_mib": {m: v / 2**20 for m, v in peak.items()},
    }


ROWS = [  # (summary key, medians key, ours, anchor, anchor label)
    ("injection", "injection", "kasa", "peft-kasa", "PEFT-KaSA"),
    ("reload", "reload", "kasa", "peft-kasa", "PEFT-KaSA"),
    ("step_vs_lora", "step", "kasa", "lora", "PEFT LoRA"),
    ("step_vs_floor", "step", "kasa", "floor", "frozen base"),
]


def markdown(summaries: dict, info: dict) -> str:
    lines = ["# Core speed: kasa-peft vs PEFT 0.21.2", "",
             f"{machine_sentence(info)} Ratios of medians of interleaved runs; lower is better.", "",
             "| model | measure | ours (median) | anchor (median) | ratio | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        for key, medians_key, mine, anchor, label in ROWS:
            med, goal = s["medians_s"][medians_key], GOALS.get(key)
            verdict = "" if goal is None else ("yes" if s[key] <= goal else "**no**")
            lines.append(f"| {name} | {key.replace('_', ' ')} | {med[mine]:.3f} s | {med[anchor]:.3f} s ({label}) | "
                         f"{s[key]:.3f} | {'' if goal is None else f'<= {goal}'} | {verdict} |")
        mem, goal = s["peak_rss_mib"], GOALS["peak_memory_vs_lora"]
        verdict = "yes" if s["peak_memory_vs_lora"] <= goal else "**no**"
        lines.append(f"| {name} | peak RSS in steps | {mem['kasa']:.0f} MiB | {mem['lora']:.0f} MiB (PEFT LoRA) | "
                     f"{s['peak_memory_vs_lora']:.3f} | <= {goal} | {verdict} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe, steps=args.steps)))
        return
    info = machine_info()
    raw, summaries = {}, {}
    for name in args.models:
        base = load_base(name)
        raw[name] = {**bench_injection_and_reload(name, base, args.repeats), **bench_steps(name, base, args.steps),
                     **bench_memory(name, max(2, args.repeats // 2), max(2, args.steps // 2))}
        summaries[name] = summarize(name, raw[name])
        print(json.dumps({name: summaries[name]}, indent=2), flush=True)
    info["load_average_after"] = os.getloadavg()
    paths = write_results("core_speed", {"machine": info, "summary": summaries, "raw": raw, "goals": GOALS},
                          markdown(summaries, info))
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
