"""MT-Bench (Zheng et al., 2023): 80 two-turn questions graded by an LLM judge, as FastChat's ``llm_judge`` does it.

The judge prompts are data (``judge_prompts.jsonl``); this module picks one per question and turn, fills it in,
and reads the verdict back:

* **single-answer grading**: the judge rates one answer 1-10 (``[[rating]]``); turn 1 is judged on its own,
  turn 2 with the whole conversation. Math, reasoning and coding questions are judged against GPT-4's reference
  answers (the ``*-math-*`` prompts). A model's score is the mean rating over the judgments that parsed.
* **pairwise comparison**: the judge picks ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). Each question and turn is
  judged in both orders; a model wins only when both orders agree, and disagreeing orders count as a tie
  (FastChat's rule, which cancels the judge's position bias).

A verdict the judge did not write in the asked format is *unparseable*: it is kept, counted and reported, and
left out of the means and win rates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from ._common import PathLike, data_path, read_json_records

MT_BENCH_DIR = "instruct/mt_bench"
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS (MT-Bench's part of it)
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 2048
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
Mode = Literal["single", "pairwise"]


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str
    turns: tuple[str, str]
    references: tuple[str, str] | None  # GPT-4's answers, for the reference categories


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system_prompt: str
    prompt_template: str


def load_mt_bench(data_dir: PathLike) -> tuple[list[Question], dict[str, JudgePrompt]]:
    """The 80 questions (with reference answers where the protocol uses them) and the judge prompts by name."""
    references = {record["question_id"]: tuple(record["choices"][0]["turns"])
                  for record in read_json_records(data_path(data_dir, f"{MT_BENCH_DIR}/reference_answer_gpt-4.jsonl"))}
    questions = []
    for record in read_json_records(data_path(data_dir, f"{MT_BENCH_DIR}/question.jsonl")):
        needs_reference = record["category"] in REFERENCE_CATEGORIES
        if needs_reference and record["question_id"] not in references:
            raise ValueError(f"MT-Bench question {record['question_id']} ({record['category']}) has no reference "
                             "answer in reference_answer_gpt-4.jsonl")
        questions.append(Question(record["question_id"], record["category"], tuple(record["turns"]),
                                  references[record["question_id"]] if needs_reference else None))
    prompts = {record["name"]: JudgePrompt(record["name"], record["system_prompt"], record["prompt_template"])
               for record in read_json_records(data_path(data_dir, f"{MT_BENCH_DIR}/judge_prompts.jsonl"))}
    return questions, prompts


def judge_prompt_name(mode: Mode, question: Question, turn: int) -> str:
    """FastChat's choice: ``single-v1`` / ``pair-v2``, ``-math-v1`` with a reference, ``-multi-turn`` for turn 2."""
    stem = ("single" if mode == "single" else "pair") + ("-math-v1" if question.references else
                                                         "-v1" if mode == "single" else "-v2")
    return stem + ("-multi-turn" if turn == 2 else "")


def judge_messages(prompts: dict[str, JudgePrompt], mode: Mode, question: Question, turn: int,
                   answers: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The chat messages for one judgment: ``answers`` holds one model's two turns (single) or two models' (A, B)."""
    prompt = prompts[judge_prompt_name(mode, question, turn)]
    fields: dict[str, str] = {}
    if question.references:
        fields.update(ref_answer_1=question.references[0], ref_answer_2=question.references[1])
    if turn == 1:
        fields["question"] = question.turns[0]
    else:
        fields.update(question_1=question.turns[0], question_2=question.turns[1])
    if mode == "single":
        (first, second), = answers
        fields.update({"answer": first} if turn == 1 else {"answer_1": first, "answer_2": second})
    else:
        for side, (first, second) in zip("ab", answers, strict=True):
            fields.update({f"answer_{side}": first} if turn == 1 else
                          {f"answer_{side}_1": first, f"answer_{side}_2": second})
    return [{"role": "system", "content": prompt.system_prompt},
            {"role": "user", "content": prompt.prompt_template.format(**fields)}]


def parse_rating(judgment: str) -> float | None:
    """The ``[[rating]]`` of a single-answer judgment (FastChat also accepts ``[rating]``); ``None`` if absent."""
    match = _RATING.search(judgment) or _RATING_FALLBACK.search(judgment)
    return float(match.group(1)) if match else None


def parse_preference(judgment: str) -> Literal["A", "B", "tie"] | None:
    """``A``, ``B`` or ``tie`` from a pairwise judgment's ``[[A]]``/``[[B]]``/``[[C]]``; ``None`` if absent."""
    verdicts: tuple[tuple[str, Literal["A", "B", "tie"]], ...] = (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"))
    for marker, verdict in verdicts:
        if marker in judgment:
            return verdict
    return None


def combine_orders(first: str | None, swapped: str | None) -> str | None:
    """One game's outcome for model 1 from the verdicts with model 1 as A (``first``) and as B (``swapped``):
    ``win``, ``loss`` or ``tie`` (a tie, or the two orders disagreeing); ``None`` if either did not parse."""
    if first is None or swapped is None:
        return None
    model_1 = {"A": "win", "B": "loss", "tie": "tie"}[first]
    model_1_swapped = {"A": "loss", "B": "win", "tie": "tie"}[swapped]
    return model_1 if model_1 == model_1_swapped else "tie"


def summarise_single(ratings: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean rating overall and per turn and category over the parsed ratings; ``unparseable`` counts the rest."""
    parsed = [r for r in ratings if r["rating"] is not None]

    def mean(rows: list[dict[str, Any]]) -> float | None:
        return sum(r["rating"] for r in rows) / len(rows) if rows else None
    categories = sorted({r["category"] for r in ratings})
    return {"score": mean(parsed), "judgments": len(ratings), "unparseable": len(ratings) - len(parsed),
            **{f"turn_{t}": mean([r for r in parsed if r["turn"] == t]) for t in (1, 2)},
            "by_category": {c: mean([r for r in parsed if r["category"] == c]) for c in categories}}


def summarise_pairwise(games: list[dict[str, Any]]) -> dict[str, Any]:
    """Wins, losses and ties of model 1 over the games whose two verdicts parsed; FastChat's adjusted win rate
    ``(wins + ties / 2) / games``."""
    outcomes = [g["outcome"] for g in games if g["outcome"] is not None]
    counts = {k: outcomes.count(k) for k in ("win", "loss", "tie")}
    decided = len(outcomes)
    return {**counts, "games": len(games), "unparseable": len(games) - decided,
            "win_rate": counts["win"] / decided if decided else None,
            "win_rate_adjusted": (counts["win"] + counts["tie"] / 2) / decided if decided else None}
