"""`autopeft bench` on a tiny model: a learning-rate sweep per method, records the recommender can
load, a failure that marks only its run, and a resumed bench that repeats nothing."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from autopeft.cli import main
from autopeft.profiles import load_records, read_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = ["--max-length", "64", "--max-examples", "24", "--batch-size", "4", "--epochs", "1", "--eval-steps", "2"]


def _bench(model, out, *extra):
    return CliRunner().invoke(main, ["bench", str(EXAMPLES / "instructions.jsonl"), "--model", str(model), *FAST,
                                     "--benchmark", "test/tiny", "-o", str(out), *extra])


def test_bench_sweeps_learning_rates_and_resumes_without_repeating(trainable_llama, tmp_path):
    out = tmp_path / "bench"
    res = _bench(trainable_llama, out, "--methods", "lora,ia3", "--learning-rates", "2")
    assert res.exit_code == 0, res.output
    records = read_jsonl(out / "records.jsonl")
    assert sorted(r.method for r in records) == ["ia3", "ia3", "lora", "lora"]
    assert len({(r.method, r.learning_rate) for r in records}) == 4
    for r in records:
        assert r.benchmark == "test/tiny" and r.score is not None and r.metric == "eval_loss"
        assert r.curve and r.peak_memory_bytes and r.estimated_peak_memory_bytes and r.trainable_params
    assert len(list((out / "runs").glob("*.json"))) == 4
    # the recommender can learn from a bench directory as it is
    assert len([r for r in load_records([out], shipped=False, store=False)]) == 4

    # continuing adds only what is new
    res = _bench(trainable_llama, out, "--methods", "lora,ia3,vera", "--learning-rates", "2")
    assert res.exit_code == 0, res.output
    assert "4 already finished, 2 to go" in res.output
    again = read_jsonl(out / "records.jsonl")
    assert [r.experiment for r in again[:4]] == [r.experiment for r in records]
    assert sorted(r.method for r in again[4:]) == ["vera", "vera"]

    # more learning rates per method: the finished runs stay, only the new rates train
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "3")
    assert res.exit_code == 0, res.output
    assert "2 already finished, 1 to go" in res.output
    assert json.loads((out / "bench.json").read_text())["learning_rates"] == 3
    assert len(read_jsonl(out / "records.jsonl")) == 7


def test_bench_refuses_other_settings_in_a_started_bench(trainable_llama, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.json").write_text(json.dumps({"benchmark": "test/tiny", "data": "x", "task": "causal-lm",
                                                "options": {}, "learning_rates": 1}))
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "1")
    assert res.exit_code == 2 and "other settings" in res.output and "Traceback" not in res.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    res = _bench(trainable_llama, tmp_path / "other", "--methods", "lora")
    assert res.exit_code == 2 and "not a bench directory" in res.output


def test_a_failed_run_is_recorded_once_with_its_reason(trainable_llama, tmp_path):
    out = tmp_path / "bench"
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "1", "--run-timeout", "0.5")
    assert res.exit_code == 0, res.output
    (record,) = read_jsonl(out / "records.jsonl")
    assert record.score is None and "no result after" in record.error
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "1", "--run-timeout", "0.5")
    assert "1 already finished, 0 to go" in res.output and len(read_jsonl(out / "records.jsonl")) == 1


def test_the_results_page_is_built_from_the_results_with_its_plots(tmp_path, monkeypatch):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results_page.py"
    spec = importlib.util.spec_from_file_location("results_page", path)
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    monkeypatch.setattr(page, "DOCS", tmp_path)
    monkeypatch.setattr(page, "IMG", tmp_path / "img")
    assert page.main() == 0
    text = (tmp_path / "benchmarks.md").read_text()
    images = [line[line.index("(") + 1:-1] for line in text.splitlines() if line.startswith("![")]
    assert len(images) >= 3 and all((tmp_path / image).is_file() for image in images)
    assert "## Choosing: the recommender" in text and "python benchmarks/replay_peft.py" in text
    front = page._front([(1, 0.5, "a"), (2, 0.4, "b"), (3, 0.7, "c"), (1.5, 0.6, "d")], higher=True)
    assert [name for *_, name in front] == ["a", "d", "c"]


def test_longer_sst2_training_starts_from_each_methods_best_bench_run(tmp_path, monkeypatch):
    """benchmarks/sst2_epochs.py retrains each method at the learning rate its bench scored best, only
    while it is below 80%, and its table counts the methods that got there."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sst2_epochs.py"
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location("sst2_epochs", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name, method, lr, accuracy in [("a", "lora", 1e-3, 0.78), ("b", "lora", 3e-3, 0.79), ("c", "ia3", 1e-2, 0.76),
                                       ("d", "vera", 1e-2, None)]:
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "method": method, "learning_rate": lr, "options": {"epochs": 3},
            "metrics": {"accuracy": accuracy} if accuracy is not None else {}}))
    monkeypatch.setattr(script, "BENCH", tmp_path)
    best = script.best_runs()
    assert best == {"lora": {"learning_rate": 3e-3, "accuracy": 0.79, "epochs": 3},
                    "ia3": {"learning_rate": 1e-2, "accuracy": 0.76, "epochs": 3}}
    results = {"5ep/lora": {"metrics": {"accuracy": 0.805}}, "5ep/ia3": {"metrics": {"accuracy": 0.77}},
               "8ep/ia3": {"metrics": {"accuracy": 0.79}}}
    assert script.best_accuracy("lora", best, results, below=8) == 0.805  # reached: no 8-epoch run
    assert script.best_accuracy("ia3", best, results, below=8) == 0.77
    table = script.markdown(best, results)
    assert "| lora | 0.003 | 79.0% | 80.5% |  | yes |" in table
    assert "| ia3 | 0.01 | 76.0% | 77.0% | 79.0% | NO |" in table
    assert "1 of the 2 methods below 80% in the bench reach it with longer training." in table
