"""End-to-end training on tiny models: outputs that load with the ecosystem's loaders, learning,
resuming after an interruption, classification heads, and the output-directory guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import autopeft
from autopeft.cli import main
from autopeft.errors import BadInputError
from autopeft.training.outputs import RunRecord

pytestmark = pytest.mark.slow  # every test here trains or starts processes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = {"max_examples": 32, "max_length": 64, "batch_size": 4, "samples": 1, "progress": False}


def _train(model_dir, out, data=EXAMPLES / "instructions.jsonl", **options):
    return autopeft.train(str(data), output_dir=str(out), model=str(model_dir), **{**FAST, **options})


def test_lora_run_leaves_a_loadable_adapter_and_a_complete_record(trainable_llama, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    record = _train(trainable_llama, out, max_steps=4, learning_rate=1e-2)
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json", "report.md", "loss.png",
                 "README.md", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()  # removed once the run finished
    stored = RunRecord.model_validate_json((out / "run.json").read_text())
    assert stored.steps == record.steps == 4 and stored.method == "lora"
    assert stored.data["format"] == "alpaca" and stored.data["fingerprint"]
    assert stored.trainable_params > 0 and stored.peak_memory_bytes > 0 and stored.tokens_per_second
    assert {"eval_loss", "eval_loss_before", "perplexity", "forgetting"} <= set(stored.metrics)
    assert stored.metrics["eval_loss"] < stored.metrics["eval_loss_before"] and stored.warnings == []
    assert stored.precision == "fp32" and stored.options["precision"] == "auto"  # what ran, and what was asked
    assert len(stored.samples) == 1
    base = AutoModelForCausalLM.from_pretrained(str(trainable_llama))
    loaded = PeftModel.from_pretrained(base, str(out))
    assert any("lora_A" in n for n, _ in loaded.named_parameters())
    assert "![loss curves](loss.png)" in (out / "report.md").read_text()


def test_training_lowers_the_validation_loss(trainable_llama, tmp_path):
    record = _train(trainable_llama, tmp_path / "run", method="full", max_steps=12, learning_rate=3e-3,
                    early_stopping_patience=0)
    assert record.metrics["eval_loss"] < record.metrics["eval_loss_before"] - 0.5


def test_full_fine_tune_saves_a_model_transformers_loads(trainable_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    _train(trainable_llama, tmp_path / "run", method="full", max_steps=2)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run"))
    assert model.config.num_hidden_layers == 2


def test_resume_continues_from_the_last_checkpoint(trainable_llama, tmp_path, monkeypatch):
    from autopeft.training.progress import ProgressCallback

    out = tmp_path / "run"

    def stop_at_step_3(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ProgressCallback, "on_step_end", stop_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            _train(trainable_llama, out, max_steps=6, save_steps=2, eval_steps=2, early_stopping_patience=0,
                   progress=True)
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "run.json").exists()
    with pytest.raises(BadInputError, match="--resume"):
        _train(trainable_llama, out, max_steps=6)
    record = autopeft.train(output_dir=str(out), resume=True)
    assert record.steps == 6
    # the history before the interruption came back with the checkpoint
    assert [h.step for h in record.history if h.eval_loss is not None][:2] == [0, 2]


def test_classification_trains_the_head_and_reports_accuracy(trainable_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    record = _train(trainable_bert, tmp_path / "run", data=EXAMPLES / "sentiment.jsonl", method="ln_tuning",
                    max_steps=3)
    assert record.task == "seq-cls" and 0 <= record.metrics["accuracy"] <= 1 and "macro_f1" in record.metrics
    assert record.data["labels"] == ["negative", "positive"]
    # with no learning rate given, the method's own for classification (the top of its seq-cls range)
    assert record.learning_rate == max(autopeft.get_method("ln_tuning").search_space.learning_rates("seq-cls"))
    from peft import PeftModel

    base = AutoModelForSequenceClassification.from_pretrained(str(trainable_bert), num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "run"))
    assert any("classifier" in n for n, _ in loaded.named_parameters())


def test_a_classifier_that_learned_nothing_says_so(trainable_bert, tmp_path, caplog):
    """A run that ends at the loss of answering with the label frequencies warns on stderr, in run.json
    and at the top of report.md, instead of leaving a useless adapter looking like a result."""
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="autopeft"):
        record = _train(trainable_bert, out, data=EXAMPLES / "sentiment.jsonl", method="lora", max_steps=1,
                        learning_rate=1e-9)
    assert len(record.warnings) == 1 and "learned" in record.warnings[0] and "from the text" in record.warnings[0]
    assert "--seed" in record.warnings[0] and record.warnings[0] in caplog.text
    assert RunRecord.model_validate_json((out / "run.json").read_text()).warnings == record.warnings
    report = (out / "report.md").read_text()
    assert report.index("## Warnings") < report.index("## Metrics")
    assert f"**Warning:** {record.warnings[0]}" in (out / "README.md").read_text()  # the model card


def test_learning_warnings_judge_a_classifier_by_the_label_frequencies_and_the_rest_by_the_loss_before():
    from autopeft.training.evaluation import learning_warnings

    prior, majority = 0.686, 0.509  # SST-2: 55.8% of training labels positive; 50.9% of dev's
    # DoRA at 3e-3 on SST-2 with SmolLM2, training seed 3: 2.5% below the prior, 60.6% accuracy
    failed = learning_warnings({"eval_loss_before": 1.268, "eval_loss": 0.669, "accuracy": 0.606}, prior, majority)
    assert len(failed) == 1 and "0.669, only 2.5% below the loss of answering" in failed[0]
    assert "(accuracy 60.6%)" in failed[0] and "--seed" in failed[0]
    assert "0.700, above the loss" in learning_warnings({"eval_loss": 0.70}, prior)[0]
    # the same configuration at seed 0: 83.1% accuracy
    assert learning_warnings({"eval_loss_before": 1.268, "eval_loss": 0.41, "accuracy": 0.831}, prior, majority) == []
    # one class for everything, though the loss is 5.2% below the prior (MiniLM on held-out SST-2)
    stuck = learning_warnings({"eval_loss": 0.650, "accuracy": 0.557}, prior, 0.557)
    assert "no better than always answering the most frequent label (55.7%" in stuck[0]
    # a language model: only whether the validation loss fell
    assert learning_warnings({"eval_loss_before": 2.10, "eval_loss": 1.62}, None) == []
    assert "did not fall (2.100 before training, 2.150 after)" in learning_warnings(
        {"eval_loss_before": 2.10, "eval_loss": 2.15}, None)[0]
    assert "diverged" in learning_warnings({"eval_loss_before": 2.10, "eval_loss": float("nan")}, None)[0]
    assert learning_warnings({"train_loss": 1.0}, None) == []  # no validation set: nothing to judge by


def _count_evaluations(monkeypatch) -> list[int]:
    from transformers import Trainer

    steps, evaluate = [], Trainer.evaluate

    def counted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    return steps


def test_the_last_evaluation_is_not_repeated_for_the_final_metrics(trainable_llama, tmp_path, monkeypatch):
    evaluated = _count_evaluations(monkeypatch)
    record = _train(trainable_llama, tmp_path / "run", max_steps=4, eval_steps=2, early_stopping_patience=0,
                    samples=0, forgetting=False)
    assert evaluated == [0, 2, 4]  # a pass over the validation set each, none twice
    assert record.metrics["eval_loss"] == record.history[-1].eval_loss


def test_after_early_stopping_the_final_metrics_are_the_best_checkpoints(trainable_llama, tmp_path, monkeypatch):
    evaluated = _count_evaluations(monkeypatch)
    # at this rate the validation loss bottoms out at step 6 and rises, so early stopping keeps an early step
    record = _train(trainable_llama, tmp_path / "run", method="full", learning_rate=3e-2, max_steps=16, eval_steps=2,
                    early_stopping_patience=2, samples=0, forgetting=False)
    evals = {p.step: p.eval_loss for p in record.history if p.eval_loss is not None and p.step > 0}
    best = min(evals, key=evals.get)
    assert best < max(evals)  # the test needs a best checkpoint other than the last
    assert record.metrics["eval_loss"] == evals[best]
    assert len(evaluated) == len(set(evaluated))


def test_output_dir_of_someone_else_is_refused(trainable_llama, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BadInputError, match="not made by autopeft"):
        _train(trainable_llama, out, max_steps=1)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli_train_json_and_bad_data(trainable_llama, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["train", str(EXAMPLES / "chat.jsonl"), "--model", str(trainable_llama), "-o",
                                  str(out), "--max-steps", "2", "--max-examples", "16", "--max-length", "256",
                                  "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) == {"method", "settings", "output_dir", "metrics", "peak_memory_bytes", "seconds"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    result = runner.invoke(main, ["train", str(bad), "--model", str(trainable_llama), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert f"{bad}:2:" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_merge_export_of_a_trained_run(trainable_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    _train(trainable_llama, tmp_path / "run", max_steps=2, learning_rate=1e-2)
    result = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "--merge", str(tmp_path / "merged"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_abs_diff"] < 1e-3
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))


def test_pissa_is_saved_as_a_lora_for_the_untouched_base(trainable_llama, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    _train(trainable_llama, out, method="pissa", max_steps=2, learning_rate=1e-2, samples=0)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True  # a plain LoRA now, nothing to decompose on load
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    base = AutoModelForCausalLM.from_pretrained(str(trainable_llama))
    before = base(ids).logits
    adapted = PeftModel.from_pretrained(base, str(out))(ids).logits
    assert not torch.allclose(before, adapted)  # the trained update is there


def test_a_time_limit_ends_training_early_and_still_writes_the_outputs(trainable_llama, tmp_path):
    out = tmp_path / "run"
    record = _train(trainable_llama, out, max_steps=50_000, learning_rate=1e-2, max_seconds=3, samples=0,
                    forgetting=False)
    assert record.steps < 50_000
    assert (out / "adapter_model.safetensors").is_file() and (out / "run.json").is_file()


def test_the_record_holds_the_settings_the_method_adapted_to_the_model(trainable_llama, tmp_path):
    """C3A's default block size (256) does not divide this model's 64- and 32-wide layers: the run
    uses a divisor, and run.json says which, so that the run can be estimated or repeated as it was."""
    import json

    record = _train(trainable_llama, tmp_path / "run", method="c3a", max_steps=1)
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert record.settings["block_size"] == saved["block_size"] == 32
    estimate = autopeft.estimate(str(trainable_llama), "c3a", settings=record.settings, batch_size=2, seq_len=32)
    assert estimate.trainable_params == record.trainable_params


def test_the_estimate_reports_the_settings_the_method_adapts_to_the_model(trainable_llama):
    """Asked with C3A's defaults, the estimate shows the block size the run would use, not 256."""
    estimate = autopeft.estimate(str(trainable_llama), "c3a", batch_size=2, seq_len=32, device="cpu")
    assert estimate.settings["block_size"] == 32


def test_the_time_announced_leaves_evaluations_out_of_the_step_time_and_counts_those_to_come(monkeypatch):
    import io
    from types import SimpleNamespace

    from autopeft.training import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    callback = progress.ProgressCallback(stream=out, live=False)
    args = SimpleNamespace(eval_strategy="steps")
    state = SimpleNamespace(global_step=0, max_steps=100, eval_steps=50, num_input_tokens_seen=0)
    callback.on_train_begin(args, state, None)
    clock[0] += 30.0  # the evaluation before the first step: 30 s
    callback.on_evaluate(args, state, None, metrics={"eval_runtime": 30.0})
    for _ in range(3):
        clock[0] += 1.0
        state.global_step += 1
        callback.on_step_end(args, state, None)
    # 97 steps of 1 s, then evaluations at step 50 and 100 (the last is the final one): 30 s each
    assert "100 steps at ~1.0 s each: about 3m10s in all, 2m37s left" in out.getvalue()


def test_a_test_file_is_scored_once_after_training_and_scores_the_profile_record(trainable_bert, tmp_path,
                                                                                   monkeypatch):
    import json

    from autopeft.profiles import record_from_run

    rows = [json.loads(line) for line in (EXAMPLES / "sentiment.jsonl").read_text().splitlines() if line.strip()]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    evaluated = _count_evaluations(monkeypatch)
    record = _train(trainable_bert, tmp_path / "run", data=EXAMPLES / "sentiment.jsonl", method="ln_tuning",
                    max_steps=4, eval_steps=2, test=str(test))
    assert 0 <= record.metrics["test_accuracy"] <= 1 and record.metrics["test_loss"] > 0
    assert "test_macro_f1" in record.metrics and "accuracy" in record.metrics  # the validation set's, as before
    # the validation set at steps 0, 2 and 4 (the last reused), then the test file once
    assert len(evaluated) == 4
    profile = record_from_run(record)
    assert profile.metric == "test_accuracy" and profile.score == record.metrics["test_accuracy"]


def test_a_test_file_with_a_label_the_training_data_lacks_is_refused_with_its_line(trainable_bert, tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "fine", "label": "positive"}\n{"text": "what", "label": "confused"}\n')
    with pytest.raises(autopeft.BadInputError) as err:
        _train(trainable_bert, tmp_path / "run", data=EXAMPLES / "sentiment.jsonl", method="ln_tuning", max_steps=1,
               test=str(test))
    assert "test.jsonl" in str(err.value) and "confused" in str(err.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_data_seed_keeps_the_sample_and_split_while_the_training_seed_changes(trainable_llama, tmp_path):
    # the untouched model's validation loss depends on which examples were held out, and nothing else
    before = {seed: _train(trainable_llama, tmp_path / f"fixed{seed}", max_steps=1, seed=seed, data_seed=0,
                           samples=0).metrics["eval_loss_before"] for seed in (1, 2)}
    moved = _train(trainable_llama, tmp_path / "moved", max_steps=1, seed=2, samples=0).metrics["eval_loss_before"]
    assert before[1] == pytest.approx(before[2], rel=1e-5)  # the same examples, summed in another order
    assert moved != pytest.approx(before[2], rel=1e-3)
