"""The loaders without a data directory: the hub sources they ask ``datasets.load_dataset`` for, and that the
rows they get back become exactly what the same data gives from local files. ``load_dataset`` is always
replaced by a fake here: the tests never reach the network."""

import inspect
import json

import datasets
import pytest

from kasa_peft.tasks.commonsense import COMMONSENSE_SETS, available_train_sets, load_commonsense
from kasa_peft.tasks.e2e import load_e2e
from kasa_peft.tasks.glue import load_glue
from kasa_peft.tasks import hub as hub_module
from kasa_peft.tasks.hub import HubSource, hub_records
from kasa_peft.tasks.instruct import format_instruction, load_instruct_eval, load_t0_train

PARQUET = "refs/convert/parquet"
LLM_ADAPTERS = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/816657208af4db747803f87ba40a4c71383fed7a"
SEED_TASKS = ("https://raw.githubusercontent.com/yizhongw/self-instruct/0b26ccaa415992100fa32df62d41b994cf928e23/"
              "data/seed_tasks.jsonl")


class FakeHub:
    """Stands in for ``datasets.load_dataset``: records each call's arguments (bound to the real signature, so a
    misspelt keyword fails) and returns ``rows``, or raises ``error``."""

    def __init__(self):
        self.calls: list[dict] = []
        self.rows = []
        self.error: Exception | None = None
        self._signature = inspect.signature(datasets.load_dataset)

    def __call__(self, *args, **kwargs):
        self.calls.append(dict(self._signature.bind(*args, **kwargs).arguments))
        if self.error is not None:
            raise self.error
        return self.rows


@pytest.fixture
def hub(monkeypatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda: True)
    return fake


@pytest.fixture
def no_network(monkeypatch):
    """A machine without a network: every connection fails at once, and the hub's probe is asked afresh."""
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_module.socket, "create_connection", refuse)
    hub_module.hub_reachable.cache_clear()
    yield
    hub_module.hub_reachable.cache_clear()


def test_without_a_network_a_hub_load_fails_at_once_and_says_why(no_network, monkeypatch):
    """datasets would retry for about a minute; the probe fails first and nothing asks the hub."""
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(ConnectionError, match=r"nyu-mll/glue \(config 'rte'\), split 'validation': the Hugging Face "
                                              r"hub \(https://huggingface.co\) cannot be reached from this machine "
                                              r"\(if a copy is in the datasets cache, set HF_HUB_OFFLINE=1"):
        load_glue("rte", None, "dev")
    assert fake.calls == []


def test_offline_mode_reads_the_datasets_cache_without_probing(monkeypatch, hub):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_module, "hub_reachable", lambda: pytest.fail("probed the network in offline mode"))
    hub.rows = [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}]
    assert load_glue("rte", None, "dev").labels == [0]


def call(path, name=None, revision=None, data_files=None, split="train") -> dict:
    return {"path": path, "name": name, "revision": revision, "data_files": data_files, "split": split}


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- GLUE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "columns"), [
    ("cola", ("sentence",)), ("sst2", ("sentence",)), ("mrpc", ("sentence1", "sentence2")),
    ("rte", ("sentence1", "sentence2")), ("stsb", ("sentence1", "sentence2")), ("qnli", ("question", "sentence")),
    ("mnli", ("premise", "hypothesis")), ("qqp", ("question1", "question2")),
])
def test_glue_reads_each_tasks_hub_columns(hub, task, columns):
    hub.rows = [{**{column: f"{column} {i}" for column in columns}, "label": i, "idx": i} for i in (1, 0)]
    examples = load_glue(task, None, "train")
    assert hub.calls == [call("nyu-mll/glue", task)]
    assert examples.texts_a == [f"{columns[0]} 1", f"{columns[0]} 0"]
    assert examples.texts_b == (None if len(columns) == 1 else [f"{columns[1]} 1", f"{columns[1]} 0"])


def test_glue_dev_splits_are_the_hubs_validation_splits(hub):
    hub.rows = [{"sentence1": "P.", "sentence2": "H.", "premise": "P.", "hypothesis": "H.", "label": 1, "idx": 0}]
    load_glue("rte", None, "dev")
    load_glue("mnli", None, "dev_matched")
    load_glue("mnli", None, "dev_mismatched")
    assert [c["split"] for c in hub.calls] == ["validation", "validation_matched", "validation_mismatched"]


def test_glue_mrpc_and_rte_from_the_hub_equal_the_local_files(hub, tmp_path):
    write(tmp_path / "glue/MRPC/dev.tsv",
          '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "no.\tShe said "yes"\n0\t3\t4\tA.\tB.\n')
    hub.rows = [{"sentence1": 'He said "no.', "sentence2": 'She said "yes"', "label": 1, "idx": 0},
                {"sentence1": "A.", "sentence2": "B.", "label": 0, "idx": 1}]
    assert load_glue("mrpc", None, "dev") == load_glue("mrpc", tmp_path, "dev")

    write(tmp_path / "glue/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n"
                                           "1\tc\td\tentailment\n")
    hub.rows = [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0},
                {"sentence1": "c", "sentence2": "d", "label": 0, "idx": 1}]
    examples = load_glue("rte", None, "train")
    assert examples == load_glue("rte", tmp_path, "train")
    assert (examples.labels, examples.label_names) == ([1, 0], ["entailment", "not_entailment"])


def test_glue_stsb_labels_are_floats_as_from_the_file(hub, tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(tmp_path / "glue/STS-B/dev.tsv", header + "0\tg\tf\ty\t0\tn\tn\tA b.\tC d.\t3.800\n"
                                                    "1\tg\tf\ty\t1\tn\tn\tE.\tF.\t5.000\n")
    hub.rows = [{"sentence1": "A b.", "sentence2": "C d.", "label": 3.8, "idx": 0},
                {"sentence1": "E.", "sentence2": "F.", "label": 5.0, "idx": 1}]
    examples = load_glue("stsb", None, "dev")
    assert examples == load_glue("stsb", tmp_path, "dev")
    assert [type(label) for label in examples.labels] == [float, float] and examples.label_names is None


# --- E2E -------------------------------------------------------------------------------------


def test_e2e_pairs_from_the_parquet_export_equal_the_local_csv(hub, tmp_path):
    write(tmp_path / "e2e/dev.csv", 'mr,ref\n"name[X], food[Thai]","X serves Thai food, ""cheap""."\n'
                                    '"name[X], food[Thai]",Thai food at X.\n')
    hub.rows = [{"meaning_representation": "name[X], food[Thai]", "human_reference": 'X serves Thai food, "cheap".'},
                {"meaning_representation": "name[X], food[Thai]", "human_reference": "Thai food at X."}]
    assert load_e2e(None, "dev") == load_e2e(tmp_path, "dev")
    load_e2e(None, "test")
    assert hub.calls == [call("tuetschek/e2e_nlg", revision=PARQUET, split="validation"),
                         call("tuetschek/e2e_nlg", revision=PARQUET, split="test")]


# --- commonsense -----------------------------------------------------------------------------

ARC_RECORD = {"instruction": "Please choose the correct answer to the question: Which is a gas?\n\nAnswer1: ice "
                             "Answer2: steam\n\nAnswer format: answer1/answer2",
              "input": "", "output": "the correct answer is answer2", "answer": "answer2"}


def test_commonsense_records_from_llm_adapters_equal_the_local_file(hub, tmp_path):
    write(tmp_path / "commonsense/ARC-Easy/train.json", json.dumps([ARC_RECORD], indent=4))
    hub.rows = [dict(ARC_RECORD)]
    assert load_commonsense("ARC-Easy", None, "train") == load_commonsense("ARC-Easy", tmp_path, "train")
    load_commonsense("social_i_qa", None)
    assert hub.calls == [call("json", data_files=f"{LLM_ADAPTERS}/dataset/ARC-Easy/train.json"),
                         call("json", data_files=f"{LLM_ADAPTERS}/dataset/social_i_qa/test.json")]


def test_every_set_has_training_data_online(hub):
    assert available_train_sets(None) == list(COMMONSENSE_SETS)
    assert hub.calls == []


def test_commonsense_hub_records_are_checked_like_files(hub):
    hub.rows = [{"instruction": "q", "output": "o"}]
    with pytest.raises(ValueError, match=r"dataset/boolq/test.json, record 1: missing field\(s\) answer"):
        load_commonsense("boolq", None)


# --- instruction following -------------------------------------------------------------------


def test_t0_pairs_from_the_hub_equal_the_local_subset(hub, tmp_path):
    records = [{"prompt": "Is it?\n", "completion": "Yes<|endoftext|>"}, {"prompt": "Topic?\n", "completion": "news"}]
    write(tmp_path / "instruct/self_instruct/t0_train_50k_subset/a.jsonl",
          "".join(json.dumps(record) + "\n" for record in records))
    hub.rows = records
    pairs = load_t0_train(None)
    assert pairs == load_t0_train(tmp_path) == [("Is it?\n", "Yes"), ("Topic?\n", "news")]
    assert hub.calls == [call("yizhongw/self_instruct", "p3", PARQUET)]


def test_user_oriented_eval_from_the_hub_equals_the_local_file(hub, tmp_path):
    instances = [{"input": "Can we meet?", "output": "Sure."}, {"input": "x", "output": "y"}]
    record = {"id": "user_oriented_task_0", "motivation_app": "Gmail", "instruction": "Reply politely."}
    write(tmp_path / "instruct/self_instruct/user_oriented_instructions.jsonl",
          json.dumps({**record, "instances": instances}) + "\n")
    # The hub's human_eval declares instances a Sequence of {input, output}, which datasets gives as a dict of lists.
    string = datasets.Value("string")
    features = datasets.Features({"id": string, "motivation_app": string, "instruction": string,
                                  "instances": datasets.Sequence({"input": string, "output": string})})
    hub.rows = datasets.Dataset.from_list(
        [{**record, "instances": {"input": ["Can we meet?", "x"], "output": ["Sure.", "y"]}}], features=features)
    pairs = load_instruct_eval(None)
    assert pairs == load_instruct_eval(tmp_path)
    assert pairs == [(format_instruction("Reply politely.", "Can we meet?"), "Sure.")]
    assert hub.calls == [call("yizhongw/self_instruct", "human_eval", PARQUET)]


def test_seed_tasks_through_the_json_loader_equal_the_local_file(hub, tmp_path):
    record = {"id": "seed_task_0", "name": "breakfast_suggestion", "instruction": "Suggest a breakfast.",
              "instances": [{"input": "", "output": "Oats."}], "is_classification": False}
    write(tmp_path / "instruct/self_instruct/seed_tasks.jsonl", json.dumps(record) + "\n")
    hub.rows = datasets.Dataset.from_list([record])  # the json loader infers a list of {input, output}
    assert load_instruct_eval(None, "seed") == load_instruct_eval(tmp_path, "seed")
    assert hub.calls == [call("json", data_files=SEED_TASKS)]


# --- failures --------------------------------------------------------------------------------


def test_a_failed_load_names_the_source_the_reason_and_the_fix(hub):
    hub.error = ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")
    with pytest.raises(ConnectionError, match=r"could not load nyu-mll/glue \(config 'rte'\), split 'validation', "
                                              r".*Couldn't reach 'nyu-mll/glue'.*: pass --data-dir with the layout "
                                              r"of shared/data \(see the README\), or --train-file/--eval-file"):
        load_glue("rte", None, "dev")
    hub.error = FileNotFoundError(f"Unable to find '{SEED_TASKS}'")
    with pytest.raises(ConnectionError, match=r"seed_tasks.jsonl, split 'train', .*FileNotFoundError: Unable to"):
        load_instruct_eval(None, "seed")
    hub.error = ImportError('HTTPFileSystem requires "requests" and "aiohttp" to be installed')
    with pytest.raises(ConnectionError, match="aiohttp"):
        hub_records(HubSource("json", data_files=SEED_TASKS), "train")


def test_source_names_in_messages():
    assert str(HubSource("tuetschek/e2e_nlg", revision=PARQUET)) == "tuetschek/e2e_nlg@refs/convert/parquet"
    assert str(HubSource("yizhongw/self_instruct", "p3", PARQUET)) == (
        "yizhongw/self_instruct@refs/convert/parquet (config 'p3')")
