"""The `kasa-peft` command: subcommands, config files, scoring, inference wiring, and every bad-input case
ending in one clear error line, exit code 1 and no run directory."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kasa_peft

from core.test_io import flip_a_data_byte, rewrite_metadata
from kasa_peft.cli import EXIT_ERROR
from pipelines.helpers import run_cli, save_model, write_classification_files
from tiny_models import tiny_bert, tiny_llama

SUBCOMMANDS = ("train", "eval", "generate", "predict", "score", "demo", "judge", "export", "import", "inspect")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    return save_model(tmp_path_factory.mktemp("bert"), tiny_bert().bert)


@pytest.fixture
def cli(capsys):
    return lambda *args: run_cli(capsys, *args)


@pytest.fixture
def files(tmp_path):
    return write_classification_files(tmp_path)


def classify_args(model, files, out, *extra) -> list:
    train_file, eval_file = files
    return ["train", "--task", "classify", "--model", model, "--train-file", train_file, "--eval-file", eval_file,
            "--text-columns", "review", "--label-column", "label", "--output-dir", out, "--max-steps", 2,
            "--batch-size", 4, "--max-length", 64, *extra]


def test_console_script_lists_the_subcommands():
    script = shutil.which("kasa-peft")
    if script is None:
        pytest.skip("the kasa-peft console script is not installed (pip install -e .)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    for command in SUBCOMMANDS:
        assert command in result.stdout


HEAVY_MODULES = ("torch", "transformers", "peft", "datasets", "scipy", "sklearn", "yaml")


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["--version"], ["train", "--no-such-flag"],
                                  ["train", "--task", "classify", "--model", "m", "--r", "-1"],
                                  ["train", "--task", "glue:colaa", "--model", "m"],
                                  ["predict", "--model", "m", "--max-length", "0", "--text", "hi"]])
def test_help_and_argument_errors_load_no_model_library(args):
    """They answer before torch, transformers, PEFT or the metric libraries are imported (each takes seconds);
    measured startup times are in the README's command-line section."""
    code = ("import sys\nfrom kasa_peft.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr


def subcommand_help(name: str) -> str:
    from kasa_peft.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name].format_help()


@pytest.mark.parametrize(("command", "positional"), [("export", "ADAPTER_DIR"), ("import", "PEFT_DIR"),
                                                     ("inspect", "ADAPTER_DIR")])
def test_positionals_and_export_format_are_explained(command, positional):
    text = " ".join(subcommand_help(command).split())
    assert f"{positional} a " in text  # the positional is listed with a help text
    if command == "export":
        assert "--format {lora,peft-kasa,merged,gguf,merged-gguf} lora: a plain PEFT LoRA" in text


@pytest.mark.parametrize("command", ["eval", "predict", "generate", "judge"])
def test_inference_commands_do_not_borrow_trains_help(command):
    text = " ".join(subcommand_help(command).split())
    for phrase in ("training example", "(default: --batch-size)", "(task default)", "(E2E default"):
        assert phrase not in text
    if command == "judge":  # it has no hub fallback: --data-dir is required
        assert "from the Hugging Face hub" not in text and "(default 1024" in text


@pytest.mark.parametrize("command", ["predict", "generate"])
def test_an_input_file_that_is_missing_or_not_utf8_is_named_before_any_model_loads(cli, tmp_path, command):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = cli(command, "--model", "no/such-model", "--input", tmp_path / "latin1.txt")
    assert result.code == 1
    assert f"{tmp_path / 'latin1.txt'} is not UTF-8 text (byte 0xe9 at byte 3): save it as UTF-8" in result.err
    result = cli(command, "--model", "no/such-model", "--input", tmp_path / "missing.txt")
    assert f"{tmp_path / 'missing.txt'} not found: check the --input path" in result.err


def test_eval_of_an_adapter_without_model_names_its_own_options(cli, tmp_path):
    line = one_error_line(cli("eval", "--adapter", tmp_path, "--task", "classify"))
    assert "`kasa-peft eval --adapter DIR` needs --model" in line and "--config" not in line


def test_version():
    result = subprocess.run([sys.executable, "-m", "kasa_peft.cli", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == f"kasa-peft {kasa_peft.__version__}"


def test_the_package_exports_the_core_api_lazily():
    import kasa_peft.core

    assert sorted(kasa_peft.__all__) == sorted([*kasa_peft.core.__all__, "__version__"])
    assert all(getattr(kasa_peft, name) is getattr(kasa_peft.core, name) for name in kasa_peft.core.__all__)


def test_config_file_with_command_line_overrides(cli, bert_dir, files, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"task: classify\nmodel: {bert_dir}\ntrain_file: {files[0]}\neval_file: {files[1]}\n"
                      "text-columns: review\nlabel-column: label\nlr: 5e-4\nr: 4\nmax_steps: 3\nbatch_size: 4\n"
                      "max_length: 64\n")
    out = tmp_path / "run"
    result = cli("train", "--config", config, "--output-dir", out, "--max-steps", 1, "--alpha", 8)
    assert result.code == 0, result.err
    recorded = json.loads((out / "metrics.json").read_text())["config"]
    assert (recorded["lr"], recorded["r"], recorded["max_steps"], recorded["alpha"]) == (5e-4, 4, 1, 8.0)


def one_error_line(result) -> str:
    """The run failed with exactly one `kasa-peft: error:` line, last on stderr, and no traceback."""
    assert result.code == EXIT_ERROR
    assert "Traceback" not in result.err and result.err.count("kasa-peft: error:") == 1
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("kasa-peft: error: ")
    return last


@pytest.mark.parametrize(("case", "expected"), [
    ("missing data file", "glue/RTE/dev.tsv not found: pass --data-dir"),
    ("wrong column", "no column 'sentiment'; available columns: 'review', 'label'"),
    ("unknown label", "label 'maybe' is not one of 'neg', 'neutral', 'pos'"),
    ("missing model", "does not exist"),
    ("gguf without the gguf package", "needs the gguf package: run `pip install gguf`"),
    ("unknown task", "unknown task 'glue:colaa'; choose one of: glue:cola"),
    ("unknown method", "unknown method 'qlora'; choose one of: kasa, lora"),
    ("rank too large", "r=32 is too large for layer"),
    ("missing classify option", "--task classify needs --eval-file"),
    ("unknown config key", "unknown setting 'learning_rate' in config file"),
    ("max length beyond the model", "--max-length 128 exceeds the 64 positions"),
])
def test_bad_input_ends_with_one_clear_error(case, expected, cli, bert_dir, files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = classify_args(bert_dir, files, out)
    if case == "missing data file":
        args = ["train", "--task", "glue:rte", "--model", bert_dir, "--data-dir", tmp_path, "--output-dir", out]
    elif case == "wrong column":
        args[args.index("label")] = "sentiment"
    elif case == "unknown label":
        files[1].write_text(files[1].read_text() + "the plot was odd,maybe\n")
    elif case == "missing model":
        args[args.index(bert_dir)] = str(tmp_path / "no-such-model")
    elif case == "gguf without the gguf package":
        (tmp_path / "model.gguf").write_bytes(b"GGUF")
        args[args.index(bert_dir)] = str(tmp_path / "model.gguf")
        monkeypatch.setenv("KASA_PEFT_CACHE", str(tmp_path / "cache"))
        hide_package(monkeypatch, "gguf")
    elif case == "unknown task":
        args[args.index("classify")] = "glue:colaa"
    elif case == "unknown method":
        args += ["--method", "qlora"]
    elif case == "rank too large":
        args += ["--r", 32]
    elif case == "missing classify option":
        args = [a for a in args if a not in ("--eval-file", files[1])]
    elif case == "unknown config key":
        (tmp_path / "bad.yaml").write_text("learning_rate: 0.1\n")
        args += ["--config", tmp_path / "bad.yaml"]
    elif case == "max length beyond the model":
        args = [a for a in args if a not in ("--max-length", 64)]
    assert expected in one_error_line(cli(*args))
    assert not out.exists()


def hide_package(monkeypatch, name: str) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real_find_spec(n, *a))


def test_other_commands_fail_cleanly(cli, tmp_path):
    assert "holds no finished run" in one_error_line(cli("eval", "--run", tmp_path))
    assert "needs --run DIR" in one_error_line(cli("eval"))
    (tmp_path / "p.txt").write_text("a\n")
    assert "--references" in one_error_line(cli("score", "classify", "--predictions", tmp_path / "p.txt"))
    assert "not found" in one_error_line(cli("score", "glue:cola", "--predictions", tmp_path / "missing.txt"))


def test_a_missing_optional_package_names_the_extra_that_brings_it(cli, tmp_path, monkeypatch):
    """`score e2e` after the quickstart's install (no `nlg` extra): the error names the extra, which brings all
    four metric packages, not only the first one found missing."""
    hide_package(monkeypatch, "sacrebleu")  # as when it is not installed
    (tmp_path / "refs.csv").write_text('mr,ref\n"name[A]","A is a pub."\n')
    (tmp_path / "p.txt").write_text("A is a pub.\n")
    line = one_error_line(cli("score", "e2e", "--predictions", tmp_path / "p.txt", "--references",
                              tmp_path / "refs.csv"))
    assert "'sacrebleu'" in line and "pip install 'kasa-peft[nlg]'" in line


def test_a_run_whose_scoring_package_is_missing_fails_before_training(cli, tmp_path, monkeypatch):
    """sft is scored with rouge-score (the `nlg` extra): without it the run stops before loading the model,
    with the extra named, instead of failing after training; no run directory is made."""
    hide_package(monkeypatch, "rouge_score")
    llama_dir = save_model(tmp_path / "llama", tiny_llama())
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"instruction": "Name a colour.", "output": "Blue."}) + "\n")
    out = tmp_path / "run"
    line = one_error_line(cli("train", "--task", "sft", "--model", llama_dir, "--train-file", data, "--eval-file",
                              data, "--output-dir", out, "--max-steps", 1, "--max-length", 32))
    assert "'rouge_score'" in line and "pip install 'kasa-peft[nlg]'" in line
    assert not out.exists()


def test_score_glue_and_classify_against_known_values(cli, tmp_path):
    predictions, references = tmp_path / "p.txt", tmp_path / "r.txt"
    predictions.write_text("acceptable\nunacceptable\n1\nacceptable\n")  # names or ids
    references.write_text("1\n0\n0\n1\n")
    result = cli("score", "glue:cola", "--predictions", predictions, "--references", references)
    assert result.code == 0, result.err
    tp, tn, fp, fn = 2, 1, 1, 0
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert json.loads(result.out) == pytest.approx({"matthews_correlation": mcc})

    predictions.write_text("pos\nneg\npos\npos\n")
    references.write_text("pos\nneg\nneg\npos\n")
    result = cli("score", "classify", "--predictions", predictions, "--references", references)
    f1_neg, f1_pos = 2 * 1 / (2 * 1 + 1), 2 * 2 / (2 * 2 + 1)  # 2 TP / (2 TP + FP + FN) per class
    assert json.loads(result.out) == pytest.approx({"accuracy": 0.75, "macro_f1": (f1_neg + f1_pos) / 2})


def test_trained_classifier_serves_predict_and_inspect(cli, bert_dir, files, tmp_path):
    out = tmp_path / "run"
    assert cli(*classify_args(bert_dir, files, out)).code == 0
    texts = [line.rsplit(",", 1)[0] for line in files[1].read_text().splitlines()[1:]]
    (tmp_path / "inputs.txt").write_text("\n".join(texts) + "\n")
    predicted = cli("predict", "--model", bert_dir, "--adapter", f"reviews={out}", "--input", tmp_path / "inputs.txt",
                    "--max-length", 64)
    assert predicted.code == 0, predicted.err
    labels = [json.loads(line)["label"] for line in predicted.out.splitlines()]
    assert labels == (out / "predictions_eval.txt").read_text().splitlines()  # as the run's own evaluation

    inspected = cli("inspect", out)
    assert inspected.code == 0 and "sigma" in inspected.out and "classifier" in inspected.out


def test_serving_and_peft_exports_run_without_the_gguf_package(cli, bert_dir, files, tmp_path, monkeypatch):
    """The quickstart's install has no `gguf` (an extra): predict, inspect and the PEFT exports must not import it;
    only the llama.cpp formats need it, and say so."""
    out = tmp_path / "run"
    assert cli(*classify_args(bert_dir, files, out)).code == 0
    for name in [n for n in sys.modules if n.startswith(("gguf", "kasa_peft.interop.cli_commands",
                                                         "kasa_peft.interop.gguf"))]:
        monkeypatch.delitem(sys.modules, name)
    interop = importlib.import_module("kasa_peft.interop")
    for attribute in ("cli_commands", "gguf"):
        monkeypatch.delattr(interop, attribute, raising=False)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as when it is not installed

    predicted = cli("predict", "--model", bert_dir, "--adapter", f"a={out}", "--text", "fine", "--max-length", 64)
    assert predicted.code == 0, predicted.err
    assert cli("inspect", out).code == 0
    assert cli("export", out, "--format", "lora", "--out", tmp_path / "lora").code == 0
    assert "gguf" in one_error_line(cli("export", out, "--format", "gguf", "--out", tmp_path / "a.gguf"))


def test_predict_with_several_adapters_uses_each_ones_head_and_label_names(cli, bert_dir, files, tmp_path):
    """Three runs: 3 classes, and two of 2 classes with different names. Mixed in one predict call, each line
    gets exactly the label its own run's evaluation gave it (no size mismatch, no other run's names)."""
    two_class = {}
    for name, (negative, positive) in {"yesno": ("no", "yes"), "badgood": ("bad", "good")}.items():
        directory = tmp_path / name
        directory.mkdir()
        for path in files:
            rows = path.read_text().splitlines()
            kept = [row.replace(",neg", f",{negative}").replace(",pos", f",{positive}") for row in rows[1:]
                    if not row.endswith(",neutral")]
            (directory / path.name).write_text("\n".join([rows[0], *kept]) + "\n")
        two_class[name] = (directory / files[0].name, directory / files[1].name)
    runs = {"three": files, **two_class}
    lines, expected = [], []
    for name, (train_file, eval_file) in runs.items():
        assert cli(*classify_args(bert_dir, (train_file, eval_file), tmp_path / f"run-{name}")).code == 0
        texts = [row.rsplit(",", 1)[0] for row in eval_file.read_text().splitlines()[1:]]
        lines += [f"{name}\t{text}" for text in texts]
        expected += (tmp_path / f"run-{name}" / "predictions_eval.txt").read_text().splitlines()
    (tmp_path / "mixed.txt").write_text("\n".join(lines) + "\n")
    adapters = [arg for name in ("yesno", "three", "badgood")
                for arg in ("--adapter", f"{name}={tmp_path / f'run-{name}'}")]
    result = cli("predict", "--model", bert_dir, *adapters, "--input", tmp_path / "mixed.txt", "--max-length", 64)
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [row["label"] for row in rows] == expected
    assert {row["label"] for row in rows if row["adapter"] == "yesno"} <= {"no", "yes"}


def test_exports_of_a_trained_classifier_work_in_transformers_peft_and_import(cli, bert_dir, files, tmp_path):
    """The run's base is a bare encoder directory (like minilm). Merged: a complete model directory whose
    text-classification pipeline labels like `kasa-peft predict`. LoRA: a config naming the real base and the
    task, so AutoPeftModelForSequenceClassification loads it. PEFT-KaSA: `kasa-peft import` reads it back."""
    import transformers
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForSequenceClassification

    run = tmp_path / "run"
    assert cli(*classify_args(bert_dir, files, run)).code == 0
    texts = [line.rsplit(",", 1)[0] for line in files[1].read_text().splitlines()[1:]]
    (tmp_path / "inputs.txt").write_text("\n".join(texts) + "\n")

    def predicted(*adapter_args) -> list[str]:
        result = cli("predict", "--model", bert_dir, *adapter_args, "--input", tmp_path / "inputs.txt",
                     "--max-length", 64)
        assert result.code == 0, result.err
        return [json.loads(line)["label"] for line in result.out.splitlines()]

    expected = predicted("--adapter", run)
    assert set(expected) <= {"neg", "neutral", "pos"}
    for fmt in ("merged", "lora", "peft-kasa"):
        result = cli("export", run, "--format", fmt, "--out", tmp_path / fmt)
        assert result.code == 0, result.err

    merged = tmp_path / "merged"
    assert (merged / "tokenizer_config.json").is_file()
    classify = transformers.pipeline("text-classification", model=str(merged), device="cpu")
    assert [row["label"] for row in classify(texts)] == expected

    written = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert (written["task_type"], written["base_model_name_or_path"]) == ("SEQ_CLS", str(Path(bert_dir).resolve()))
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path / "lora"), num_labels=3).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(bert_dir)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert [["neg", "neutral", "pos"][i] for i in logits.argmax(-1).tolist()] == expected

    for fmt in ("lora", "peft-kasa"):  # the class names travel in the model card, and its snippet loads them
        card = ModelCard.load(tmp_path / fmt / "README.md")
        assert (card.data.base_model, card.data.library_name) == (str(Path(bert_dir).resolve()), "peft")
        namespace: dict = {}
        exec(card.text.split("```python\n")[1].split("```")[0], namespace)
        with torch.no_grad():
            logits = namespace["model"].eval()(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        assert [namespace["model"].config.id2label[i] for i in logits.argmax(-1).tolist()] == expected

    imported = cli("import", tmp_path / "peft-kasa", "--out", tmp_path / "imported", "--base", bert_dir)
    assert imported.code == 0, imported.err
    class_ids = [["neg", "neutral", "pos"].index(label) for label in expected]
    assert predicted("--adapter", tmp_path / "imported") == class_ids  # no metrics.json beside it: class ids


@pytest.fixture
def group_writable_umask():
    previous = os.umask(0o002)
    yield
    os.umask(previous)


def test_written_files_follow_the_umask(cli, bert_dir, files, tmp_path, group_writable_umask):
    """tempfile (0600 files, 0700 directories) and safetensors (0600) must not make results private."""
    run = tmp_path / "run"
    assert cli(*classify_args(bert_dir, files, run)).code == 0
    assert cli("export", run, "--format", "merged", "--out", tmp_path / "merged").code == 0
    assert cli("export", run, "--format", "lora", "--out", tmp_path / "lora").code == 0
    for directory in (run, tmp_path / "merged", tmp_path / "lora"):
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (directory, *directory.iterdir())}
        expected = {name: oct(0o775 if (directory / name).is_dir() or name == directory.name else 0o664)
                    for name in modes}
        assert modes == expected


def test_demo_compares_untrained_kasa_and_lora(cli, bert_dir, tmp_path):
    result = cli("demo", "--output-dir", tmp_path / "demo", "--model", bert_dir, "--max-train-samples", 24,
                 "--max-eval-samples", 30, "--max-steps", 2, "--batch-size", 8)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("model ")) + 1:]
    rows = {line.split()[0]: line.split() for line in table}
    assert set(rows) == {"untrained", "kasa", "lora"}
    for method in ("kasa", "lora"):
        record = json.loads((tmp_path / "demo" / method / "metrics.json").read_text())
        assert float(rows[method][1]) == pytest.approx(record["final"]["metrics"]["accuracy"], abs=1e-4)
        assert record["config"]["max_train_samples"] == 24 and record["label_names"] == ["negative", "neutral",
                                                                                          "positive"]


def test_score_commonsense_and_sft(cli, data_dir, tmp_path):
    answers = [r["answer"] for r in json.loads((data_dir / "commonsense/boolq/test.json").read_text())]
    predictions = tmp_path / "boolq.txt"
    predictions.write_text("the correct answer is true\n" * len(answers))
    result = cli("score", "commonsense:boolq", "--predictions", predictions, "--data-dir", data_dir)
    assert result.code == 0, result.err
    assert json.loads(result.out) == pytest.approx({"generation_accuracy": answers.count("true") / len(answers)})

    outputs, references = tmp_path / "out.jsonl", tmp_path / "refs.txt"
    outputs.write_text(json.dumps({"generation": "The cat sat."}) + "\n" + json.dumps("a dog") + "\n")
    references.write_text("the cat sat\nthe dog barked\n")
    result = cli("score", "sft", "--predictions", outputs, "--references", references)
    # exact match after lowercasing and dropping punctuation: 1 of 2; ROUGE-L F1: 1 and 2*(1/2*1/3)/(1/2+1/3) = 0.4
    assert json.loads(result.out) == pytest.approx({"exact_match": 50.0, "rouge_l": 100 * (1 + 0.4) / 2})


def test_score_without_data_dir_reads_the_hub(cli, monkeypatch, tmp_path):
    """Without --data-dir the E2E test references come from the hub (``load_dataset`` is faked: no network) and
    score as the same references given as a file; a failed hub load ends in one line naming the fix."""
    import datasets

    from kasa_peft.tasks import e2e, hub

    monkeypatch.setattr(e2e.shutil, "which", lambda name: None)  # BLEU and NIST only: no Java metrics
    pairs = [("name[A]", "A is here."), ("name[A]", "Here is A."), ("name[B]", "B is a pub.")]
    rows = [{"meaning_representation": mr, "human_reference": ref} for mr, ref in pairs]
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: rows)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    predictions, references = tmp_path / "out.txt", tmp_path / "refs.csv"
    predictions.write_text("A is here.\nB is a pub.\n")
    references.write_text("mr,ref\n" + "".join(f"{mr},{ref}\n" for mr, ref in pairs))
    online = cli("score", "e2e", "--predictions", predictions)
    assert online.code == 0, online.err
    assert "BLEU, METEOR and ROUGE_L are fractions (0-1)" in online.err and "x100" in online.err
    assert json.loads(online.out) == json.loads(cli("score", "e2e", "--predictions", predictions,
                                                    "--references", references).out)

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    line = one_error_line(cli("score", "glue:rte", "--predictions", predictions))
    assert "nyu-mll/glue (config 'rte'), split 'validation'" in line and "Couldn't reach" in line
    assert line.endswith("pass --data-dir with the layout of shared/data (see the README), or --train-file/--eval-file")


def test_bugs_keep_their_traceback(cli, monkeypatch, tmp_path):
    """Only errors about the user's input become one line; anything else (a bug) is raised, and --traceback
    shows the traceback of input errors too."""
    import kasa_peft.pipelines.scoring as scoring

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(scoring, "score", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli("score", "e2e", "--predictions", tmp_path / "p.txt")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError):
        cli("--traceback", "score", "glue:cola", "--predictions", tmp_path / "missing.txt")


@pytest.mark.parametrize("damage, message", [
    (lambda path: rewrite_metadata(path, r=4), r"run: its config says r = 4 but layer '.*' has rank 8"),
    (lambda path: flip_a_data_byte(path / "adapter_model.safetensors"),
     r"run/adapter_model\.safetensors is corrupt: its tensor data do not match the sha256"),
], ids=["rank", "flipped-byte"])
def test_a_damaged_adapter_fails_predict_with_one_line(cli, bert_dir, files, tmp_path, damage, message):
    out = tmp_path / "run"
    assert cli(*classify_args(bert_dir, files, out)).code == 0
    damage(out)
    predicted = cli("predict", "--model", bert_dir, "--adapter", f"reviews={out}", "--text", "fine", "--max-length", 64)
    assert re.search(message, one_error_line(predicted))
