"""``kasa-peft judge``: MT-Bench answers from a model and its adapters, graded by an OpenAI-compatible LLM judge.

Answers: for every question, turn 1 is generated from the question, turn 2 from the conversation so far
(question 1, the model's answer, question 2), through the tokenizer's chat template, greedily (FastChat samples
the writing and roleplay categories at temperature 0.7; greedy keeps the answers reproducible). They are
written to ``OUT/answers/<name>.jsonl`` and reused by later runs of the same model.

Judgments: see :mod:`kasa_peft.tasks.mt_bench` (the protocol) and :mod:`kasa_peft.pipelines.judge_client` (the
client and its cache ``OUT/judgments.jsonl``). The summary goes to ``OUT/judge_results.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .judge_client import ChatEndpoint, JudgmentCache
from ..tasks.mt_bench import (
    JUDGE_MAX_TOKENS, JUDGE_TEMPERATURE, Mode, Question, combine_orders, judge_messages, load_mt_bench,
    parse_preference, parse_rating, summarise_pairwise, summarise_single,
)
from .base import write_atomically, write_jsonl
from .generation import Decoding

BASE = "base"  # the name of the model without adapter
RESULTS_FILE = "judge_results.json"
Answers = dict[int, tuple[str, str]]


@dataclass(frozen=True)
class JudgeRun:
    model: str
    adapters: dict[str, str]  # {name: adapter directory}; empty: the base model alone
    data_dir: str
    output_dir: Path
    endpoint: ChatEndpoint
    mode: Mode
    decoding: Decoding
    max_questions: int | None = None


def run_judge(run: JudgeRun) -> dict[str, Any]:
    """Generate (or reuse) the answers, judge them (or reuse the judgments), write and return the summary."""
    if BASE in run.adapters:
        raise ValueError(f"--adapter name {BASE!r} is taken by the model without adapter: give it another name")
    if run.max_questions is not None and run.max_questions < 1:
        raise ValueError(f"--max-questions {run.max_questions}: give a positive number")
    questions, prompts = load_mt_bench(run.data_dir)
    questions = questions[:run.max_questions]
    names = list(run.adapters) or [BASE]
    if run.mode == "pairwise" and len(names) == 1:
        names = [names[0], BASE]
    if run.mode == "pairwise" and len(names) != 2:
        raise ValueError(f"pairwise judging compares two models, got {len(names)} adapters: give one --adapter "
                         "(compared with the base model) or two")
    run.endpoint.check_reachable()
    answers = model_answers(run, names, questions)
    cache = JudgmentCache(run.output_dir / "judgments.jsonl")

    def judge(messages: list[dict[str, str]], **context: Any) -> str:
        return cache.judge(run.endpoint, messages, JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS, **context)

    if run.mode == "single":
        results = {name: summarise_single(single_ratings(judge, prompts, questions, answers[name], name))
                   for name in names}
    else:
        games = pairwise_games(judge, prompts, questions, answers[names[0]], answers[names[1]], names)
        results = {f"{names[0]} vs {names[1]}": summarise_pairwise(games)}
    summary = {"mode": run.mode, "judge_model": run.endpoint.model, "judge_url": run.endpoint.url,
               "model": run.model, "adapters": run.adapters, "questions": len(questions), "results": results}
    write_atomically(run.output_dir / RESULTS_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def single_ratings(judge, prompts, questions: list[Question], answers: Answers, name: str) -> list[dict[str, Any]]:
    """One rating (or ``None``) per question and turn."""
    ratings = []
    for question in questions:
        for turn in (1, 2):
            messages = judge_messages(prompts, "single", question, turn, [answers[question.question_id]])
            judgment = judge(messages, model_name=name, question_id=question.question_id, turn=turn)
            ratings.append({"question_id": question.question_id, "category": question.category, "turn": turn,
                            "rating": parse_rating(judgment)})
    return ratings


def pairwise_games(judge, prompts, questions: list[Question], first: Answers, second: Answers,
                   names: list[str]) -> list[dict[str, Any]]:
    """One game per question and turn, judged with ``first`` as A and again with it as B."""
    games = []
    for question in questions:
        pair = [first[question.question_id], second[question.question_id]]
        for turn in (1, 2):
            verdicts = [parse_preference(judge(judge_messages(prompts, "pairwise", question, turn, order),
                                               models=order_names, question_id=question.question_id, turn=turn))
                        for order, order_names in ((pair, names), (pair[::-1], names[::-1]))]
            games.append({"question_id": question.question_id, "turn": turn,
                          "outcome": combine_orders(*verdicts)})
    return games


def model_answers(run: JudgeRun, names: list[str], questions: list[Question]) -> dict[str, Answers]:
    """Both turns of every question for every model: from ``OUT/answers/<name>.jsonl`` when it has them (made
    from the same adapter), else generated (the model is loaded only then)."""
    answers = {name: _read_answers(run.output_dir / "answers" / f"{name}.jsonl", run.adapters.get(name))
               for name in names}
    missing = {name: [q for q in questions if q.question_id not in answers[name]] for name in names}
    if any(missing.values()):
        generated = _generate(run.model, {n: run.adapters[n] for n in names if n != BASE}, missing, run.decoding)
        for name, new in generated.items():
            answers[name].update(new)
            write_jsonl(run.output_dir / "answers" / f"{name}.jsonl",
                        [{"question_id": qid, "adapter": run.adapters.get(name), "turns": list(turns)}
                         for qid, turns in sorted(answers[name].items())])
    return answers


def _read_answers(path: Path, adapter: str | None) -> Answers:
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["question_id"]: tuple(r["turns"]) for r in records if r.get("adapter") == adapter}


def _generate(model_spec: str, adapters: Mapping[str, str], missing: dict[str, list[Question]],
              decoding: Decoding) -> dict[str, Answers]:
    """Both turns for the questions each model lacks; each adapter (KaSA, or a PEFT baseline's run) on a fresh base."""
    from .run import load_with_adapter

    generated = {}
    for name, questions in missing.items():
        if not questions:
            continue
        model, tokenizer = load_with_adapter(model_spec, None if name == BASE else adapters[name])
        if not decoding.chat_template(tokenizer):
            raise ValueError(f"{model_spec}'s tokenizer has no chat template, which MT-Bench's two-turn answers need")
        first = decoding.generate(model, tokenizer, [q.turns[0] for q in questions])
        conversations = [[{"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": a},
                          {"role": "user", "content": q.turns[1]}] for q, a in zip(questions, first, strict=True)]
        second = decoding.generate(model, tokenizer, conversations)
        generated[name] = {q.question_id: (a, b) for q, a, b in zip(questions, first, second, strict=True)}
    return generated
