"""`--task ifeval` end to end on a tiny random Llama: SFT training, IFEval scoring of the generations it wrote
(rescored here from the file), `kasa-peft eval` of the run and of the base model; ROUGE-L on held-out pairs as
the second metric."""

from __future__ import annotations

import json

import pytest
from rouge_score.rouge_scorer import RougeScorer

pytest.importorskip("lm_eval")

from kasa_peft.pipelines.config import resolve_config  # noqa: E402
from kasa_peft.pipelines.ifeval import ifeval_pipeline  # noqa: E402
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
    assert record["evaluation"] == {"greedy_decoder": "continuous batching"}  # the record says how it decoded
    rows = read_jsonl(out / "ifeval_generations.jsonl")
    assert [r["key"] for r in rows] == [1, 2]
    prompts = [IFEvalPrompt(p["key"], p["prompt"], tuple(p["instruction_id_list"]), tuple(p["kwargs"]))
               for p in PROMPTS]
    expected, _ = score_ifeval(prompts, [r["response"] for r in rows])
    # a response hits the budget when it used all 5 new tokens without ending (EOS)
    assert all(1 <= r["new_tokens"] <= 5 and (r["new_tokens"] == 5 or not r["hit_budget"]) for r in rows)
    expected["budget_hits"] = sum(r["hit_budget"] for r in rows)
    assert record["final"]["metrics"] == expected
    again = cli("eval", "--run", out)
    assert again.code == 0, again.err
    assert json.loads(again.out) == expected  # greedy: the same responses
    base = cli("eval", "--model", llama_dir, "--task", "ifeval", "--data-dir", data, "--train-file", train,
               "--max-new-tokens", 5)
    assert base.code == 0, base.err
    assert set(json.loads(base.out)) == set(expected)


@pytest.fixture
def held_out(tmp_path):
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"instruction": "Name a fruit.", "output": "An apple."},
                                                             {"prompt": "Say hello.\n", "completion": "hello"}]))
    return path


def test_held_out_pairs_add_rouge_l_as_a_second_metric(cli, llama_dir, files, held_out, tmp_path):
    data, train = files
    out = tmp_path / "run"
    result = cli("train", "--task", "ifeval", "--model", llama_dir, "--data-dir", data, "--train-file", train,
                 "--eval-file", held_out, "--output-dir", out, "--max-steps", 1, "--batch-size", 4,
                 "--max-length", 64, "--max-new-tokens", 5)
    assert result.code == 0, result.err
    assert "2 IFEval prompts, greedy decoding, up to 5 new tokens each; ROUGE-L on 2 prompts" in result.err
    metrics = json.loads((out / "metrics.json").read_text())["final"]["metrics"]
    rows = read_jsonl(out / "sft_generations.jsonl")
    assert [r["reference"] for r in rows] == ["An apple.", "hello"]
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    expected = 100 * sum(scorer.score(r["reference"], r["generation"])["rougeL"].fmeasure for r in rows) / len(rows)
    assert metrics["eval/rouge_l"] == pytest.approx(expected)
    assert {"prompt_level_strict_acc", "eval/exact_match"} <= set(metrics)
    again = cli("eval", "--run", out)
    assert again.code == 0, again.err
    assert json.loads(again.out) == metrics


@pytest.mark.parametrize(("run_budget", "held_out_budget"), [(1280, 128), (5, 5)])
def test_held_out_pairs_are_decoded_with_sfts_budget_or_the_runs_when_smaller(files, held_out, run_budget,
                                                                            held_out_budget):
    data, train = files
    config = resolve_config({}, {"task": "ifeval", "model": "m", "data_dir": str(data), "train_file": str(train),
                                 "eval_file": str(held_out), "max_new_tokens": run_budget})
    pipeline = ifeval_pipeline(config)
    assert pipeline.decoding.max_new_tokens == run_budget
    assert pipeline.held_out.decoding.max_new_tokens == held_out_budget
    assert ifeval_pipeline(config.replace(eval_file=None)).held_out is None


@pytest.mark.parametrize(("changes", "switches"), [({}, {"greedy_decoder": "continuous batching"}),
                                                   ({"num_beams": 2}, {}), ({"no_repeat_ngram_size": 3}, {})])
def test_the_record_names_continuous_batching_only_where_it_decodes(files, changes, switches):
    """Beam search or an n-gram ban go to `generate`, and the record must not claim the other decoder."""
    data, train = files
    config = resolve_config({}, {"task": "ifeval", "model": "m", "data_dir": str(data), "train_file": str(train),
                                 **changes})
    assert ifeval_pipeline(config).evaluation_switches() == switches
