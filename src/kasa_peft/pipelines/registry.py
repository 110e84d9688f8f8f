"""From a task name to its pipeline (data loaded and checked)."""

from __future__ import annotations

from collections.abc import Callable

from .base import TaskPipeline
from .classification import file_pipeline, glue_pipeline, sentiment_pipeline
from .commonsense import commonsense_pipeline
from .config import RunConfig
from .e2e import e2e_pipeline
from .ifeval import ifeval_pipeline
from .sft import sft_pipeline
from .task_names import parse_task


def build_pipeline(config: RunConfig) -> TaskPipeline:
    """The pipeline of ``config.task``, its data read (a missing file or column fails here)."""
    task = parse_task(config.task)
    builders: dict[str, Callable[[], TaskPipeline]] = {
        "glue": lambda: glue_pipeline(config, task.required_member),
        "classify": lambda: file_pipeline(config),
        "sentiment": lambda: sentiment_pipeline(config),
        "e2e": lambda: e2e_pipeline(config),
        "commonsense": lambda: commonsense_pipeline(config, task.required_member),
        "sft": lambda: sft_pipeline(config),
        "ifeval": lambda: ifeval_pipeline(config),
    }
    return builders[task.family]()
