"""Token classification (named entities): CoNLL and tagged-token data, labels on each word's first
sub-token, entity-level F1, and the task through every command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

import autopeft
from autopeft.cli import main
from autopeft.data import data_task, make_collator, prepare_data, read_records
from autopeft.training.evaluation import entity_scores, learning_warnings

from .conftest import tiny_tokenizer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "entities.conll"


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from autopeft.models import load_tokenizer

    return load_tokenizer("minilm-l6")


# -- reading ---------------------------------------------------------------------------------------


def test_conll_sentences_are_read_with_the_line_each_starts_on(tmp_path):
    path = _write(tmp_path / "ner.conll", "-DOCSTART- -X- -X- O\n\nAnna\tB-person\nsmiles\tO\n\t\n"
                                          "EU NNP B-NP B-org\nrejects VBZ B-VP O\r\n\n\n")
    fmt, records = read_records(path)
    assert fmt == "conll"
    assert records == [{"tokens": ["Anna", "smiles"], "tags": ["B-person", "O"]},
                       {"tokens": ["EU", "rejects"], "tags": ["B-org", "O"]}]  # the tag is the last column
    assert data_task(path) == "token-cls"


def test_a_file_of_another_suffix_is_read_as_conll_when_its_first_line_is_a_word_and_a_tag(tmp_path):
    """WNUT-17's test file is called emerging.test.annotated."""
    assert read_records(_write(tmp_path / "test.annotated", "Paris\tB-location\nis\tO\n"))[0] == "conll"
    with pytest.raises(autopeft.BadInputError, match="not valid JSON"):  # anything else is still JSON Lines
        read_records(_write(tmp_path / "notes.txt", "hello world\n"))


@pytest.mark.parametrize("key", ["tags", "ner_tags"])
def test_records_of_tokens_and_tags_are_token_classification(tmp_path, key):
    path = _write(tmp_path / "ner.jsonl", json.dumps({"tokens": ["Ada", "Lovelace", "wrote"],
                                                      key: ["B-person", "I-person", "O"]}) + "\n")
    assert read_records(path) == ("tagged-tokens", [{"tokens": ["Ada", "Lovelace", "wrote"],
                                                     "tags": ["B-person", "I-person", "O"]}])
    assert data_task(path) == "token-cls"


@pytest.mark.parametrize("name, text, line, problem", [
    ("no-tag.conll", "Anna\tB-person\nsmiles\n", 2, "no tag on this line"),
    ("bad-tag.conll", "Anna\tB-person\n\nBob\tperson\n", 3, "tag 'person' is not an entity tag"),
    ("empty.conll", "\n\t\n", None, "the file is empty"),
    ("only-docstart.conll", "-DOCSTART- O\n\n", None, "holds no sentence"),
    ("lengths.jsonl", '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n', 2,
     "holds 2 words but 'tags' holds 1 tags"),
    ("ids.jsonl", '{"tokens": ["Paris"], "ner_tags": [3]}\n', 1, "is a class id (3); give the tag names"),
    ("empty-word.jsonl", '{"tokens": ["a", " "], "tags": ["O", "O"]}\n', 1, "tokens[1] must be a non-empty word"),
])
def test_bad_token_data_is_one_line_with_file_and_line_and_exit_2(tmp_path, name, text, line, problem):
    path = _write(tmp_path / name, text)
    with pytest.raises(autopeft.BadInputError) as err:
        read_records(path)
    assert err.value.source == str(path) and err.value.line == line and problem in err.value.problem
    result = run("train", str(path), "--output", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"autopeft: error: {err.value}"]
    assert not (tmp_path / "run").exists()


# -- preparing -------------------------------------------------------------------------------------


def test_each_words_first_sub_token_carries_its_tag_and_the_rest_are_ignored(tmp_path, minilm_tokenizer):
    path = _write(tmp_path / "ner.conll", "Kirkpatrick\tB-person\nvisited\tO\nReykjavik\tB-location\n\n"
                                          "Oslo\tB-location\nrains\tO\n")
    data = prepare_data(path, minilm_tokenizer, validation_fraction=0.5, seed=0)
    assert data.info.task == "token-cls" and data.info.format == "conll"
    assert data.info.labels == ["O", "B-location", "B-person"]  # O first, then by entity type
    sentence = next(row for row in [*data.train, *data.validation] if len(row["labels"]) > 6)
    words = minilm_tokenizer(["Kirkpatrick", "visited", "Reykjavik"], is_split_into_words=True)
    assert sentence["input_ids"] == words["input_ids"]
    expected, previous = [], None
    for word in words.word_ids():
        expected.append(-100 if word is None or word == previous else [2, 0, 1][word])
        previous = word
    assert sentence["labels"] == expected
    assert sentence["labels"].count(-100) > 2  # [CLS], [SEP] and the later pieces of the long names


def test_sentences_longer_than_max_length_are_cut_and_the_words_lost_counted(tmp_path, minilm_tokenizer, caplog):
    path = _write(tmp_path / "long.conll", "".join(f"w{i}\t{'B-thing' if i % 5 == 0 else 'O'}\n" for i in range(40)))
    validation = _write(tmp_path / "val.conll", "a\tB-thing\n")
    with caplog.at_level(logging.WARNING, logger="autopeft"):
        data = prepare_data(path, minilm_tokenizer, validation_path=validation, max_length=16)
    assert data.info.tokens.truncated == 1 and len(data.train[0]["input_ids"]) == 16
    assert "words of the training data are cut off at max_length=16" in caplog.text


def test_training_data_without_any_entity_is_refused_before_a_model_loads(tmp_path, minilm_tokenizer):
    path = _write(tmp_path / "plain.conll", "the\tO\ncat\tO\n\nsat\tO\n")
    with pytest.raises(autopeft.BadInputError, match=r"training split holds no entity: all \d words of its 1 "
                                                     r"sentences are tagged O"):
        prepare_data(path, minilm_tokenizer, validation_fraction=0.5)
    result = run("train", str(path), "--validation", str(EXAMPLE), "--output", str(tmp_path / "run"))
    assert result.exit_code == 2 and "all 3 words of its 2 sentences are tagged O" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_validation_file_without_entities_is_refused(tmp_path, minilm_tokenizer):
    plain = _write(tmp_path / "plain.conll", "the\tO\ncat\tO\n")
    with pytest.raises(autopeft.BadInputError, match="validation file holds no entity.*cannot be measured"):
        prepare_data(EXAMPLE, minilm_tokenizer, validation_path=plain)


def test_tags_only_the_test_file_has_get_an_id_and_a_warning(tmp_path, minilm_tokenizer, caplog):
    test = _write(tmp_path / "test.conll", "Mars\tB-planet\nis\tO\nred\tO\n")
    with caplog.at_level(logging.WARNING, logger="autopeft"):
        data = prepare_data(EXAMPLE, minilm_tokenizer, test_path=test)
    assert "B-planet" in data.info.labels and len(data.test) == 1
    assert "test data has tags the training data lacks, which the model cannot learn: B-planet (1)" in caplog.text


def test_conll_and_tagged_token_records_mix_between_training_and_validation(tmp_path, minilm_tokenizer):
    validation = _write(tmp_path / "val.jsonl", json.dumps({"tokens": ["Oslo"], "tags": ["B-location"]}) + "\n")
    data = prepare_data(EXAMPLE, minilm_tokenizer, validation_path=validation)
    assert data.info.validation_source == "file" and len(data.validation) == 1


def test_the_collator_pads_token_labels_with_the_ignored_index():
    batch = make_collator("token-cls", tiny_tokenizer())([
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 1, 0], "length": 3},
        {"input_ids": [5], "attention_mask": [1], "labels": [2], "length": 1}])
    assert batch["labels"].tolist() == [[-100, 1, 0], [2, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# -- scoring ---------------------------------------------------------------------------------------


def test_entities_are_scored_whole_by_seqeval_and_non_words_are_skipped():
    import numpy as np

    tags = ["O", "B-person", "I-person", "B-location"]
    gold = np.array([[-100, 1, 2, 0, 3, -100], [-100, 3, 0, -100, -100, -100]])
    # the person's span is cut short (wrong), the first location right, the second missed
    predicted = np.array([[2, 1, 0, 0, 3, 3], [0, 0, 0, 1, 1, 1]])
    scores = entity_scores(predicted, gold, tags)
    assert scores["precision"] == pytest.approx(1 / 2) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(0.4)
    assert scores["token_accuracy"] == pytest.approx(4 / 6)
    nothing = entity_scores(np.zeros_like(gold), gold, tags)  # every word O
    assert nothing["f1"] == 0 and nothing["token_accuracy"] == pytest.approx(2 / 6)


def test_a_tagger_that_finds_no_entity_has_learned_little():
    metrics = {"eval_loss_before": 2.0, "eval_loss": 0.4, "f1": 0.0, "token_accuracy": 0.9}
    warning, = learning_warnings(metrics, prior_loss=0.5)
    assert "entity F1 is 0, no better than tagging every word O" in warning and "learned little" in warning
    assert learning_warnings({**metrics, "f1": 0.3}, prior_loss=0.5) == []


def test_token_classification_takes_the_classification_learning_rates_unless_it_has_its_own():
    from autopeft import SearchSpace

    space = SearchSpace(learning_rate=(1e-4, 3e-4), task_learning_rate={"seq-cls": (1e-3, 3e-3)})
    assert space.learning_rates("token-cls") == (1e-3, 3e-3) and space.default_learning_rate("token-cls") == 3e-3
    own = SearchSpace(learning_rate=(1e-4,), task_learning_rate={"seq-cls": (1e-3,), "token-cls": (5e-4,)})
    assert own.learning_rates("token-cls") == (5e-4,)


# -- commands --------------------------------------------------------------------------------------


def test_methods_for_token_classification_leave_out_those_that_cannot_serve_it():
    result = run("methods", "--task", "token-cls", "--json")
    assert result.exit_code == 0
    names = {m["name"] for m in json.loads(result.stdout)}
    assert {"lora", "dora", "ia3", "loha", "full"} <= names
    # virtual tokens put before the words (or as past keys) leave the tags misaligned with them
    assert not names & {"prompt_tuning", "ptuning", "prefix_tuning"}
    assert all("token-cls" in m["tasks"] for m in json.loads(result.stdout))


def test_estimate_for_token_classification_holds_logits_for_every_token(tiny_bert_dir):
    def logits(task, seq_len, labels):
        result = run("estimate", "--model", str(tiny_bert_dir), "--method", "lora", "--task", task, "--device", "cpu",
                     "--batch-size", "2", "--seq-len", str(seq_len), "--num-labels", str(labels), "--json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["task"] == task
        return doc["breakdown"]["logits"]

    # the token head's logits are batch x tokens x tags: twice the tokens or the tags, twice the bytes
    assert logits("token-cls", 64, 40) - logits("token-cls", 32, 40) >= 4 * 2 * 32 * 40
    assert logits("token-cls", 32, 80) - logits("token-cls", 32, 40) >= 4 * 2 * 32 * 40
    assert logits("seq-cls", 64, 40) - logits("seq-cls", 32, 40) < 4 * 2 * 32 * 40


def test_a_method_that_cannot_serve_token_classification_is_refused_by_name():
    result = run("estimate", "--method", "prompt_tuning", "--task", "token-cls", "--device", "cpu")
    assert result.exit_code == 2
    assert "prompt_tuning does not support task token-cls" in result.stderr


def test_all_linear_targets_leave_the_token_head_to_be_trained_in_full(tiny_bert_dir):
    """PEFT excludes the head from "all-linear" for SEQ_CLS only, then refuses to train one it wrapped."""
    est = autopeft.estimate(str(tiny_bert_dir), "lora", task="token-cls", num_labels=3, batch_size=1, seq_len=8,
                            device="cpu", settings={"r": 2, "target_modules": "all-linear"})
    # r=2 on the 6 linear layers of each of 2 blocks (64x64 four times, 64x128 and 128x64), and the 64x3 head
    assert est.trainable_params == 2 * (4 * 2 * (64 + 64) + 2 * 2 * (64 + 128)) + 64 * 3 + 3


@pytest.mark.slow  # trains a tiny model end to end, then merges its adapter
def test_a_tagger_trains_scores_its_test_file_and_exports(trainable_bert, tmp_path):
    from peft import AutoPeftModelForTokenClassification

    from autopeft.profiles import record_from_run

    out = tmp_path / "run"
    record = autopeft.train(str(EXAMPLE), output_dir=str(out), model=str(trainable_bert), test=str(EXAMPLE),
                            max_steps=6, eval_steps=3, batch_size=8, max_length=64, progress=False)
    assert record.task == "token-cls" and record.data["format"] == "conll"
    assert record.data["labels"][0] == "O" and len(record.data["labels"]) == 9  # O, and B-/I- of 4 types
    for prefix in ("", "test_"):
        for name in ("f1", "precision", "recall", "token_accuracy"):
            assert 0 <= record.metrics[prefix + name] <= 1, prefix + name
    assert record.metrics["eval_loss"] > 0 and record.metrics["test_loss"] > 0
    assert any(point.eval_f1 is not None for point in record.history)
    assert "pipeline_tag: token-classification" in (out / "README.md").read_text()
    id2label = dict(enumerate(record.data["labels"]))
    # the model card's way to load it: the base has no head, so the labels size the one the adapter fills
    assert f'AutoPeftModelForTokenClassification.from_pretrained("{out}", id2label={id2label!r})' in \
        (out / "README.md").read_text()
    assert "| f1 |" in (out / "report.md").read_text()
    loaded = AutoPeftModelForTokenClassification.from_pretrained(str(out), id2label=id2label)
    assert loaded.config.id2label[0] == "O" and loaded.config.num_labels == 9
    profile = record_from_run(record)
    assert profile.metric == "test_f1" and profile.higher_is_better and profile.score == record.metrics["test_f1"]

    merged = autopeft.export_merged(str(out), str(tmp_path / "merged"))
    assert merged.task == "token-cls" and merged.max_abs_diff < 1e-3


@pytest.mark.slow  # pilots, the recommender and a fine-tune, each in processes of their own
def test_tune_chooses_a_method_for_the_example_and_reports_its_entity_f1(trainable_bert, tmp_path):
    out = tmp_path / "tuned"
    result = run("tune", str(EXAMPLE), "--model", str(trainable_bert), "--methods", "lora,ia3,loha",
                 "--pilot-budget", "30s", "--test", str(EXAMPLE), "--epochs", "2", "--batch-size", "8", "--max-length", "64",
                 "--output", str(out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["method"] in ("lora", "ia3", "loha") and doc["recommendation"]["chosen"] == doc["method"]
    assert 0 <= doc["metrics"]["test_f1"] <= 1 and "f1" in doc["metrics"]
    assert json.loads((out / "run.json").read_text())["task"] == "token-cls"


def test_a_tagger_that_finds_entities_is_not_called_a_failure_for_its_loss():
    # WNUT-17 measured: validation F1 0.41 with a loss above the label-frequency loss (0.357 vs 0.317)
    metrics = {"eval_loss": 0.357, "eval_loss_before": 2.59, "f1": 0.41, "token_accuracy": 0.94}
    assert learning_warnings(metrics, prior_loss=0.317) == []
    assert learning_warnings({**metrics, "f1": 0.0}, prior_loss=0.317)  # finding nothing still warns
