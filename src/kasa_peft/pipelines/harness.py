"""EleutherAI's lm-evaluation-harness on a model carrying an adapter, with task definitions on local data.

The adapter is merged into the base weights (KaSA: ``W - U_r S_r V_r^T + (alpha/r) B diag(sigma) A`` per layer,
core ``merge_and_unload``; PEFT baselines: PEFT's ``merge_and_unload``), and lm-eval's Hugging Face backend
(``HFLM``) runs that plain transformers model: the same numbers as the adapter, with no adapter code in lm-eval.

``commonsense:<set>`` (or ``commonsense:all``) are our eight LLM-Adapters sets, read from ``--data-dir`` (offline)
and scored as lm-eval ``multiple_choice`` tasks: the context is exactly the prompt our commonsense pipeline
encodes (the Alpaca prompt, rendered through the chat template when it uses one), the choices are its option
targets (``the correct answer is <option>``), and ``acc`` is lm-eval's. That is the same comparison as our
``option_accuracy``, so the two must agree (``tests/pipelines/test_harness.py``). Any other name is passed to
lm-eval's own task registry (which may fetch its data from the hub).
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from .base import fixed_subset
from .task_names import parse_task
from ..tasks.commonsense import (
    COMMONSENSE_SETS, answer_options, answer_target, format_prompt, gold_option, load_commonsense,
)


def merged_model(model: nn.Module) -> nn.Module:
    """``model`` with its adapter (KaSA or PEFT) merged into the weights; a plain model is returned as it is."""
    from ..core import kasa_layers, merge_and_unload

    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        return cast(Any, model).merge_and_unload()  # a PEFT model
    return merge_and_unload(model) if any(True for _ in kasa_layers(model)) else model


def commonsense_task(name: str, data_dir: str | None, tokenizer, use_chat_template: bool,
                     max_eval_samples: int | None) -> Any:
    """An lm-eval ``ConfigurableTask`` for one of our commonsense sets (module docstring)."""
    from lm_eval.api.task import ConfigurableTask
    from datasets import Dataset, DatasetDict

    examples = fixed_subset(load_commonsense(name, data_dir, "test"), max_eval_samples)
    rows = [{"prompt": _context(format_prompt(e), tokenizer, use_chat_template),
             "choices": [answer_target(o) for o in answer_options(name, e)], "gold": gold_option(name, e)}
            for e in examples]
    config = {
        "task": f"kasa_commonsense_{name}", "output_type": "multiple_choice", "test_split": "test",
        "custom_dataset": lambda **_: DatasetDict({"test": Dataset.from_list(rows)}),
        "doc_to_text": "{{prompt}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "target_delimiter": "", "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    return ConfigurableTask(config=config)


def _context(prompt: str, tokenizer, use_chat_template: bool) -> str:
    if not use_chat_template:
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)


def harness_tasks(names: list[str], data_dir: str | None, tokenizer, use_chat_template: bool,
                  max_eval_samples: int | None) -> list[Any]:
    """Our local task objects for ``commonsense:...`` names, lm-eval registry names for the rest."""
    tasks: list[Any] = []
    for name in names:
        if name.startswith("commonsense:"):
            member = parse_task(name).required_member
            tasks += [commonsense_task(s, data_dir, tokenizer, use_chat_template, max_eval_samples)
                      for s in (COMMONSENSE_SETS if member == "all" else (member,))]
        else:
            tasks.append(name)
    return tasks


def run_harness(model: nn.Module, tokenizer, names: list[str], data_dir: str | None, use_chat_template: bool,
                batch_size: int, max_eval_samples: int | None = None) -> dict[str, dict[str, Any]]:
    """lm-eval's ``simple_evaluate`` on ``model`` (adapter merged): ``{task: {metric: value}}``."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise ImportError(f"--harness needs lm-evaluation-harness ({error}); install it with "
                          "`pip install 'kasa-peft[instruct]'`") from error
    plain = merged_model(model)
    adds_bos = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    lm = HFLM(pretrained=plain, tokenizer=tokenizer, batch_size=batch_size, device=str(plain.device),
              add_bos_token=adds_bos and not use_chat_template)  # as our plain prompts; the template writes its own
    tasks = harness_tasks(names, data_dir, tokenizer, use_chat_template, max_eval_samples)
    # our tasks hold their subset already; `limit` (the first N) cuts lm-eval's own tasks to the same size
    results = simple_evaluate(model=lm, tasks=tasks, limit=max_eval_samples, log_samples=False)
    return {task: {k: v for k, v in metrics.items() if k != "alias"} for task, metrics in results["results"].items()}
