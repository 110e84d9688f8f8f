"""Where a run's training logs go besides ``metrics.json``: the Trainer's logging backends (``--report-to``).

``--report-to`` takes ``none`` or comma-separated names of the installed transformers' own integrations
(``tensorboard``, ``wandb``, ``mlflow``, ...); every name is checked before anything loads, so one that transformers
does not know, or whose package is missing, stops the run with one line naming the fix. ``all`` is refused: the
run's record names the backends it logged to. Each backend receives what Trainer logs, KaSA's ``task_loss``,
``reg_l2`` and ``reg_l3`` included. TensorBoard writes to ``<output-dir>/runs/<date>_<host>/`` (transformers' layout
under the run directory: its default, ``checkpoints/``, is removed when the run finishes), one folder per
invocation, so a resumed run adds one; ``TENSORBOARD_LOGGING_DIR`` still overrides it.
"""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer
from transformers.integrations import (
    INTEGRATION_TO_CALLBACK, TensorBoardCallback, get_available_reporting_integrations,
)
from transformers.integrations.integration_utils import default_logdir

NO_REPORTING = "none"
PACKAGES = {"azure_ml": "azureml-core", "flyte": "flytekit"}  # the others are installed under their own name


def reporting_backends(report_to: str) -> list[str]:
    """The backends ``--report-to`` names (``[]`` for ``none``), each known to transformers and installed."""
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    if names == [NO_REPORTING]:
        return []
    choices = f"choose {NO_REPORTING} or comma-separated names of: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
    if not names:
        raise ValueError(f"--report-to is empty: {choices}")
    available = get_available_reporting_integrations()
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(f"--report-to {name!r} is not a logging backend of the installed transformers: {choices}")
        if name not in available:
            package = PACKAGES.get(name, name)
            raise ValueError(f"--report-to {name}: the {package} package is not installed: `pip install {package}`, "
                             f"or train with --report-to {NO_REPORTING}")
    return names


def keep_tensorboard_logs_in(trainer: Trainer, output_dir: Path) -> None:
    """Point ``trainer``'s TensorBoard callback, if it has one, at ``output_dir/runs/<date>_<host>`` (module
    docstring), unless ``TENSORBOARD_LOGGING_DIR`` already chose its directory."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(output_dir / default_logdir())


__all__ = ["NO_REPORTING", "keep_tensorboard_logs_in", "reporting_backends"]
