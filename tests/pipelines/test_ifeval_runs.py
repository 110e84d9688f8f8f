"""`--task ifeval` end to end on a tiny random Llama: SFT training, IFEval scoring of the generations it wrote
(rescored here from the file), `kasa-peft eval` of the run and of the base model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from kasa_peft.tasks.ifeval import IFEvalPrompt, score_ifeval  # noqa: E402

PROMPTS = [{"key": 1, "prompt": "Write without commas.", "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}]},
           {"key": 2, "prompt": "Answer in lower case, under 50 words.",
            "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_words"],
            "kwargs": [{}, {"relation": "less than", "num_words": 50}]}]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "instruct" / "ifeval").mkdir(parents=True)
    (tmp_path / "instruct" / "ifeval" / "input_data.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": "Say hello.\n", "completion": "hello"}) + "\n" for _ in range(8)))
    return tmp_path, train


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_then_eval_scores_ifeval(cli, llama_dir, files, tmp_path):
    data, train = files
    out = tmp_path / "run"
    result = cli("train", "--task", "ifeval", "--model", llama_dir, "--data-dir", data, "--train-file", train,
                 "--output-dir", out, "--max-steps", 1, "--batch-size", 4, "--max-length", 64, "--max-new-tokens", 5)
    assert result.code == 0, result.err
    record = json.loads((out / "metrics.json").read_text())
    assert record["main_metric"] == "prompt_level_strict_acc"
    rows = read_jsonl(out / "ifeval_generations.jsonl")
    assert [r["key"] for r in rows] == [1, 2]
    prompts = [IFEvalPrompt(p["key"], p["prompt"], tuple(p["instruction_id_list"]), tuple(p["kwargs"]))
               for p in PROMPTS]
    expected, _ = score_ifeval(prompts, [r["response"] for r in rows])
    assert record["final"]["metrics"] == expected
    again = cli("eval", "--run", out)
    assert again.code == 0, again.err
    assert json.loads(again.out) == expected  # greedy: the same responses
    base = cli("eval", "--model", llama_dir, "--task", "ifeval", "--data-dir", data, "--train-file", train,
               "--max-new-tokens", 5)
    assert base.code == 0, base.err
    assert set(json.loads(base.out)) == set(expected)
