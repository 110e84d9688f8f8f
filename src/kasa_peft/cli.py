"""The ``kasa-peft`` command: argument parsing and printing; the work happens in ``pipelines`` and ``interop``.

Any error the user can fix (a missing file, a wrong column, an unknown task, a rank too large, ...) ends
with one line, ``kasa-peft: error: <what is wrong and how to fix it>``, and exit code 1; ``--traceback``
shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .pipelines.config import TASK_DEFAULTS, RunConfig, required, value_type
from .version import __version__

E2E_SCALE = ("e2e: BLEU, METEOR and ROUGE_L are fractions (0-1) as the official E2E scorer prints them (the "
             "README's tables show them x100); NIST and CIDEr are unscaled")
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

HELP = {
    "task": "what to train on: glue:<cola|sst2|mrpc|rte|stsb|qnli|mnli|qqp>, classify (your files), sentiment "
            "(the demo's tweets), e2e, commonsense:<set>|all, sft, ifeval (sft scored by IFEval)",
    "model": "a local Hugging Face model directory, a hub id, a .gguf file, or a shortcut: minilm, smollm2",
    "quantize": "load the base quantized with bitsandbytes: 4bit (NF4, double quantization) or 8bit (LLM.int8()); "
                "the adapter trains beside it in float32 (needs `pip install 'kasa-peft[quantized]'`)",
    "output_dir": "directory for the adapter, predictions and metrics.json",
    "method": "kasa (default), lora, pissa, milora, dora, adalora, peft-kasa, vera, prefix (causal LMs; through PEFT), "
              "fft, bitfit (models with biases), ft-top2, dylora, adapter-h, adapter-p, adapter-l, adapter-d, series, "
              "parallel (bottleneck adapters of size --r)",
    "r": "adapter rank (by default KaSA also drops the r smallest singular components of each weight: see "
         "--drop-rank); default 8",
    "alpha": "the update is scaled by alpha / r; default 16",
    "dropout": "dropout on the adapter's input; default 0",
    "beta": "weight of KaSA's singular-value penalty sum(sigma^2); default 1e-4",
    "gamma": "weight of KaSA's orthogonality penalty; default 1e-3",
    "regularizer": "'paper' (r x r Grams, default) or 'reference' (the authors' script)",
    "reduction": "'mean' (default) or 'sum' of the penalties over layers",
    "learn_sigma": "train KaSA's singular values sigma (default); --no-learn-sigma fixes sigma = 1 (truncation + LoRA, "
                   "the paper's ablation)",
    "sigma_init": "where KaSA's learned sigma starts: randn (the paper's code, default) or ones (the first update "
                  "then moves B as LoRA's does)",
    "drop_rank": "how many of each weight's smallest singular components KaSA drops: r (the paper, default), an "
                 "integer d >= 0 (0: no truncation), or auto (per layer the most, up to r, within --drop-budget)",
    "drop_budget": "with --drop-rank auto: the share of each weight's Frobenius norm the truncation may remove, in "
                   "(0, 1); default 0.005",
    "target_modules": "comma-separated layer names to adapt, or all-linear (default: per architecture, "
                      "e.g. query,value for BERT, q_proj,v_proj for Llama)",
    "lr": "learning rate of the adapter (task default)",
    "head_lr": "learning rate of the classification head (default: --lr)",
    "weight_decay": "AdamW weight decay; default 0",
    "warmup_ratio": "share of the steps with a linear learning-rate warm-up; default 0.06",
    "epochs": "number of training epochs (task default)",
    "max_steps": "stop after this many optimizer steps (overrides --epochs); evaluation still covers the whole "
                 "evaluation set (E2E: 252 beam searches), so add --max-eval-samples N for a quick run",
    "batch_size": "training batch size (task default)",
    "eval_batch_size": "evaluation batch size (default: --batch-size)",
    "gradient_accumulation_steps": "micro-batches per optimizer step; default 1",
    "max_length": "maximum tokens per training example (task default)",
    "group_by_length": "batch training examples of similar length together (less padding, faster)",
    "seed": "random seed of the model's new weights, the data order and dropout; default 0",
    "bf16": "train in bfloat16 mixed precision (autocast; the adapter and optimizer stay float32), on GPU or CPU",
    "gradient_checkpointing": "recompute each layer's activations in the backward pass instead of keeping them: less "
                              "memory, more time, the same gradients",
    "torch_compile": "compile the model with torch.compile (inductor) before training",
    "report_to": "also send the training logs (loss, task_loss, reg_l2, reg_l3, learning rate) to these logging "
                 "backends of transformers: none (default), tensorboard (event files in DIR/runs/), wandb, mlflow, ... "
                 "(comma-separated; each needs its package installed)",
    "eval_steps": "also evaluate every N optimizer steps",
    "eval_every_epoch": "evaluate at the end of every epoch (default for classification)",
    "save_steps": "checkpoint (for --resume) every N steps (default: every epoch)",
    "data_dir": "the benchmark data directory (glue/, e2e/, commonsense/, instruct/); without it the data comes "
                "from the Hugging Face hub",
    "train_file": "training data file (classify: .csv/.tsv/.jsonl; sft: .json/.jsonl; e2e: .csv)",
    "eval_file": "evaluation data file, same format as --train-file",
    "text_columns": "classify: one or two comma-separated text columns",
    "label_column": "classify: the label column",
    "max_train_samples": "train on a fixed random subset of this many examples",
    "max_eval_samples": "evaluate on a fixed random subset of this many examples (E2E: MRs; commonsense and sft: per "
                        "set); a run prints what one evaluation covers before it starts",
    "instruct_eval_sets": "sft, and ifeval for ROUGE-L as a second metric: comma-separated held-out sets: "
                          "user_oriented, seed",
    "num_beams": "beam width for generation (E2E default 10)",
    "length_penalty": "beam-search length penalty (E2E default 0.9)",
    "no_repeat_ngram_size": "forbid repeating n-grams of this size in generation (E2E default 4)",
    "max_new_tokens": "maximum generated tokens per prompt (task default)",
    "use_chat_template": "wrap prompts in the tokenizer's chat template (sft default: when it has one)",
    "resume": "continue the unfinished run in --output-dir from its last checkpoint",
}
EVAL_OVERRIDES = ("data_dir", "train_file", "eval_file", "text_columns", "label_column", "max_eval_samples",
                  "eval_batch_size", "max_length", "num_beams", "length_penalty", "no_repeat_ngram_size",
                  "max_new_tokens", "use_chat_template", "instruct_eval_sets")
DECODING_OPTIONS = ("eval_batch_size", "max_new_tokens", "num_beams", "length_penalty", "no_repeat_ngram_size",
                    "use_chat_template")
# help texts where a command's options mean something else than train's (`kasa-peft predict` and `generate` use
# the defaults of --task classify and --task sft; `eval` those of the run)
_PREDICT, _GENERATE = TASK_DEFAULTS["classify"], TASK_DEFAULTS["sft"]
JUDGE_MAX_NEW_TOKENS = 1024  # FastChat's answer length
COMMAND_HELP = {
    "eval": {
        "task": "the task to evaluate on (default: the run's; required with --adapter)",
        "model": "the base model (default: the run's; required with --adapter). " + HELP["model"],
        "method": "the adapter's method when its directory does not record one (default kasa)",
        "seed": "seed of a new classification head when the adapter has none (default: the run's)",
        "max_length": "maximum tokens per evaluation example (default: the run's)",
        "eval_batch_size": "evaluation batch size (default: the run's)",
        "max_eval_samples": "evaluate a fixed random subset of this many examples (default: all)",
        "max_new_tokens": "maximum generated tokens per prompt (default: the run's)",
        "num_beams": "beam width for generation (default: the run's)",
        "length_penalty": "beam-search length penalty (default: the run's)",
        "no_repeat_ngram_size": "forbid repeating n-grams of this size in generation (default: the run's)",
        "use_chat_template": "wrap prompts in the tokenizer's chat template (default: the run's)",
    },
    "predict": {
        "max_length": f"maximum tokens per input; longer inputs are truncated (default {_PREDICT['max_length']})",
        "eval_batch_size": f"inputs per batch (default {_PREDICT['batch_size']})",
    },
    "generate": {
        "eval_batch_size": f"prompts per batch (default {_GENERATE['batch_size']})",
        "max_new_tokens": f"maximum generated tokens per prompt (default {_GENERATE['max_new_tokens']})",
        "num_beams": f"beam width (default {_GENERATE['num_beams']}: greedy; the E2E runs evaluate with 10)",
        "length_penalty": f"beam-search length penalty (default {_GENERATE['length_penalty']})",
        "no_repeat_ngram_size": f"forbid repeating n-grams of this size (default {_GENERATE['no_repeat_ngram_size']}: "
                                "off)",
        "use_chat_template": "wrap prompts in the tokenizer's chat template (default: when it has one)",
    },
    "judge": {
        "data_dir": "the data directory holding instruct/mt_bench/ (required: the questions come from no hub)",
        "max_new_tokens": f"maximum tokens per answer (default {JUDGE_MAX_NEW_TOKENS}, FastChat's)",
        "eval_batch_size": f"questions answered per batch (default {_GENERATE['batch_size']})",
    },
}


Work = Callable[[], None]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        work = args.handler(args)  # checks the arguments first: fast, no model library is imported yet
        with _quiet_transformers():
            work()
    except KeyboardInterrupt:
        print("kasa-peft: interrupted (an unfinished training run continues with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.traceback or not _is_user_error(err):
            raise
        print(f"kasa-peft: error: {_message(err)}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _is_user_error(err: Exception) -> bool:
    """Errors the library raises for input the user can fix; anything else is a bug and keeps its traceback."""
    models = sys.modules.get(f"{__package__}.models")  # a ModelLoadError needs it loaded; importing it costs seconds
    return isinstance(err, (ValueError, OSError, ImportError)) or (
        models is not None and isinstance(err, models.ModelLoadError))


def _message(err: BaseException) -> str:
    if isinstance(err, ImportError):
        extra = _extra_providing(err.name or "")
        fix = f"pip install 'kasa-peft[{extra}]'" if extra else "install the missing package with pip"
        return f"{err}: {fix}"
    return str(err).strip() or type(err).__name__


def _extra_providing(module: str) -> str | None:
    """The first of our optional extras (pyproject.toml) whose requirements include ``module``'s distribution."""
    import importlib.metadata
    import re

    def normalized(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    wanted = normalized(module.split(".")[0])
    try:
        requirements = importlib.metadata.requires("kasa-peft") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return None
    for requirement in requirements:
        name, extra = re.match(r"[A-Za-z0-9._-]+", requirement), re.search(r"extra == \"([^\"]+)\"", requirement)
        assert name is not None  # every PEP 508 requirement starts with its project's name
        if extra and extra.group(1) != "test" and normalized(name.group()) == wanted:
            return extra.group(1)
    return None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep the terminal to progress bars and results (transformers' load reports list every new head weight)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)


# ----------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kasa-peft", description="Fine-tune language models with KaSA "
                                     "(Knowledge-aware Singular-value Adaptation) and compare it with baselines.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="fine-tune a model on a task and write DIR/metrics.json",
                                description="Options can also come from --config FILE.yaml (keys are the option "
                                            "names); options given here override the file.")
    train.add_argument("--config", help="a YAML or JSON file of options (e.g. configs/glue/cola.yaml)")
    _add_run_options(train, list(HELP))
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a trained run (--run DIR), an adapter (--adapter) "
                                     "or the base model (--model and --task alone)")
    evaluate.add_argument("--run", help="the --output-dir of a finished `kasa-peft train`")
    evaluate.add_argument("--adapter", help="an adapter directory (with --model and --task; the other options default "
                                            "to the task's)")
    _add_run_options(evaluate, ["task", "model", "quantize", "method", "seed", *EVAL_OVERRIDES], COMMAND_HELP["eval"])
    evaluate.add_argument("--output-dir", dest="predictions_dir", help="write the prediction files here")
    evaluate.add_argument("--harness", metavar="TASKS",
                          help="run lm-evaluation-harness instead: comma-separated tasks; commonsense:<set>|all "
                               "read --data-dir (offline), other names come from lm-eval's registry")
    evaluate.set_defaults(handler=_evaluate)

    inputs = ("Each input line is text, TAG<TAB>text or a JSON object ({\"adapter\": ..., \"text\": ...}); untagged "
              "lines use the first --adapter (or the base model when none is given).")
    for name, help_text, handler, note in (
            ("generate", "generate text with a causal LM and adapters", _generate,
             " Prompts are used as they are: an E2E adapter expects its training format, the meaning representation "
             "followed by ' ||' (e.g. 'name[The Eagle], food[French] ||')."),
            ("predict", "classify texts with a sequence classifier and adapters", _predict,
             " Each adapter labels its lines with its own head and its run's class names.")):
        sub = commands.add_parser(name, help=help_text, description=inputs + note)
        sub.add_argument("--model", required=True, help=HELP["model"])
        sub.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                         help="a KaSA adapter to load (repeatable; NAME tags input lines)")
        sub.add_argument("--input", help="file of input lines ('-' for stdin)")
        sub.add_argument("--prompt" if name == "generate" else "--text", action="append", default=[],
                         dest="texts", metavar="TEXT", help="an input given inline (repeatable)")
        _add_run_options(sub, DECODING_OPTIONS if name == "generate" else ("max_length", "eval_batch_size"),
                         COMMAND_HELP[name])
        sub.set_defaults(handler=handler)

    score = commands.add_parser("score", help="score a predictions file with a task's metrics (prints JSON)",
                                description=f"Scales: {E2E_SCALE}; GLUE, classify and commonsense: fractions (0-1); "
                                            "sft: 0-100 (as Super-NaturalInstructions reports them).")
    score.add_argument("task", help="e2e, glue:<task>, classify, commonsense:<set> or sft")
    score.add_argument("--predictions", required=True, help="one output per line (for e2e: per distinct MR)")
    score.add_argument("--references", help="the references (e2e: the CSV; others: one gold item per line); "
                                            "default: the task's evaluation data in --data-dir")
    score.add_argument("--data-dir", help=HELP["data_dir"])
    score.set_defaults(handler=_score)

    demo = commands.add_parser("demo", help="fine-tune MiniLM on tweet sentiment with KaSA (minutes, CPU)")
    demo.add_argument("--output-dir", dest="demo_dir", default="kasa-peft-demo",
                      help="where the runs go (default ./kasa-peft-demo)")
    _add_run_options(demo, ("model", "max_train_samples", "max_eval_samples", "max_length", "epochs", "max_steps",
                            "batch_size", "lr", "seed"))
    demo.set_defaults(handler=_demo)

    judge = commands.add_parser("judge", help="MT-Bench: answer the 80 questions, grade them with an LLM judge",
                                description="Grades through any OpenAI-compatible chat endpoint (a hosted API or a "
                                            "local llama.cpp/vLLM server); judgments are cached in OUT and a rerun "
                                            "resumes.")
    judge.add_argument("--model", required=True, help=HELP["model"])
    judge.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                       help="an adapter, or a run of any method, to judge (repeatable); none: the base model")
    judge.add_argument("--pairwise", action="store_true",
                       help="compare two models in both orders (two --adapter, or one against the base model) "
                            "instead of rating each 1-10")
    judge.add_argument("--judge-url", help="the endpoint's API base, e.g. https://api.openai.com/v1 or "
                                           "http://localhost:8080/v1")
    judge.add_argument("--judge-model", help="the judge model's name at that endpoint (e.g. gpt-4o)")
    judge.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the API key (default OPENAI_API_KEY; a localhost "
                            "endpoint needs none)")
    judge.add_argument("--judge-timeout", type=float, default=120.0, help="seconds per judge request (default 120)")
    judge.add_argument("--output-dir", dest="judge_dir", required=True,
                       help="answers, the judgment cache and judge_results.json go here")
    judge.add_argument("--max-questions", type=int, help="only the first N questions (a quick check)")
    _add_run_options(judge, ("data_dir", "max_new_tokens", "eval_batch_size"), COMMAND_HELP["judge"])
    judge.set_defaults(handler=_judge)

    export = commands.add_parser("export", help="export an adapter as plain LoRA, PEFT KaSA, a merged model or GGUF")
    export.add_argument("adapter_dir", metavar="ADAPTER_DIR",
                        help="a KaSA adapter directory (a run's --output-dir, or one save_adapter wrote)")
    export.add_argument("--format", required=True, choices=("lora", "peft-kasa", "merged", "gguf", "merged-gguf"),
                        help="lora: a plain PEFT LoRA of rank r + d, exact, on the untouched base (any LoRA runtime); "
                             "peft-kasa: PEFT 0.21's own KaSA layout; merged: a complete model directory (weights, "
                             "tokenizer, label names) that plain from_pretrained loads. lora and peft-kasa need only "
                             "the adapter file; merged loads the base. gguf: a llama.cpp LoRA adapter file; "
                             "merged-gguf: the merged model as one GGUF file (both for Llama-family bases)")
    export.add_argument("--out", required=True, help="the directory (the file, for the GGUF formats) to write")
    export.add_argument("--base", help="the base model: the one to merge into (merged), or the one the export names "
                                       "(default: the one recorded in the adapter)")
    export.add_argument("--gguf-type", choices=("f32", "f16", "q8_0", "source"),
                        help="merged-gguf only: the matrices' type (default f16; source: the base GGUF file's types)")
    export.set_defaults(handler=_export)

    import_ = commands.add_parser("import", help="convert a PEFT KaSA adapter into a kasa-peft adapter")
    import_.add_argument("peft_dir", metavar="PEFT_DIR",
                         help="a PEFT KaSA adapter directory (LoraConfig with kasa_config), e.g. from "
                              "`kasa-peft export --format peft-kasa` or PEFT's own training")
    import_.add_argument("--out", required=True, help="the directory to write")
    import_.add_argument("--base", help="the untouched base model: a directory, hub id or shortcut (default: the "
                                        "adapter config's base_model_name_or_path)")
    import_.set_defaults(handler=_import)

    inspect = commands.add_parser(
        "inspect", help="summarise a saved adapter, or (--model) what KaSA's truncation removes before training",
        description="With ADAPTER_DIR: per layer the update norm, the dropped components and sigma. With --model "
                    "(no adapter): the pre-flight report, per target module the share of the weight norm the "
                    "truncation would remove and the d chosen per layer; with --task and its data also the loss "
                    "of the untrained truncated model next to the base model's.")
    inspect.add_argument("adapter_dir", nargs="?", metavar="ADAPTER_DIR",
                         help="a saved KaSA adapter directory (or give --model instead)")
    inspect.add_argument("--plot", metavar="FILE.png",
                         help="also write a PNG: for an adapter, what training changed (update norms, sigma - "
                              "sigma_init, truncated energy); with --model, each target's singular-value spectrum "
                              "with the cut marked")
    _add_run_options(inspect, ("model", "quantize", "task", "target_modules", "r", "drop_rank", "drop_budget",
                               "data_dir", "train_file", "max_length", "seed"))
    inspect.add_argument("--samples", type=int,
                         help="with --task: how many training examples the losses are measured on; default 32")
    inspect.set_defaults(handler=_inspect)
    return parser


def _add_run_options(parser: argparse.ArgumentParser, names: Iterable[str],
                     help_texts: dict[str, str] | None = None) -> None:
    """``--name`` options for RunConfig fields; only the ones given end up in the namespace.

    Help texts are ``HELP``'s (train's), except those ``help_texts`` replaces.
    """
    hints = typing.get_type_hints(RunConfig)
    texts = {**HELP, **(help_texts or {})}
    for name in names:
        kind = value_type(hints[name])
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=texts[name])
        else:
            parser.add_argument(flag, type=str if typing.get_origin(kind) is list else kind,
                                default=argparse.SUPPRESS, help=texts[name])


def _run_values(args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name, value in vars(args).items() if name in HELP}


# --------------------------------------------------------------------------------------------------- commands


def _train(args: argparse.Namespace) -> Work:
    from .pipelines.config import read_config_file, resolve_config

    config = resolve_config(read_config_file(args.config) if args.config else {}, _run_values(args))

    def work() -> None:
        from .pipelines.run import train
        from .training.distributed import is_main_process

        result = train(config)
        if is_main_process():
            print(format_run_summary(result.record, result.output_dir))
    return work


def _evaluate(args: argparse.Namespace) -> Work:
    from .pipelines.config import resolve_config
    from .pipelines.run_dir import read_run, saved_by_a_trainer

    values = _run_values(args)
    if args.run and not saved_by_a_trainer(args.run):
        recorded, adapter = read_run(args.run)["config"], args.run
    elif args.run or args.adapter:  # an adapter directory, or what a Trainer's save_model wrote (KasaSFTTrainer)
        adapter = args.run or args.adapter
        missing = [f"--{name}" for name in ("model", "task") if name not in values]
        if missing:
            saved = " (DIR holds an adapter a trainer saved, with no run record to read them from)" if args.run else ""
            raise ValueError(f"`kasa-peft eval {'--run' if args.run else '--adapter'} DIR` needs "
                             f"{' and '.join(missing)}: the base model the adapter was trained on and the task to "
                             f"evaluate it on{saved}")
        recorded = {}
    elif "model" in values and "task" in values:
        recorded, adapter = {}, None  # the base model as it is
    else:
        raise ValueError("`kasa-peft eval` needs --run DIR (a finished run), --adapter DIR with --model and --task, "
                         "or --model and --task alone (the base model)")
    config = resolve_config(recorded, values)
    predictions_dir = Path(args.predictions_dir) if args.predictions_dir else None
    harness = [task.strip() for task in (args.harness or "").split(",") if task.strip()]

    def work() -> None:
        from .pipelines.run import evaluate, evaluate_with_harness

        metrics = evaluate_with_harness(config, adapter, harness) if harness else evaluate(config, adapter,
                                                                                             predictions_dir)
        print(json.dumps(metrics, indent=2))
    return work


def _inputs(args: argparse.Namespace) -> list[str]:
    """Input lines from --prompt/--text, then --input (a file, or '-' for stdin)."""
    lines = [json.dumps({"text": text}) for text in args.texts]
    if args.input == "-":
        lines += sys.stdin.read().splitlines()
    elif args.input:
        from .tasks._common import read_lines, require_path

        lines += read_lines(require_path(args.input, "check the --input path"))
    if not any(line.strip() for line in lines):
        raise ValueError("no inputs: give --prompt/--text, or --input FILE (or '-' for stdin)")
    return lines


def _generate(args: argparse.Namespace) -> Work:
    from .pipelines.config import resolve_config

    config = resolve_config({}, {"task": "sft", "model": args.model, **_run_values(args)})
    lines = _inputs(args)

    def work() -> None:
        from .interop.cli_commands import parse_adapter_specs
        from .pipelines.generation import Decoding
        from .pipelines.inference import generate_outputs

        adapters = parse_adapter_specs(args.adapter)
        for row in generate_outputs(args.model, adapters, lines, Decoding.from_config(config)):
            print(json.dumps(row, ensure_ascii=False))
    return work


def _predict(args: argparse.Namespace) -> Work:
    from .pipelines.config import resolve_config

    config = resolve_config({}, {"task": "classify", "model": args.model, **_run_values(args)})
    lines = _inputs(args)

    def work() -> None:
        from .interop.cli_commands import parse_adapter_specs
        from .pipelines.inference import predict_labels

        adapters = parse_adapter_specs(args.adapter)
        for row in predict_labels(args.model, adapters, lines, required(config.max_length, "max_length"),
                                  config.evaluation_batch_size):
            print(json.dumps(row, ensure_ascii=False))
    return work


def _score(args: argparse.Namespace) -> Work:
    def work() -> None:
        from .pipelines.scoring import score

        print(json.dumps(score(args.task, args.predictions, args.references, args.data_dir), indent=2))
        if args.task == "e2e":
            print(f"kasa-peft: {E2E_SCALE}", file=sys.stderr)
    return work


def _demo(args: argparse.Namespace) -> Work:
    def work() -> None:
        from .pipelines.demo import run_demo

        print(format_demo(run_demo(args.demo_dir, **_run_values(args))))
    return work


def _judge(args: argparse.Namespace) -> Work:
    from .pipelines.config import resolve_config

    values = {"max_new_tokens": JUDGE_MAX_NEW_TOKENS, **_run_values(args)}
    config = resolve_config({}, {"task": "sft", "model": args.model, **values})
    if not config.data_dir:
        raise ValueError("`kasa-peft judge` needs --data-dir holding instruct/mt_bench/ (see the README)")
    data_dir = config.data_dir

    def work() -> None:
        from .interop.cli_commands import parse_adapter_specs
        from .pipelines.judge_client import endpoint_from_options
        from .pipelines.generation import Decoding
        from .pipelines.judge import JudgeRun, run_judge

        endpoint = endpoint_from_options(args.judge_url, args.judge_model, args.judge_key_env, args.judge_timeout)
        run = JudgeRun(args.model, parse_adapter_specs(args.adapter), data_dir, Path(args.judge_dir),
                       endpoint, "pairwise" if args.pairwise else "single", Decoding.from_config(config),
                       args.max_questions)
        print(json.dumps(run_judge(run)["results"], indent=2))
    return work


def _export(args: argparse.Namespace) -> Work:
    def work() -> None:
        from .interop.cli_commands import export_command
        from .pipelines.inference import recorded_label_names

        labels = recorded_label_names(args.adapter_dir)
        print(f"wrote {export_command(args.adapter_dir, args.format, args.out, args.base, labels, args.gguf_type)}")
    return work


def _import(args: argparse.Namespace) -> Work:
    def work() -> None:
        from .interop.cli_commands import import_command

        print(f"wrote {import_command(args.peft_dir, args.out, args.base)}")
    return work


def _inspect(args: argparse.Namespace) -> Work:
    values = _run_values(args)
    if args.adapter_dir and values:
        raise ValueError(f"`kasa-peft inspect` takes an adapter directory or --model (the pre-flight report), not "
                         f"both; got {args.adapter_dir} and {', '.join('--' + k.replace('_', '-') for k in values)}")
    if not args.adapter_dir and "model" not in values:
        raise ValueError("`kasa-peft inspect` needs an adapter directory, or --model M (with --target-modules, --r, "
                         "--drop-rank ...) for the pre-flight report of KaSA's truncation")

    def adapter_work() -> None:
        from .interop.cli_commands import inspect_command

        print(inspect_command(args.adapter_dir, args.plot))

    def preflight_work() -> None:
        from .analysis.truncation_report import format_truncation_report, plot_spectra
        from .pipelines.preflight import preflight

        samples = {"samples": args.samples} if args.samples is not None else {}
        report = preflight(values, spectra=args.plot is not None, **samples)
        text = format_truncation_report(report)
        if args.plot:
            text += f"\n\nspectra written to {plot_spectra(report, args.plot)}"
        print(text)
    return adapter_work if args.adapter_dir else preflight_work


# -------------------------------------------------------------------------------------------------- printing


def format_run_summary(record: dict[str, Any], output_dir: Path) -> str:
    """What a finished run achieved and where its files are."""
    from .pipelines.base import format_value

    main = record["main_metric"]
    best, final = record["best"], record["final"]
    trainable, total = record["trainable_parameters"], record["total_parameters"]
    files = sorted(p.name for p in output_dir.iterdir() if p.is_file())
    return "\n".join([
        f"\n{record['task']} | {record['method']} | {record['model']}",
        f"  best  {main} = {format_value(best['metrics'].get(main))} (step {best['step']}, epoch {best['epoch']:.2f})",
        f"  final {main} = {format_value(final['metrics'].get(main))} (step {final['step']})",
        f"  trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%)",
        f"  wall time: {record['wall_time_seconds']:.1f} s",
        f"  files: {output_dir}/ ({', '.join(files)})",
    ])


def format_demo(rows: list) -> str:
    """The demo's comparison as a table."""
    lines = ["", f"{'model':<12}{'accuracy':>10}{'macro F1':>10}{'trainable':>12}{'time (s)':>10}  saved in"]
    for row in rows:
        params = f"{row.trainable_parameters:,}" if row.trainable_parameters is not None else "-"
        seconds = f"{row.wall_time_seconds:.0f}" if row.wall_time_seconds is not None else "-"
        lines.append(f"{row.name:<12}{row.metrics['accuracy']:>10.4f}{row.metrics['macro_f1']:>10.4f}{params:>12}"
                     f"{seconds:>10}  {row.output_dir or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
