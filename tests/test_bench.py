"""`autopeft bench` on a tiny model: a learning-rate sweep per method, records the recommender can
load, a failure that marks only its run, and a resumed bench that repeats nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopeft.cli import main
from autopeft.choose.bench import edge_runs
from autopeft.profiles import ProfileRecord, load_records, read_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BENCHMARKS = EXAMPLES.parent / "benchmarks"
FAST = ["--max-length", "64", "--max-examples", "24", "--batch-size", "4", "--epochs", "1", "--eval-steps", "2"]


def benchmark_script(name: str):
    """A script of ``benchmarks/`` loaded as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _bench(model, out, *extra):
    return CliRunner().invoke(main, ["bench", str(EXAMPLES / "instructions.jsonl"), "--model", str(model), *FAST,
                                     "--benchmark", "test/tiny", "-o", str(out), *extra])


@pytest.mark.slow
def test_bench_sweeps_learning_rates_and_resumes_without_repeating(trainable_llama, tmp_path):
    out = tmp_path / "bench"
    res = _bench(trainable_llama, out, "--methods", "lora,ia3", "--learning-rates", "2", "--edge-rates", "0")
    assert res.exit_code == 0, res.output
    assert "4 to go; the first run's time sets the estimate for the rest" in res.output
    records = read_jsonl(out / "records.jsonl")
    assert sorted(r.method for r in records) == ["ia3", "ia3", "lora", "lora"]
    assert len({(r.method, r.learning_rate) for r in records}) == 4
    for r in records:
        assert r.benchmark == "test/tiny" and r.score is not None and r.metric == "eval_loss"
        assert r.curve and r.peak_memory_bytes and r.estimated_peak_memory_bytes and r.trainable_params
    assert len(list((out / "runs").glob("*.json"))) == 4
    took = sorted(json.loads(p.read_text())["seconds"] for p in (out / "runs").glob("*.json"))
    # the recommender can learn from a bench directory as it is
    assert len([r for r in load_records([out], shipped=False, store=False)]) == 4

    # continuing adds only what is new
    res = _bench(trainable_llama, out, "--methods", "lora,ia3,vera", "--learning-rates", "2", "--edge-rates", "0")
    assert res.exit_code == 0, res.output
    assert "4 already finished, 2 to go" in res.output
    # said up front, from the finished runs' times
    assert f"at the {took[2]:.0f} s a run the 4 finished runs took (median)" in res.output
    again = read_jsonl(out / "records.jsonl")
    assert [r.experiment for r in again[:4]] == [r.experiment for r in records]
    assert sorted(r.method for r in again[4:]) == ["vera", "vera"]

    # more learning rates per method: the finished runs stay, only the new rates train
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "3", "--edge-rates", "0")
    assert res.exit_code == 0, res.output
    assert "2 already finished, 1 to go" in res.output
    assert json.loads((out / "bench.json").read_text())["learning_rates"] == 3
    assert len(read_jsonl(out / "records.jsonl")) == 7


@pytest.mark.slow
def test_a_method_best_at_the_edge_of_its_rates_gets_one_more_past_it_and_resume_adds_none(trainable_llama, tmp_path):
    out = tmp_path / "bench"
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "2", "--edge-rates", "1")
    assert res.exit_code == 0, res.output
    records = read_jsonl(out / "records.jsonl")
    # two rates always leave the better one at an edge: one more rate past it, and no further (limit 1)
    assert len(records) == 3 and "one rate further" in res.output
    planned, (extra,) = sorted(r.learning_rate for r in records[:2]), records[2:]
    best = max(records[:2], key=lambda r: r.quality())
    assert extra.learning_rate > planned[1] if best.learning_rate == planned[1] else extra.learning_rate < planned[0]
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "2", "--edge-rates", "1")
    assert res.exit_code == 0 and "2 already finished, 0 to go" in res.output
    assert len(read_jsonl(out / "records.jsonl")) == 3


def _record(method, lr, score, *, higher=True):
    return ProfileRecord(benchmark="b", experiment=f"{method} lr={lr:g}", task="seq-cls", model="m", dataset="d",
                         method=method, learning_rate=lr, total_steps=10, metric="accuracy" if higher else "eval_loss",
                         higher_is_better=higher, score=score, source="test")


def test_edge_runs_go_one_step_past_an_edge_best_until_a_rate_scores_worse_or_the_limit():
    # "flat" scored the same at every rate (a classifier at the majority class): its sweep goes up
    records = [
        _record("up", 1e-3, 0.70), _record("up", 3e-3, 0.80),            # best at the top: 3x further
        _record("down", 1e-4, 0.80), _record("down", 1e-3, 0.70),        # at the bottom: the step is capped at 5x
        _record("inside", 1e-3, 0.7), _record("inside", 3e-3, 0.8), _record("inside", 9e-3, 0.75),
        _record("capped", 1e-3, 0.7), _record("capped", 3e-3, 0.75), _record("capped", 9e-3, 0.8),
        _record("capped", 2.7e-2, 0.85),                                 # two past its planned top already
        _record("failed", 1e-3, 0.7), _record("failed", 3e-3, 0.8), _record("failed", 9e-3, None),
        _record("one", 1e-3, 0.8),                                       # a single rate has no edge
        _record("tied", 1e-3, 0.7), _record("tied", 3e-3, 0.8), _record("tied", 9e-3, 0.8),  # no single best
        _record("flat", 1e-3, 0.6), _record("flat", 3e-3, 0.6),         # learned nothing: up from the top
        _record("loss", 1e-3, 1.5, higher=False), _record("loss", 2e-3, 1.2, higher=False),  # lower is better
        _record("unplanned", 1e-3, 0.7), _record("unplanned", 3e-3, 0.8),
    ]
    planned = {m: [1e-3, 3e-3] for m in ("up", "inside", "capped", "failed", "one", "tied", "flat", "loss")}
    planned["down"] = [1e-4, 1e-3]
    runs = {r.method: r.learning_rate for r in edge_runs(records, planned, limit=2)}
    assert runs == {"up": 9e-3, "down": 2e-5, "loss": 4e-3, "flat": 9e-3}
    assert [r.experiment for r in edge_runs(records, {"up": [1e-3, 3e-3]}, 2)] == ["up lr=0.009"]
    assert edge_runs(records, planned, limit=0) == []


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_failed_run_is_recorded_once_with_its_reason(trainable_llama, tmp_path):
    out = tmp_path / "bench"
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "1", "--run-timeout", "0.5")
    assert res.exit_code == 0, res.output
    (record,) = read_jsonl(out / "records.jsonl")
    assert record.score is None and "no result after" in record.error
    res = _bench(trainable_llama, out, "--methods", "lora", "--learning-rates", "1", "--run-timeout", "0.5")
    assert "1 already finished, 0 to go" in res.output and len(read_jsonl(out / "records.jsonl")) == 1


def test_the_results_page_is_built_from_the_results_with_its_plots(tmp_path, monkeypatch):
    page = benchmark_script("results_page")
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
    while it is below 80%, shows a run at another rate in a row of its own, and counts the methods
    that got there at any rate."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    script = benchmark_script("sst2_epochs")
    for name, method, lr, accuracy in [("a", "lora", 1e-3, 0.78), ("b", "lora", 3e-3, 0.79), ("c", "ia3", 1e-2, 0.76),
                                       ("d", "vera", 1e-2, None)]:
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "method": method, "learning_rate": lr, "options": {"epochs": 3},
            "metrics": {"accuracy": accuracy} if accuracy is not None else {}}))
    monkeypatch.setattr(script, "BENCH", tmp_path)
    best = script.best_runs()
    assert best == {"lora": {"learning_rate": 3e-3, "accuracy": 0.79, "epochs": 3},
                    "ia3": {"learning_rate": 1e-2, "accuracy": 0.76, "epochs": 3}}
    # a file written before runs were keyed by their rate reads the same
    results = script._keyed({"5ep/lora": {"learning_rate": 3e-3, "metrics": {"accuracy": 0.805}},
                             "5ep/ia3": {"learning_rate": 1e-2, "metrics": {"accuracy": 0.77}},
                             "8ep/ia3@0.01": {"learning_rate": 1e-2, "metrics": {"accuracy": 0.79}}})
    assert sorted(results) == ["5ep/ia3@0.01", "5ep/lora@0.003", "8ep/ia3@0.01"]
    assert script.best_accuracy("lora", best, results, below=8) == 0.805  # reached: no 8-epoch run
    assert script.best_accuracy("ia3", best, results, below=8) == 0.77
    table = script.markdown(best, results)
    assert "| lora | 0.003 | 79.0% | 80.5% |  | yes |" in table
    assert "| ia3 | 0.01 | 76.0% | 77.0% | 79.0% | NO |" in table
    assert "1 of the 2 methods below 80% in the bench reach it with longer training " in table
    # a lower rate for the longer run, which the bench did not try: a row of its own, and it counts
    results[script._key(8, "ia3", 5e-3)] = {"learning_rate": 5e-3, "metrics": {"accuracy": 0.85}}
    assert script.best_accuracy("ia3", best, results) == 0.85
    table = script.markdown(best, results)
    assert "| ia3 | 0.005 |  |  | 85.0% | yes |" in table and "| ia3 | 0.01 | 76.0% | 77.0% | 79.0% | NO |" in table
    assert "2 of the 2 methods below 80% in the bench reach it with longer training " in table


def test_seed_noise_reruns_a_bench_with_its_training_options_and_measures_the_floor(monkeypatch, tmp_path, capsys):
    """benchmarks/seed_noise.py trains with the bench's own options (its bench.json), only the training
    seed changed, and reports how far the best run at seed 0 lands below the best at each fresh seed."""
    from autopeft.choose.bench import BenchSpec

    script = benchmark_script("seed_noise")
    bench = BenchSpec(benchmark="x/y", data="d.tsv", task="seq-cls", options={"model": "m", "epochs": 2},
                      learning_rates=2)
    # the bench's data sample and split (its seed, 0 by default), another training seed
    assert script.seeded(bench, 3).options == {"model": "m", "epochs": 2, "seed": 3, "data_seed": 0}
    given = bench.model_copy(update={"options": {"seed": 5}})
    assert script.seeded(given, 1).options == {"seed": 1, "data_seed": 5}
    monkeypatch.setattr("sys.argv", ["seed_noise.py", "--bench", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert exit_info.value.code == 2 and "not a bench directory" in capsys.readouterr().err
    lines = script._report("x/y", "accuracy", {"a": [0.80, 0.78, 0.80], "b": [0.79, 0.79, 0.77]}, "cmd")
    text = "\n".join(lines)
    assert "| a | 80.0 | 78.0 | 80.0 | 79.3 | 1.15 |" in text
    # seed 1: b leads a by 1 point; seed 2: a leads
    assert "lands 0.50 points below the best of these at a fresh seed" in text and "1.00, 0.00" in text
    # a has the best mean (79.3); the seeds' best are 80, 79 and 80, so a lands 0.33 below on average
    assert "the best on average (a) lands 0.33 points below the best run of a seed, on average over seeds 0 to 2" in text


def test_the_gsm8k_tasks_label_a_problem_by_its_solution():
    script = benchmark_script("derive_gsm8k")
    assert script.steps("a = 1\nb = 2\n\nc = 3\n#### 3") == "short"  # blank lines and the answer do not count
    assert script.steps("a\nb\nc\nd\n#### 4") == "long"
    assert script.division("She sold 48/2 = <<48/2=24>>24 clips.\n#### 24") == "yes"
    # a slash outside the calculations (a fraction in the prose, a date) is not a division
    assert script.division("1/2 of them: 10 * 2 = <<10*2=20>>20\n#### 20") == "no"


def test_leave_one_task_out_sets_each_classification_task_beside_its_seed_noise_floor(tmp_path):
    """The results page reads each task's floor and per-configuration means from seed_noise's report,
    puts the floor beside the choice's regret at every budget, and judges the choices that were
    retrained by their mean over the seeds; a causal-LM task, or one with no report, is left out."""
    import json

    from autopeft.choose.replay import SubsetEvaluation

    script = benchmark_script("leave_one_task_out")
    scores = {"full": [0.80, 0.82, 0.84, 0.82], "dora": [0.83, 0.75, 0.61, 0.81]}
    (tmp_path / "seed_noise-a.json").write_text(json.dumps({"benchmark": "x/a", "scores": scores, "steady_floor": 0.0125}))
    (tmp_path / "seed_noise-old.json").write_text(json.dumps({"benchmark": "x/old", "scores": scores}))
    noise = script._seed_noise(tmp_path)
    assert list(noise) == ["x/a"] and noise["x/a"].floor == 1.25
    assert noise["x/a"].means == pytest.approx({"full": 82.0, "dora": 75.0})

    def judged(benchmark, task, regret, picks):
        return SubsetEvaluation(benchmark=benchmark, task=task, metric="accuracy", subsets=40, share=2 / 3,
                                regret=regret, regret_of_spread=0.1, stderr_of_spread=0.01, baselines={},
                                baseline_stderr={}, picks=picks)

    # at 0.1, 30 subsets chose dora (7 below full on average over the seeds), 10 chose full, none else
    subsets = {0.1: [judged("x/a", "seq-cls", 3.0, {"dora": 30, "full": 10}), judged("x/b", "seq-cls", 9.0, {}),
                     judged("x/a-lm", "causal-lm", 1.0, {})],
               0.2: [judged("x/a", "seq-cls", 2.0, {"vera": 40}), judged("x/b", "seq-cls", 8.0, {}),
                     judged("x/a-lm", "causal-lm", 1.0, {})]}
    table = "\n".join(script._noise_table(subsets, {**noise, "x/a-lm": noise["x/a"]}))
    assert "| x/a | 1.25 | 3.00 | 2.00 |" in table and "x/b" not in table and "x/a-lm" not in table
    assert "| x/a | full: 82.0 | 5.25 (40 of 40) | - (0 of 40) |" in table
    assert script._noise_table(subsets, {}) == []


def test_leave_one_source_out_puts_each_floor_beside_the_regret_in_the_regrets_units_and_counts_those_within(
        tmp_path):
    """An accuracy task's floor is in points; a task judged by its spread (a loss, SVAMP's answer number)
    gets its floor as a share of that spread, so that "floor plus 5% of the spread" compares like with
    like; the summary counts the tasks whose choice lands within its floor plus the issue's margin."""
    from types import SimpleNamespace

    from autopeft.choose.replay import SourceChoice

    script = benchmark_script("source_folds")

    def choice(benchmark, metric, regret, regret_of_spread, spread):
        return SourceChoice(benchmark=benchmark, source=benchmark, task="seq-cls", metric=metric, way="0.15", subset=0,
                            chosen="lora lr=0.001", regret=regret, regret_of_spread=regret_of_spread, spread=spread,
                            within=False)

    # x/acc: regret 1.5 points against a 0.6-point floor (within 0.6 + 1); x/num: the best-to-worst spread is
    # 0.20 of the metric (regret 0.05 = 25% of it) and the floor 2 points = 10% of it, so 25% > 10% + 5%;
    # x/best: every choice the best (regret 0), its floor still 1 point = 5% of a 0.20 spread
    rows = [choice("x/acc", "test_accuracy", 1.5, 0.1, 0.15), choice("x/num", "test_final_number", 0.05, 0.25, 0.2),
            choice("x/none", "test_accuracy", 9.0, 0.5, 0.18), choice("x/best", "test_final_number", 0.0, 0.0, 0.2)]
    noise = {"x/acc": SimpleNamespace(floor=0.6), "x/num": SimpleNamespace(floor=2.0),
             "x/best": SimpleNamespace(floor=1.0)}  # seed_noise's floors, in points
    table = "\n".join(script._task_table(rows, noise))
    assert "| x/acc | x/acc | test_accuracy | 0.60 |" in table
    assert "| x/num | x/num | test_final_number | 10.00% |" in table and "| 25.00% |" in table
    assert "| x/none | x/none | test_accuracy | - |" in table
    assert "| x/best | x/best | test_final_number | 5.00% |" in table
    assert ("within its floor plus 1 point (plus 5% of the spread for other metrics) on 2 of 3 tasks with a floor"
            in table)

