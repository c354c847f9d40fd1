"""Every name a user types is checked against what exists before any model loads: exit status 2, one
line naming the option as typed, the unknown name and the closest known ones; and data that cannot
teach its task is refused the same way, with the counts, while data that is merely weak is warned about."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import autopeft
from autopeft.cli import main
from autopeft.data import prepare_data
from autopeft.errors import BadInputError, unknown_names
from autopeft.methods import registry

from .conftest import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if anything loads a model's weights."""
    import autopeft.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(autopeft.models, "load_model", refuse)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sentiment(n: int, path: Path) -> Path:
    return write_jsonl(path, [{"text": f"film {i} was {'great' if i % 2 else 'dull'}", "label": "pos" if i % 2 else "neg"}
                              for i in range(n)])


def refused(*args, env=None) -> str:
    """Run the CLI and return its one error line, asserting exit status 2 and nothing on stdout."""
    result = CliRunner().invoke(main, list(map(str, args)), env=env)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("autopeft: error")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -------------------------------------------------------------------------------------------------------
# The shared helper


def test_the_refusal_names_the_closest_known_names_or_lists_them():
    error = unknown_names("method", ["dorra"], ["lora", "dora", "vera"], source="--methods")
    assert str(error) == "--methods: unknown method 'dorra'; did you mean 'dora' or 'lora'?"
    assert error.exit_code == 2
    assert str(unknown_names("objective", ["cost"], ["quality", "memory", "speed"], source="--objective")) == \
        "--objective: unknown objective 'cost'; known: quality, memory, speed"
    many = [f"method{i}" for i in range(40)]
    assert str(unknown_names("method", ["zzz"], many, listing="`autopeft methods` lists them")) == \
        "unknown method 'zzz'; `autopeft methods` lists them"
    both = str(unknown_names("method", ["dorra", "zzz"], ["vera", "dora"]))
    assert both == "unknown methods 'dorra' (did you mean 'dora'?), 'zzz'; known: vera, dora"


# -------------------------------------------------------------------------------------------------------
# Method names: --method, --methods, --exclude


def test_an_unknown_name_among_methods_is_refused_not_dropped(tmp_path, no_model_loads):
    data = sentiment(20, tmp_path / "d.jsonl")
    line = refused("recommend", data, "--methods", "lora,nosuch", "--no-pilot")
    assert line == "autopeft: error: --methods: unknown method 'nosuch'; `autopeft methods` lists them"
    assert "did you mean 'dora'" in refused("recommend", data, "--methods", "dorra", "--no-pilot")


def test_methods_naming_only_unknown_methods_is_bad_input_not_nothing_fits(tmp_path, no_model_loads):
    line = refused("recommend", sentiment(20, tmp_path / "d.jsonl"), "--methods", "nosuch", "--no-pilot")
    assert "unknown method 'nosuch'" in line and "constraints" not in line


def test_a_typo_in_exclude_is_refused_rather_than_training_the_method(tmp_path, no_model_loads):
    out = tmp_path / "run"
    line = refused("tune", sentiment(20, tmp_path / "d.jsonl"), "--exclude", "dorra", "-o", out)
    assert line.startswith("autopeft: error: --exclude: unknown method 'dorra'; did you mean 'dora'")
    assert not out.exists()


def test_an_exclusion_that_leaves_none_of_the_named_methods_is_refused(tmp_path, no_model_loads):
    line = refused("recommend", sentiment(20, tmp_path / "d.jsonl"), "--methods", "lora+", "--exclude", "loraplus")
    assert "--exclude" in line and "leaves none of --methods" in line
    assert "names no method" in refused("recommend", sentiment(20, tmp_path / "d.jsonl"), "--methods", ",")


def test_train_with_an_unknown_method_names_the_option(tmp_path, no_model_loads):
    out = tmp_path / "run"
    line = refused("train", sentiment(20, tmp_path / "d.jsonl"), "--method", "dorra", "-o", out)
    assert line.startswith("autopeft: error: --method: unknown method 'dorra'; did you mean 'dora'")
    assert not out.exists()


def test_bench_with_an_unknown_method_writes_no_bench(tmp_path, no_model_loads):
    out = tmp_path / "bench"
    line = refused("bench", sentiment(20, tmp_path / "d.jsonl"), "--benchmark", "b", "--methods", "lora,lroa", "-o", out)
    assert "--methods: unknown method 'lroa'; did you mean" in line and "'lora'" in line
    assert not out.exists()


def test_the_sdk_checks_method_names_too(tmp_path):
    with pytest.raises(autopeft.UnknownMethodError, match="--exclude: unknown method 'dorra'; did you mean 'dora'"):
        autopeft.recommend(str(sentiment(20, tmp_path / "d.jsonl")), exclude="dorra")


# -------------------------------------------------------------------------------------------------------
# Plugins


def test_an_unknown_plugin_in_the_allow_list_is_refused(monkeypatch):
    monkeypatch.delenv("AUTOPEFT_LOAD_PLUGINS", raising=False)
    line = refused("--plugins", "nosuch", "methods")
    assert line.startswith("autopeft: error: --plugins: unknown plugin 'nosuch'; installed plugin packages: autopeft")
    assert "unknown plugin 'lroa'; did you mean 'lora', 'loha' or 'road'?" in refused("--plugins", "lroa", "methods")
    # the package name as pip writes it works, whatever its separators and case
    assert CliRunner().invoke(main, ["--plugins", "AutoPEFT", "methods", "--json"]).exit_code == 0


def test_an_unknown_plugin_in_the_environment_variable_is_refused_naming_it(monkeypatch):
    registry.reset()
    try:
        line = refused("plugins", env={"AUTOPEFT_LOAD_PLUGINS": "lora,lroa"})
        assert line == ("autopeft: error: AUTOPEFT_LOAD_PLUGINS: unknown plugin 'lroa'; did you mean "
                        "'lora', 'loha' or 'road'?")
    finally:
        registry.reset()


# -------------------------------------------------------------------------------------------------------
# Capabilities, choices, objectives, accelerators, benchmarks, options


@pytest.mark.parametrize("args, expected", [
    (["--objective", "qualty"], "--objective: unknown objective 'qualty'; did you mean 'quality'?"),
    (["--target-gpu", "H1OO"], "--target-gpu: unknown accelerator 'H1OO'"),
    (["--leave-out", "autopeft/trec-minilm-l7"],
     "--leave-out: unknown benchmark 'autopeft/trec-minilm-l7'; did you mean 'autopeft/trec-minilm-l6'"),
    # the shipped benchmarks are too many to list in a line: the refusal says where they are listed
    (["--leave-out", "nosuch"], "--leave-out: unknown benchmark 'nosuch'; `autopeft profiles list` lists them"),
], ids=["objective", "accelerator", "benchmark", "benchmark-listed"])
def test_recommend_refuses_unknown_names_of_every_kind(tmp_path, no_model_loads, args, expected):
    assert expected in refused("recommend", sentiment(20, tmp_path / "d.jsonl"), *args)


@pytest.mark.parametrize("args, expected", [
    (["--require", "mrege"], "Invalid value for '--require': unknown value 'mrege'; did you mean 'merge'?"),
    (["--task", "seqcls"], "Invalid value for '--task': unknown value 'seqcls'; did you mean 'seq-cls'?"),
    (["--precision", "bf61"], "Invalid value for '--precision': 'bf61' is not one of auto, bf16, fp16, fp32"),
], ids=["capability", "task", "precision"])
def test_choices_name_the_closest_choice(tmp_path, no_model_loads, args, expected):
    command = "recommend" if args[0] != "--precision" else "train"
    result = CliRunner().invoke(main, [command, str(sentiment(20, tmp_path / "d.jsonl")), *args])
    assert result.exit_code == 2 and expected in result.output


@pytest.mark.slow
def test_a_bad_choice_is_one_line_from_the_console_command(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "autopeft", "recommend", str(sentiment(20, tmp_path / "d.jsonl")),
                           "--require", "mrege"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ("autopeft: error: Invalid value for '--require': unknown value 'mrege'; did you "
                                   "mean 'merge'? (see --help)")


@pytest.mark.parametrize("option, other", [("--pilot-budget", "--time-budget"), ("--time-budget", "--pilot-budget")])
def test_a_bad_duration_is_reported_under_the_option_typed(tmp_path, no_model_loads, option, other):
    line = refused("recommend", sentiment(20, tmp_path / "d.jsonl"), option, "soon")
    assert line.startswith(f"autopeft: error: {option} ") and other not in line and "'soon'" in line


def test_an_sdk_option_that_does_not_exist_is_refused_with_the_closest(tmp_path):
    with pytest.raises(BadInputError, match="unknown option 'lerning_rate'; did you mean 'learning_rate'?"):
        autopeft.train(str(sentiment(20, tmp_path / "d.jsonl")), output_dir=str(tmp_path / "run"), lerning_rate=1e-3)
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------------------------
# Settings and target modules


def test_an_unknown_setting_is_refused_naming_the_closest(tmp_path, trainable_llama, no_model_loads):
    out = tmp_path / "run"
    line = refused("train", write_jsonl(tmp_path / "t.jsonl", [{"text": f"line {i}"} for i in range(8)]),
                   "-m", trainable_llama, "--set", "alhpa=8", "-o", out)
    assert line == "autopeft: error: --set: unknown lora setting 'alhpa'; did you mean 'alpha'?"
    assert not out.exists()


@pytest.mark.parametrize("targets, named", [("nosuch_proj", "'nosuch_proj'"), ("q_proj,nosuch_proj", "'nosuch_proj'"),
                                            ("qproj", "'qproj' (did you mean 'q_proj'")])
def test_target_modules_the_model_lacks_are_refused_before_it_loads(tmp_path, trainable_llama, no_model_loads,
                                                                     targets, named):
    out = tmp_path / "run"
    line = refused("train", write_jsonl(tmp_path / "t.jsonl", [{"text": f"line {i}"} for i in range(8)]),
                   "-m", trainable_llama, "--set", f"target_modules={targets}", "-o", out)
    assert line.startswith(f"autopeft: error: --set: target_modules: no module of the model is named {named}")
    assert line.endswith("the model's layers: embed_tokens, q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                         "down_proj, input_layernorm, post_attention_layernorm, norm, lm_head (method lora)")
    assert not out.exists()


@pytest.mark.parametrize("targets", ["q_proj", "q_proj,v_proj", "all-linear", r".*\.(q|v)_proj", "self_attn.q_proj"])
def test_target_modules_as_peft_reads_them_are_accepted(tiny_llama_dir, targets):
    result = CliRunner().invoke(main, ["estimate", "--model", str(tiny_llama_dir), "--method", "lora", "--set",
                                       f"target_modules={targets}", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trainable_params"] > 0


def test_a_target_regex_that_matches_nothing_is_explained(tiny_llama_dir):
    line = refused("estimate", "--model", tiny_llama_dir, "--method", "lora", "--set", "target_modules=q_pro.*",
                   "--device", "cpu")
    assert "target_modules 'q_pro.*' matches no module of the model (a string is a regular expression" in line
    assert "'model.layers.0.self_attn.q_proj'" in line


def test_an_adapter_config_with_a_misspelt_key_or_a_missing_module_is_refused(tmp_path, tiny_llama_dir):
    base = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "target_modules": ["q_proj"]}
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({**base, "lora_alhpa": 4}))
    line = refused("estimate", "--model", tiny_llama_dir, "--peft-config", typo, "--device", "cpu")
    assert line == f"autopeft: error: {typo}: unknown LoraConfig key 'lora_alhpa' (did you mean 'lora_alpha'?)"
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**base, "target_modules": ["q_proj", "nosuch"]}))
    line = refused("estimate", "--model", tiny_llama_dir, "--peft-config", missing, "--device", "cpu")
    assert f"{missing}: target_modules: no module of the model is named 'nosuch'" in line
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**base, "a_future_knob": 1}))
    result = CliRunner().invoke(main, ["estimate", "--model", str(tiny_llama_dir), "--peft-config", str(newer),
                                       "--device", "cpu", "--json"])
    assert result.exit_code == 0
    assert "'a_future_knob', unknown to the installed PEFT" in result.stderr


# -------------------------------------------------------------------------------------------------------
# Data that cannot teach the task: refused before a model loads


def test_a_classification_file_with_one_label_is_refused_before_a_model_loads(tmp_path, trainable_bert,
                                                                               no_model_loads):
    data = write_jsonl(tmp_path / "one.jsonl", [{"text": f"review {i}", "label": "pos"} for i in range(120)])
    out = tmp_path / "run"
    line = refused("train", data, "-m", trainable_bert, "-o", out)
    assert line == (f"autopeft: error: {data}: all 120 examples have label 'pos'; a classifier needs examples of "
                    f"at least two labels")
    assert not out.exists()
    assert "all 120 examples have label 'pos'" in refused("tune", data, "-m", trainable_bert, "-o", out)
    assert not out.exists()


def test_a_sample_that_lost_the_other_labels_says_so(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"r{i}", "label": "pos"} for i in range(100)]
                       + [{"text": "bad", "label": "neg"}])
    with pytest.raises(BadInputError, match=r"all 2 examples of the --max-examples sample \(of 101 records, which "
                                            r"also hold 'neg'; sample more\) have label 'pos'"):
        prepare_data(data, tok, max_examples=2)


def test_a_label_only_in_the_validation_file_is_refused_with_counts_and_line(tmp_path, trainable_bert,
                                                                            no_model_loads):
    train = sentiment(20, tmp_path / "train.jsonl")
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "fine", "label": "pos"}, {"text": "meh", "label": "neutral"},
                                               {"text": "ok", "label": "neutral"}, {"text": "nice", "label": "Pos"}])
    out = tmp_path / "run"
    line = refused("train", train, "-m", trainable_bert, "--validation", dev, "-o", out)
    assert line == (f"autopeft: error: {dev}:2: labels 'neutral' (2 examples), 'Pos' (1 example; did you mean "
                    f"'pos'?) do not occur in the training data; a classifier cannot predict a label it never saw "
                    f"in training (training labels: neg, pos; the first unseen one is on this line)")
    assert not out.exists()


def test_a_label_only_in_the_test_file_is_refused(tmp_path, trainable_bert, no_model_loads):
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "fine", "label": "pos"}, {"text": "hm", "label": "mixed"}])
    out = tmp_path / "run"
    line = refused("train", sentiment(20, tmp_path / "train.jsonl"), "-m", trainable_bert, "--test", test, "-o", out)
    assert line.startswith(f"autopeft: error: {test}:2: label 'mixed' does not occur in the training data (1 example)")
    assert not out.exists()


def test_texts_that_are_all_the_same_cannot_teach_a_classifier(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "same", "label": i % 2} for i in range(10)])
    with pytest.raises(BadInputError, match="all 9 training examples have the same text"):
        prepare_data(data, tok)


# -------------------------------------------------------------------------------------------------------
# The split, and data that is merely weak: trained on, with warnings


def test_a_rare_label_never_lands_in_validation_alone(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"r{i}", "label": "pos"} for i in range(30)]
                       + [{"text": "awful", "label": "neg"}])
    for seed in range(10):
        prepared = prepare_data(data, tok, validation_fraction=0.5, seed=seed)
        assert prepared.label2id == {"neg": 0, "pos": 1}
        assert 0 in prepared.train["labels"] and prepared.info.num_validation == 16
    warnings = prepared.info.warnings
    assert "label 'neg' (1) has fewer than 5 training examples: too few to learn it from" in warnings
    assert "the validation set has no example of 'neg' (1 training example): its scores say nothing about that " \
           "label" in warnings
    assert not any("imbalanced" in w for w in warnings)  # 15 to 1 is under the ratio warned about


def test_the_split_keeps_each_labels_share(tmp_path, tok):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"r{i}", "label": "pos" if i < 80 else "neg"}
                                              for i in range(100)])
    prepared = prepare_data(data, tok, validation_fraction=0.1)
    assert sorted(prepared.validation["labels"]) == [0, 0] + [1] * 8


def test_one_example_per_label_trains_without_validation_and_says_why(tmp_path, tok):
    prepared = prepare_data(write_jsonl(tmp_path / "d.jsonl", [{"text": "good", "label": "pos"},
                                                               {"text": "bad", "label": "neg"}]), tok)
    assert prepared.validation is None and prepared.info.num_train == 2
    assert any(w.startswith("no validation split: every label has a single example") for w in prepared.info.warnings)


def test_weak_classification_data_is_trained_on_with_warnings(tmp_path, tok, caplog):
    records = [{"text": f"r{i}", "label": "pos"} for i in range(100)] + [
        {"text": f"n{i}", "label": "neg"} for i in range(4)] + [{"text": "r1", "label": "neg"}]
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "r2", "label": "pos"}, {"text": "new", "label": "pos"}])
    prepared = prepare_data(write_jsonl(tmp_path / "d.jsonl", records), tok, validation_path=dev)
    warnings = prepared.info.warnings
    assert "the training labels are imbalanced: 'pos' has 100 examples, 'neg' 5 (20 to 1); always answering " \
           "'pos' would score 95% accuracy, so judge the run by macro_f1" in warnings
    assert "1 training text has more than one label (e.g. 'r1'): no model gets both right" in warnings
    assert "the validation set has no example of 'neg' (5 training examples): its scores say nothing about that " \
           "label" in warnings
    assert "1 of 2 validation examples also occur in the training data: on them, validation measures memory " \
           "rather than learning" in warnings
    assert all(f"warning: {w}" in caplog.text for w in warnings)


def test_causal_lm_data_whose_responses_are_all_one_is_warned_about(tmp_path, tok):
    same = write_jsonl(tmp_path / "s.jsonl", [{"prompt": f"question {i}?", "completion": "yes"} for i in range(10)])
    warnings = prepare_data(same, tok).info.warnings
    assert warnings == ["all 9 training examples have the same response ('yes'): the model can only learn to give "
                        "it, whatever the prompt"]
    varied = write_jsonl(tmp_path / "v.jsonl", [{"prompt": f"q{i}?", "completion": f"a{i}"} for i in range(10)])
    assert prepare_data(varied, tok).info.warnings == []


def test_a_named_method_that_cannot_train_the_task_is_listed_with_the_reason(tmp_path, trainable_bert,
                                                                           no_model_loads):
    data = sentiment(20, tmp_path / "d.jsonl")
    result = CliRunner().invoke(main, ["recommend", str(data), "-m", str(trainable_bert), "--methods",
                                       "prefix_tuning", "--no-pilot"])
    assert result.exit_code == 3
    assert "prefix_tuning: does not support seq-cls (it supports causal-lm)" in result.stderr
    result = CliRunner().invoke(main, ["recommend", str(data), "-m", str(trainable_bert), "--methods",
                                       "lora,prefix_tuning", "--no-pilot", "--json"])
    assert result.exit_code == 0, result.output
    rows = {c["method"]: c for c in json.loads(result.stdout)["candidates"]}
    assert rows["prefix_tuning"]["excluded_because"] == ["does not support seq-cls (it supports causal-lm)"]
