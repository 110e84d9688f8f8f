"""`kasa-peft train`'s Trainer switches: --bf16, --gradient-checkpointing, --gradient-accumulation-steps,
--report-to and --torch-compile reach the Trainer, train as they should with KaSA layers, and are recorded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from kasa_peft.cli import build_parser
from kasa_peft.core import KasaLayer
from kasa_peft.pipelines.config import read_config_file, resolve_config
from kasa_peft.pipelines.run import train
from kasa_peft.pipelines.run_dir import METRICS_FILE

from tiny_models import tiny_bert

from .helpers import save_model, write_classification_files
from .test_run import Interrupt

ADAPTER = "adapter_model.safetensors"


class Watch(TrainerCallback):
    """Keeps the Trainer's own arguments, counts the training forward passes of one KaSA layer (with their
    output dtype), and copies the trainable gradients the optimizer's first step is about to apply."""

    def __init__(self) -> None:
        self.args, self.forwards, self.dtypes, self.gradients = None, 0, set(), None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args = args
        layer = next(m for m in model.modules() if isinstance(m, KasaLayer))
        self.hook = layer.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        if module.training:  # not the evaluations
            self.forwards += 1
            self.dtypes.add(output.dtype)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradients is None:
            self.gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_end(self, args, state, control, **kwargs):
        self.hook.remove()


@pytest.fixture
def settings(bert_dir, tmp_path):
    """A tiny classification run's settings, as the command line gives them."""
    train_file, eval_file = write_classification_files(tmp_path, rows=24)
    return lambda out, **changes: {
        "task": "classify", "model": bert_dir, "output_dir": str(tmp_path / out), "train_file": str(train_file),
        "eval_file": str(eval_file), "text_columns": "review", "label_column": "label", "max_length": 32,
        "batch_size": 4, "max_steps": 3, "dropout": 0.1, "seed": 5, **changes}


@pytest.fixture
def config(settings):
    return lambda out, **changes: resolve_config({}, settings(out, **changes))


def trained_once(config, out: str, **changes):
    watch = Watch()
    result = train(config(out, **changes), callbacks=[watch])
    return result, watch, load_file(result.output_dir / ADAPTER)


def assert_same_adapter(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=atol, msg=key)


def test_switches_from_a_config_file_and_the_command_line_reach_the_trainer(settings, tmp_path):
    config_file = tmp_path / "switches.yaml"
    config_file.write_text("bf16: true\ngradient_checkpointing: yes\nreport_to: tensorboard\ntorch_compile: true\n")
    flags = build_parser().parse_args(["train", "--gradient-accumulation-steps", "2", "--no-torch-compile"])
    given = {name: value for name, value in vars(flags).items()
             if name in ("gradient_accumulation_steps", "torch_compile")}
    run = resolve_config(read_config_file(config_file), {**settings("run", max_steps=2), **given})
    watch = Watch()
    record = train(run, callbacks=[watch]).record

    args = watch.args
    assert (args.bf16, args.gradient_checkpointing, args.gradient_accumulation_steps, args.torch_compile) == (
        True, True, 2, False)
    assert args.report_to == ["tensorboard"]
    # 2 steps of 2 micro-batches, each layer forward run twice (the checkpointed recompute)
    assert watch.forwards == 2 * 2 * 2
    assert {name: record["config"][name] for name in ("bf16", "gradient_checkpointing", "report_to",
                                                      "gradient_accumulation_steps", "torch_compile")} == {
        "bf16": True, "gradient_checkpointing": True, "report_to": "tensorboard", "gradient_accumulation_steps": 2,
        "torch_compile": False}
    assert record["changed_on_resume"] == {}


def test_gradient_checkpointing_gives_the_same_gradients_and_training(config):
    plain, plain_watch, plain_adapter = trained_once(config, "plain")
    checkpointed, watch, adapter = trained_once(config, "checkpointed", gradient_checkpointing=True)

    assert (plain_watch.forwards, watch.forwards) == (3, 6)  # 3 steps; the KaSA layer recomputed in each backward
    assert watch.gradients.keys() == plain_watch.gradients.keys()
    assert any(name.endswith("sigma") for name in watch.gradients)
    for name, gradient in plain_watch.gradients.items():
        torch.testing.assert_close(watch.gradients[name], gradient, rtol=1e-6, atol=1e-9, msg=name)
    for got, want in zip(checkpointed.record["losses"], plain.record["losses"], strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    assert_same_adapter(adapter, plain_adapter, atol=1e-6)


def test_bf16_trains_in_bfloat16_with_float32_weights(config):
    untrained = load_file(train(config("untrained", max_steps=1, lr=1e-12)).output_dir / ADAPTER)
    result, watch, adapter = trained_once(config, "bf16", bf16=True)

    assert watch.dtypes == {torch.bfloat16}  # the KaSA layer computed under autocast
    assert {key: value.dtype for key, value in adapter.items()} == {key: v.dtype for key, v in untrained.items()}
    losses = result.record["losses"]
    assert [entry["step"] for entry in losses] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(list(entry.values()))).all() for entry in losses)
    moved = [key for key, value in untrained.items() if not torch.equal(value, adapter[key])]
    assert any(key.endswith("sigma") for key in moved)


def test_tensorboard_event_files_hold_the_kasa_terms(config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(config("logged", report_to="tensorboard"))
    runs = list((result.output_dir / "runs").iterdir())
    assert len(runs) == 1 and list(runs[0].glob("events.out.tfevents.*"))
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    for name in ("loss", "task_loss", "reg_l2", "reg_l3"):
        logged = [(event.step, event.value) for event in events.Scalars(f"train/{name}")]
        assert logged == [(entry["step"], pytest.approx(entry[name], rel=1e-6)) for entry in result.record["losses"]]


@pytest.mark.parametrize(("report_to", "message"), [
    ("nosuch", "--report-to 'nosuch' is not a logging backend of the installed transformers: choose none or "
               "comma-separated names of: "),
    ("all", "--report-to 'all' is not a logging backend"),
    ("tensorboard,none", "--report-to 'none' is not a logging backend"),
    ("mlflow", "--report-to mlflow: the mlflow package is not installed: `pip install mlflow`, or train with "
               "--report-to none"),
], ids=["unknown", "all", "none-among-others", "not-installed"])
def test_an_unsupported_report_to_is_refused_with_one_line_and_nothing_written(report_to, message, cli, bert_dir,
                                                                               tmp_path, monkeypatch):
    import kasa_peft.pipelines.reporting as reporting

    monkeypatch.setattr(reporting, "get_available_reporting_integrations", lambda: ["tensorboard"])
    out = tmp_path / "run"
    result = cli("train", "--task", "classify", "--model", bert_dir, "--output-dir", out, "--train-file",
                 tmp_path / "absent.csv", "--report-to", report_to)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith(f"kasa-peft: error: {message}") and result.err.count("\n") == 1
    assert not out.exists()


def test_resume_may_change_how_it_computes_and_reports_and_records_it(config):
    uninterrupted = train(config("a", max_steps=4, save_steps=2))
    interrupted = config("b", max_steps=4, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, callbacks=[Interrupt(at_step=3)])
    resumed = train(interrupted.replace(resume=True, gradient_checkpointing=True, report_to="tensorboard"))

    assert resumed.record["changed_on_resume"] == {
        "gradient_checkpointing": {"started": False, "resumed": True},
        "report_to": {"started": "none", "resumed": "tensorboard"}}
    assert json.loads((resumed.output_dir / METRICS_FILE).read_text())["config"]["gradient_checkpointing"] is True
    assert_same_adapter(load_file(resumed.output_dir / ADAPTER), load_file(uninterrupted.output_dir / ADAPTER),
                        atol=1e-6)
    with pytest.raises(ValueError, match="different settings \\(lr\\)"):
        unfinished = config("c", max_steps=4, save_steps=2)
        with pytest.raises(KeyboardInterrupt):
            train(unfinished, callbacks=[Interrupt(at_step=3)])
        train(unfinished.replace(resume=True, bf16=True, lr=1e-3))


def inductor_compiles() -> str | None:
    """Why torch.compile's inductor cannot compile here, or ``None`` when it can."""
    try:
        torch.compile(lambda x: torch.sin(x) + 1, backend="inductor")(torch.ones(3))
    except Exception as err:  # noqa: BLE001  (any failure of the toolchain means: skip)
        return f"{type(err).__name__}: {err}"
    return None


def test_torch_compile_trains_like_eager(settings, tmp_path):
    problem = inductor_compiles()
    if problem is not None:
        pytest.skip(f"torch.compile's inductor cannot compile here ({problem[:200]})")
    encoder = tiny_bert().bert
    encoder.config.hidden_dropout_prob = encoder.config.attention_probs_dropout_prob = 0.0  # RNGs differ when compiled
    model = save_model(tmp_path / "no_dropout", encoder)
    # every example cut to 8 tokens: one shape, so one forward and one backward graph to compile
    config = lambda out, **changes: resolve_config({}, settings(  # noqa: E731
        out, model=model, max_length=8, max_steps=2, dropout=0.0, **changes))
    eager, _, eager_adapter = trained_once(config, "eager")
    torch._dynamo.utils.counters.clear()
    compiled, watch, adapter = trained_once(config, "compiled", torch_compile=True)

    assert watch.args.torch_compile and watch.args.torch_compile_backend == "inductor"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the model did run compiled
    assert compiled.record["config"]["torch_compile"] is True
    for got, want in zip(compiled.record["losses"], eager.record["losses"], strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert_same_adapter(adapter, eager_adapter, atol=1e-5)
