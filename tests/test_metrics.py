"""Task metrics: the built-ins on their edge cases, the ``register_metrics`` hook (a third-party metric, bad
registrations), names checked up front, batched greedy generation, and a run scored before and after."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import autopeft
from autopeft.cli import main
from autopeft.methods import registry
from autopeft.methods.metrics import checked_score, get_metric, get_metrics, metric_failures, resolve_metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def score(name: str, prediction: str, reference: str) -> float:
    return get_metric(name).score_one(prediction, reference)


# -- the built-in metrics ---------------------------------------------------------------------------


def test_exact_match_ignores_case_and_runs_of_whitespace_only():
    assert score("exact_match", "  The answer\n is  Four ", "the answer is four") == 1.0
    assert score("exact_match", "the answer is four.", "the answer is four") == 0.0
    assert score("exact_match", "", "four") == 0.0


@pytest.mark.parametrize("prediction, reference, expected", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 1,234", "#### 1234", 1.0),  # GSM8K's marker, thousands commas
    ("so she has 1234 left", "She sold 48 + 24 = 72 clips.\n#### 1,234", 1.0),
    ("The answer is 72.", "72.0", 1.0),  # SVAMP's answers are floats
    ("72.5", "72", 0.0),
    ("The temperature fell to -5 degrees.", "-5", 1.0),
    ("x = -12.50", "#### -12.5", 1.0),
    ("10-3 = 7", "7", 1.0),  # a minus between numbers is not a sign
    ("10-3", "-3", 0.0),
    ("It costs $1,250.", "1250", 1.0),
    ("#### 18\n\nQuestion: Tom has 5 apples and 3 pears", "18", 1.0),  # text generated past the answer
    ("I do not know.", "4", 0.0),
    ("0.5", ".5", 1.0),
])
def test_final_number_reads_the_answer_number_as_people_write_it(prediction, reference, expected):
    assert score("final_number", prediction, reference) == expected


def test_final_number_refuses_a_reference_without_a_number():
    metric = get_metric("final_number")
    assert metric.reference_problem("#### 42") is None
    assert "holds no number" in metric.reference_problem("a cat")


@pytest.mark.parametrize("prediction, valid", [
    ('{"name": "Ada", "tags": [1, 2]}', True),
    ('```json\n{"a": 1}\n```', True),  # a Markdown code fence around it is allowed
    ("[1, 2, 3]", True),
    ("{'a': 1}", False),  # Python, not JSON
    ('{"a": 1} and more', False),
    ('{"a": NaN}', False),  # Python's reader takes NaN; JSON has none
    ("", False),
])
def test_json_valid(prediction, valid):
    assert score("json_valid", prediction, "") == float(valid)


def test_json_equal_compares_values_not_spelling_and_keeps_json_types_apart():
    assert score("json_equal", '{"b": [1, 2], "a": "x"}', '{"a":"x","b":[1,2]}') == 1.0
    assert score("json_equal", '{"n": 1.0}', '{"n": 1}') == 1.0
    assert score("json_equal", '{"n": true}', '{"n": 1}') == 0.0  # Python's True == 1; JSON's true is not 1
    assert score("json_equal", '[1, 2]', '[2, 1]') == 0.0
    assert score("json_equal", "not json", '{"a": 1}') == 0.0
    assert "not JSON" in get_metric("json_equal").reference_problem("{a: 1}")


def test_a_score_is_the_mean_over_examples():
    value, error = checked_score(get_metric("exact_match"), ["a", "b", "c", "d"], ["a", "b", "x", "y"])
    assert value == 0.5 and error is None


# -- the hook -----------------------------------------------------------------------------------------


class StartsLikeReference(autopeft.Metric):
    name = "first_word"
    description = "The answer's first word is the reference's."

    def score_one(self, prediction, reference):
        return float(prediction.split()[:1] == reference.split()[:1])


class EditDistance(autopeft.Metric):
    name = "char_errors"
    description = "Characters that differ, over the whole set (lower is better)."
    direction = "lower"

    def score(self, predictions, references):
        return float(sum(sum(a != b for a, b in zip(p, r)) + abs(len(p) - len(r))
                         for p, r in zip(predictions, references)))


class ThirdParty:
    @autopeft.hookimpl
    def register_metrics(self, register):
        register(StartsLikeReference())
        register(EditDistance())


class NoDescription(autopeft.Metric):
    name = "no-description"

    def score_one(self, prediction, reference):
        return 1.0


class Sideways(StartsLikeReference):
    name = "sideways"
    direction = "sideways"


class Clashing(StartsLikeReference):
    name = "perplexity"


class NoScore(autopeft.Metric):
    name = "no-score"
    description = "forgot to score"


class Broken:
    @autopeft.hookimpl
    def register_metrics(self, register):
        register(NoDescription())
        register(Sideways())
        register(NoScore())
        register(Clashing())
        register("exact_match")
        register(StartsLikeReference())


class Duplicate:
    @autopeft.hookimpl
    def register_metrics(self, register):
        register(StartsLikeReference())


class Raising:
    @autopeft.hookimpl
    def register_metrics(self, register):
        raise RuntimeError("boom")


class Misspelt:
    @autopeft.hookimpl
    def register_metric(self, register):
        register(StartsLikeReference())


@pytest.fixture
def registered():
    names = []

    def add(plugin, name):
        names.append(name)
        return registry.register_plugin(plugin, name=name, source=f"test-{name}")

    yield add
    for name in names:
        registry.unregister_plugin(name)
    registry.reset()  # forget the rejections too, so later tests' JSON output carries no warning about them


def test_the_built_in_metrics_come_through_the_entry_point_group_like_any_plugin():
    metrics = get_metrics()
    assert {"exact_match", "final_number", "json_valid", "json_equal"} <= set(metrics)
    assert all(metrics[name].source == "autopeft" for name in ("exact_match", "final_number"))


def test_a_third_party_metric_registers_through_the_hook_and_lists_like_a_built_in(registered):
    assert registered(ThirdParty(), "third")
    infos = {i.name: i for i in autopeft.list_metrics()}
    assert infos["first_word"].source == "test-third" and infos["first_word"].per_example
    assert infos["char_errors"].direction == "lower" and not infos["char_errors"].per_example
    assert checked_score(get_metric("char_errors"), ["abc"], ["abd"]) == (1.0, None)
    result = CliRunner().invoke(main, ["metrics", "--json"])
    assert result.exit_code == 0, result.output
    assert {"name": "first_word", "direction": "higher", "source": "test-third"}.items() <= \
        {m["name"]: m for m in json.loads(result.output)}["first_word"].items()


def test_bad_registrations_are_refused_by_name_and_the_rest_register(registered):
    registered(Broken(), "broken")
    registered(Duplicate(), "duplicate")
    registered(Raising(), "raising")
    metrics = get_metrics()
    assert "first_word" in metrics and metrics["first_word"].source == "test-broken"  # the first name wins
    assert not {"no-description", "sideways", "no-score"} & set(metrics) and "exact_match" in metrics
    errors = [f"{f.plugin}: {f.error}" for f in metric_failures()]
    assert any("'no-description'" in e and "no description" in e for e in errors), errors
    assert any("'sideways'" in e and "direction must be 'higher' or 'lower'" in e for e in errors), errors
    assert any("'no-score'" in e and "no score_one() or score()" in e for e in errors), errors
    assert any("'perplexity'" in e and "clash with a run's own metrics" in e for e in errors), errors
    assert any("broken: " in e and "str, not an autopeft.Metric" in e for e in errors), errors
    assert any("duplicate: " in e and "'first_word' is already registered by test-broken" in e for e in errors)
    assert any("raising: " in e and "boom" in e for e in errors), errors


def test_a_misspelt_hook_is_rejected_not_silently_ignored(registered):
    assert not registered(Misspelt(), "misspelt")
    assert any("register_metric" in f.error for f in registry.plugin_failures() if f.plugin == "misspelt")


def test_a_metric_that_fails_scores_none_and_says_why():
    class Crashing(autopeft.Metric):
        name, description = "crashing", "raises"

        def score_one(self, prediction, reference):
            raise ValueError("no")

    value, error = checked_score(Crashing(), ["a"], ["b"])
    assert value is None and "crashing" in error and "ValueError" in error


# -- names and data checked up front ------------------------------------------------------------------


def test_an_unknown_metric_is_one_line_with_the_closest_names_and_exit_2(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(EXAMPLES / "instructions.jsonl"), "-o", str(out),
                                       "--metric", "exact_match,final_numbr"])
    assert result.exit_code == 2
    assert "unknown metric 'final_numbr'; did you mean 'final_number'?" in result.output
    assert "Traceback" not in result.output and not out.exists()
    with pytest.raises(autopeft.UnknownMetricError, match="did you mean 'exact_match'"):
        resolve_metrics(["exact-match"])


def test_the_metric_hint_says_when_plugins_left_the_built_ins_out(monkeypatch):
    monkeypatch.setenv("AUTOPEFT_LOAD_PLUGINS", "lora")
    registry.reset()
    try:
        with pytest.raises(autopeft.UnknownMetricError, match="the built-in metrics are the plugin 'metrics'"):
            get_metric("exact_match")
    finally:
        monkeypatch.delenv("AUTOPEFT_LOAD_PLUGINS")
        registry.reset()


def test_metric_names_take_commas_and_repeats_and_keep_the_order():
    from autopeft.training.options import TrainOptions

    opts = TrainOptions(data="d", output_dir="o", metrics=["Final_Number,exact_match", "final_number"])
    assert opts.metrics == ["final_number", "exact_match"]


def test_classification_data_is_refused_before_training(trainable_bert, tmp_path):
    result = CliRunner().invoke(main, ["train", str(EXAMPLES / "sentiment.jsonl"), "--model", str(trainable_bert),
                                       "-o", str(tmp_path / "run"), "--metric", "exact_match"])
    assert result.exit_code == 2 and "need causal-LM data" in result.output
    assert not (tmp_path / "run").exists()


def test_bench_and_tune_check_the_request_before_any_run(tmp_path):
    from autopeft.errors import BadInputError
    from autopeft.training.generation import check_request

    with pytest.raises(BadInputError, match="need causal-LM data"):
        check_request(str(EXAMPLES / "sentiment.jsonl"), ["exact_match"])
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "a b c"}\n{"text": "d e f"}\n')
    with pytest.raises(BadInputError, match="text records have none"):
        check_request(str(text), ["exact_match"])
    result = CliRunner().invoke(main, ["bench", str(EXAMPLES / "instructions.jsonl"), "--benchmark", "b",
                                       "-o", str(tmp_path / "bench"), "--metric", "exact_mtch"])
    assert result.exit_code == 2 and "did you mean 'exact_match'" in result.output
    assert not (tmp_path / "bench").exists()


def test_a_reference_the_metric_cannot_use_is_named_by_file_and_line_before_training(trainable_llama, tmp_path):
    result = CliRunner().invoke(main, ["train", str(EXAMPLES / "instructions.jsonl"), "--model", str(trainable_llama),
                                       "-o", str(tmp_path / "run"), "--metric", "final_number", "--max-length", "64"])
    assert result.exit_code == 2, result.output
    assert "instructions.jsonl:" in result.output and "holds no number" in result.output
    assert not (tmp_path / "run").exists()  # nothing half-written


# -- generation -----------------------------------------------------------------------------------------


def test_batched_left_padded_generation_answers_as_one_prompt_at_a_time(trainable_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autopeft.training.generation import generate_answers

    model = AutoModelForCausalLM.from_pretrained(str(trainable_llama))
    tokenizer = AutoTokenizer.from_pretrained(str(trainable_llama))
    prompts = ["what is two plus two?", "hello", "the quick brown fox jumps over the lazy dog and", "I love"]
    kwargs = {"special_tokens": True, "max_new_tokens": 6}
    one_by_one = generate_answers(model, tokenizer, prompts, batch_size=1, **kwargs)
    batched = generate_answers(model, tokenizer, prompts, batch_size=4, **kwargs)
    assert batched == one_by_one and any(one_by_one)
    assert tokenizer.padding_side == "right"  # left only while generating


def test_generation_progress_shows_the_count_the_time_and_the_time_left():
    from autopeft.training.progress import GenerationProgress

    stream = io.StringIO()
    shown = GenerationProgress("test answers after training", 200, stream=stream, interval=0)
    shown.update(50)
    shown.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("autopeft: generating test answers after training: 50/200, 0s, about")
    assert lines[1].startswith("autopeft: generated 200 test answers after training in 0s (")


# -- ranking by a task metric -------------------------------------------------------------------------


def test_the_recommender_learns_from_a_task_metric_whichever_way_is_better():
    from autopeft.choose.ranking import Candidate, Recommender
    from autopeft.profiles import CurvePoint, ProfileRecord

    def benchmark(name, seed):
        """Runs whose character errors (lower is better) follow their late training loss."""
        rng = np.random.default_rng(seed)
        records = []
        for i in range(6):
            losses = np.linspace(3.0, 1.0 + 0.1 * i + rng.normal(0, 0.01), 20)
            records.append(ProfileRecord(
                benchmark=name, experiment=f"m{i}", task="causal-lm", model="m", dataset="d", method=f"m{i}",
                total_steps=200, trainable_params=1000, total_params=10**6, source="test",
                curve=[CurvePoint(step=10 * (k + 1), train_loss=v) for k, v in enumerate(losses)],
                metric="test_char_errors", higher_is_better=False, score=10.0 + 5 * i))
        return records

    rec = Recommender().fit(benchmark("a", 0) + benchmark("b", 1) + benchmark("c", 2))
    candidates = [Candidate.from_record(r, 0.3) for r in benchmark("d", 3)]
    assert rec.mode(candidates) == "pilot"
    assert int(np.argmax(rec.predict(candidates))) == 0  # the fewest errors


FOUR = ["two plus two", "the answer", "this film", "the quick fox", "hello world", "a small test", "the lazy dog",
        "great"]


def _four(tmp_path) -> tuple[Path, Path]:
    """Prompts of different lengths, every answer "four": a model that learns it scores 1."""
    train, test = tmp_path / "four.jsonl", tmp_path / "four-test.jsonl"
    records = [{"prompt": f"what is {w}?", "completion": "four"} for w in FOUR]
    train.write_text("".join(json.dumps(r) + "\n" for r in records * 2))
    test.write_text("".join(json.dumps(r) + "\n" for r in records[:4]))
    return train, test


@pytest.mark.slow
def test_a_run_scores_its_answers_before_and_after_training_in_run_json_the_report_and_the_card(
        trainable_llama, tmp_path, registered):
    from autopeft.profiles import record_from_run
    from autopeft.training.outputs import RunRecord

    registered(ThirdParty(), "third")
    train, test = _four(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", str(train), "--model", str(trainable_llama), "-o", str(out), "--validation", str(test),
        "--test", str(test), "--method", "full", "--lr", "3e-3", "--max-steps", "20", "-b", "4",
        "--early-stopping", "0", "--metric", "exact_match", "--metric", "first_word", "--metrics-before",
        "--generate-max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    # the random base answers nothing right; the trained model answers every prompt, whatever its length
    assert metrics["exact_match_before"] == 0.0 and metrics["test_exact_match_before"] == 0.0
    assert metrics["exact_match"] == 1.0 and metrics["test_exact_match"] == 1.0
    assert metrics["test_first_word"] == 1.0
    record = RunRecord.model_validate_json((out / "run.json").read_text())
    assert record.metrics["test_exact_match"] == 1.0
    g = record.generation
    assert g.metrics == {"exact_match": "higher", "first_word": "higher"} and g.test_examples == 4
    assert g.seconds > 0 and g.seconds_before > 0
    assert {s.output for s in g.samples} == {"four"} and g.samples[0].scores["exact_match"] == 1.0
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["split"] for r in rows} == {"validation", "test"}
    report = (out / "report.md").read_text()
    assert "## Task metrics" in report and "| exact_match (higher is better) | test | 0 | 1 |" in report
    assert "| what is two plus two? | four |" in report  # answers against references
    assert "test_exact_match" in (out / "README.md").read_text()
    profile = record_from_run(record)
    assert (profile.metric, profile.higher_is_better, profile.score) == ("test_exact_match", True, 1.0)
    assert profile.benchmark.endswith("/test_exact_match")  # not compared with runs scored by their loss


@pytest.mark.slow
def test_without_a_metric_nothing_is_generated(trainable_llama, tmp_path, monkeypatch):
    import autopeft.training.generation as generation

    monkeypatch.setattr(generation, "generate_answers", lambda *a, **k: pytest.fail("generated without --metric"))
    train, _ = _four(tmp_path)
    record = autopeft.train(str(train), output_dir=str(tmp_path / "run"), model=str(trainable_llama), max_steps=1,
                            batch_size=4, samples=0, progress=False)
    assert record.generation is None and not (tmp_path / "run" / "generations.jsonl").exists()


@pytest.mark.slow
def test_bench_ranks_by_a_task_metric(trainable_llama, tmp_path):
    from autopeft.profiles import read_jsonl

    train, test = _four(tmp_path)
    out = tmp_path / "bench"
    result = CliRunner().invoke(main, [
        "bench", str(train), "--model", str(trainable_llama), "--validation", str(test), "--benchmark", "test/four",
        "-o", str(out), "--methods", "full", "--learning-rates", "2", "--edge-rates", "0", "--max-steps", "8",
        "-b", "4", "--metric", "exact_match", "--generate-max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    records = read_jsonl(out / "records.jsonl")
    assert len(records) == 2 and all(r.metric == "exact_match" and r.higher_is_better for r in records)
    assert all(r.score is not None for r in records)
    assert "exact_match" in result.output.splitlines()[-1]
