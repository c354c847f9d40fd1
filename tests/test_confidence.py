"""What the profiles already know about a job, the spread over seeds, and how sure a choice is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from autopeft.profiles import CurvePoint, ProfileRecord, configuration_key, data_source
from autopeft.choose.ranking import Candidate, Recommender, similar_data

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ROOT = Path(__file__).resolve().parents[1]


def _run(bench, method, score, *, lr=1e-3, seed=None, model="m", fingerprint=None, stats=None, dataset="d",
         trainable=1000, task="causal-lm"):
    curve = [CurvePoint(step=s, train_loss=3.0 - 0.1 * s) for s in range(1, 11)]
    return ProfileRecord(benchmark=bench, experiment=f"{method} lr={lr:g}" + (f" seed={seed}" if seed else ""),
                         task=task, model=model, dataset=dataset, method=method, learning_rate=lr, total_steps=10,
                         trainable_params=trainable, total_params=10**6, curve=curve, metric="accuracy", score=score,
                         source="test", seed=seed, fingerprint=fingerprint, data_stats=stats)


METHODS = ("lora", "dora", "ia3", "vera")


def _training_benches():
    """Two benches where LoRA wins and VeRA trails: the static prior's lesson."""
    out = []
    for bench in ("a", "b"):
        for i, method in enumerate(METHODS):
            out.append(_run(bench, method, 0.9 - 0.05 * i, dataset=bench, trainable=1000 * (i + 1)))
    return out


def _static(rec):
    return rec.predict([Candidate(name=m, method=m, task="causal-lm", trainable_params=1000 * (i + 1),
                                  total_params=10**6) for i, m in enumerate(METHODS)])


def test_runs_of_this_model_on_this_data_move_the_static_ranking_toward_their_winner():
    same = [_run("mine", m, s, fingerprint="f" * 64, dataset="mine")
            for m, s in (("lora", 0.60), ("dora", 0.62), ("ia3", 0.64), ("vera", 0.90))]
    rec = Recommender().fit(_training_benches() + same)
    before = _static(rec)
    assert rec.match("m", "causal-lm", fingerprint="0" * 64) is None  # other data: nothing matched
    evidence = rec.match("m", "causal-lm", fingerprint="f" * 64)
    assert evidence.kind == "same" and evidence.benchmarks == ["mine"] and evidence.runs == 4
    after = _static(rec)
    assert after[3] - after[0] > before[3] - before[0]  # VeRA, the winner there, gains on LoRA
    assert int(np.argmax(after)) == 3
    assert "4 stored runs of this model on your data" in evidence.sentence()
    # another model's runs on the same data are not evidence about this one
    assert rec.match("other-model", "causal-lm", fingerprint="f" * 64) is None


def test_data_like_yours_is_the_same_kind_of_task_alike_in_size_length_and_labels():
    stats = {"examples": 900, "mean_tokens": 40, "labels": 2}
    record = _run("x", "lora", 0.8, task="seq-cls", stats={"examples": 1200, "mean_tokens": 30, "labels": 2})
    assert similar_data(record, "seq-cls", stats)
    assert similar_data(record, "token-cls", stats)  # of the kind of sequence classification
    assert not similar_data(record, "causal-lm", stats)
    assert not similar_data(record, "seq-cls", {**stats, "labels": 6})
    assert not similar_data(record, "seq-cls", {**stats, "mean_tokens": 100})
    assert not similar_data(record, "seq-cls", {**stats, "examples": 10000})
    assert not similar_data(record.model_copy(update={"data_stats": None}), "seq-cls", stats)


def test_an_erratic_configuration_stands_below_a_steady_one_of_the_same_mean():
    """DoRA at 3e-3 on SmolLM2 SST-2 won at seed 0 and collapsed at seed 3: the mean over seeds, less
    a share of their spread, is what a configuration stands by."""
    erratic = [_run("mine", "dora", s, seed=k or None, fingerprint="f" * 64) for k, s in enumerate((0.85, 0.65, 0.85, 0.65))]
    steady = [_run("mine", "lora", s, seed=k or None, fingerprint="f" * 64) for k, s in enumerate((0.74, 0.76, 0.75, 0.75))]
    others = [_run("mine", "ia3", 0.60, fingerprint="f" * 64), _run("mine", "vera", 0.55, fingerprint="f" * 64)]
    rec = Recommender().fit(_training_benches() + erratic + steady + others)
    group = {r.method: r for r in rec.groups_["mine"]}
    assert set(group) == set(METHODS)  # one record per configuration, whatever its seeds
    assert group["lora"].score > group["dora"].score
    assert group["dora"].curve == erratic[0].curve  # the seed-0 run's curve stays the pilot's
    evidence = rec.match("m", "causal-lm", fingerprint="f" * 64)
    assert evidence.runs == 10  # every stored run, reruns at other seeds included
    assert evidence.standing["lora"] > evidence.standing["dora"]
    predicted = _static(rec)
    assert predicted[0] > predicted[1]  # LoRA above DoRA
    # the reruns are one configuration: the key ignores the seed
    assert configuration_key(erratic[0]) == configuration_key(erratic[3])


def test_the_shipped_readme_job_bench_weighs_in_for_its_own_data():
    from autopeft.profiles import load_records

    records = load_records(store=False)
    bench = [r for r in records if r.benchmark == "autopeft/instructions-smollm2-135m"]
    fingerprint = bench[0].fingerprint
    import hashlib

    assert fingerprint == hashlib.sha256((EXAMPLES / "instructions.jsonl").read_bytes()).hexdigest()
    evidence = Recommender().fit(records).match("smollm2-135m", "causal-lm", fingerprint=fingerprint)
    assert evidence.kind == "same" and evidence.benchmarks == ["autopeft/instructions-smollm2-135m"]
    # DoRA 3e-3 on SmolLM2 SST-2 is stored at four seeds
    seeds = [r for r in records if r.benchmark == "autopeft/sst2-1k-1ep-smollm2-135m" and r.method == "dora"
             and r.learning_rate == 0.003]
    assert sorted(r.seed or 0 for r in seeds) == [0, 1, 2, 3]


def _rate_benches(names, model="m", task="seq-cls", steps=10):
    """Benches where every method did best at three times its default learning rate."""
    from autopeft.methods.registry import get_methods

    out = []
    for bench in names:
        for i, method in enumerate(("lora", "ia3", "vera")):
            default = get_methods()[method].search_space.default_learning_rate(task)
            for lr, score in ((default, 0.6), (3 * default, 0.8)):
                run = _run(bench, method, score - 0.01 * i, lr=lr, model=model, task=task, dataset=bench)
                out.append(run.model_copy(update={"total_steps": steps}))
    return out


def test_benches_of_jobs_like_this_one_place_the_pilots_learning_rates():
    """On short runs of a small encoder most methods score best well above their range: where three or
    more stored benches of the model, on the kind of task and about the job's length, say so, the pilots
    try there first."""
    from autopeft.methods.registry import default_learning_rate
    from autopeft.methods.registry import get_methods

    rec = Recommender().fit(_rate_benches(["a", "b", "c"]))
    rates = rec.rates("m", "seq-cls", 15, default_rate=default_learning_rate)
    assert rates.benchmarks == ["a", "b", "c"]
    lora = get_methods()["lora"].search_space
    assert rates.rate("lora", lora.default_learning_rate("seq-cls")) == pytest.approx(3e-3)
    assert rates.rate("dora", 0.003) == pytest.approx(0.009)  # never benched: the methods' median shift
    assert "3 stored benches" in rates.sentence() and "3x the methods' defaults" in rates.sentence()
    assert lora.learning_rate_grid("seq-cls", 2, prefer=3e-3) == [3e-3, 1e-3]  # then the default
    assert lora.learning_rate_grid("seq-cls", 2, prefer=1.2e-3) == [1.2e-3, 3e-4]  # the default too near it
    assert lora.learning_rate_grid("seq-cls", 2) == [1e-3, 3e-4]
    assert rec.rates("m", "token-cls", 15, default_rate=default_learning_rate) is not None  # a head over an encoder too
    assert rec.rates("m", "seq-cls", 40, default_rate=default_learning_rate) is None  # a run four times as long
    assert rec.rates("m", "causal-lm", 10, default_rate=default_learning_rate) is None
    assert rec.rates("other", "seq-cls", 10, default_rate=default_learning_rate) is None
    two = Recommender().fit(_rate_benches(["a", "b"]) + _training_benches())
    assert two.rates("m", "seq-cls", 10, default_rate=default_learning_rate) is None  # two benches are too few


def test_an_evaluation_as_tune_chooses_keeps_each_methods_runs_at_the_rates_its_pilots_would_try():
    from autopeft.choose.replay import pilot_grid

    runs = [_run("job", "lora", 0.5 + lr, lr=lr, task="seq-cls") for lr in (1e-4, 3e-4, 1e-3, 3e-3, 9e-3)]
    runs += [_run("job", "a-plugin-not-installed", 0.5, lr=lr, task="seq-cls") for lr in (1e-3, 1e-2)]
    plain = Recommender().fit(_training_benches())  # no benches like the job: the method's own range
    assert [(r.method, r.learning_rate) for r in pilot_grid(runs, plain)] == [
        ("lora", 3e-4), ("lora", 1e-3), ("a-plugin-not-installed", 1e-3), ("a-plugin-not-installed", 1e-2)]
    placed = Recommender().fit(_rate_benches(["a", "b", "c"]))  # where lora did best at 3x its default
    assert [r.learning_rate for r in pilot_grid(runs, placed) if r.method == "lora"] == [1e-3, 3e-3]


def test_recommend_pilots_first_where_runs_like_this_one_did_best(trainable_llama, monkeypatch, tmp_path):
    from autopeft.choose import pilots
    from autopeft.cli import main
    from autopeft.methods.registry import get_methods

    tried = []

    def halving(configs, base, **kwargs):  # record what would be piloted; pilot nothing
        tried.extend((c.method, c.learning_rate) for c in configs)
        return []

    monkeypatch.setattr(pilots, "successive_halving", halving)
    stored = tmp_path / "stored.jsonl"
    stored.write_text("".join(r.model_dump_json() + "\n" for r in _rate_benches(
        ["a", "b", "c"], model=str(trainable_llama), task="causal-lm", steps=8)))
    res = CliRunner().invoke(main, [
        "recommend", str(EXAMPLES / "instructions.jsonl"), "--model", str(trainable_llama), "--max-length", "64",
        "--max-examples", "40", "--batch-size", "4", "--epochs", "1", "--methods", "lora,ia3",
        "--profiles", str(stored), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["learning_rates_from"] == ["a", "b", "c"]
    assert "learning rates from 3 stored benches of this model" in rec["explanation"]
    default = get_methods()["lora"].search_space.default_learning_rate("causal-lm")
    assert [lr for m, lr in tried if m == "lora"] == [pytest.approx(3 * default), pytest.approx(default)]
    # no pilot ran: the fine-tune is given the rate those runs did best at
    chosen_default = get_methods()[rec["chosen"]].search_space.default_learning_rate("causal-lm")
    assert rec["learning_rate"] == pytest.approx(3 * chosen_default)


def test_a_data_source_is_the_data_set_however_it_was_sampled_or_relabelled():
    def source(dataset):
        return data_source(_run("x", "lora", 0.5, dataset=dataset))

    assert source("../shared/data/sst2/train.tsv") == "sst2"
    assert source("sst2 train (2,000 sampled), dev 872") == "sst2"
    assert source("benchmarks/results/derived/gsm8k-division-train.jsonl") == "gsm8k"
    assert source("/work/wt/shared/data/trec/train.jsonl") == "trec"
    assert source("examples/instructions.jsonl") == "instructions"


def test_the_stated_probability_is_a_probability_and_low_ones_say_what_would_raise_them():
    from autopeft.choose.confidence import advice, features, fit, probability, shipped_model

    assert shipped_model()["features"] == ["margin", "piloted", "evidence", "log_candidates"]
    for x in ([0, 0, 0, 1.4], [1, 1, 1, 2], [0.05, 0.5, 0.5, 1.0]):
        assert 0.0 <= probability(x) <= 1.0
    assert features(-0.2, 1, None, 27)[0] == 0.0 and features(3.0, 1, "same", 27)[:3] == [1.0, 1.0, 1.0]
    assert "--pilot-budget" in advice(0.2, "pilot", 3, 27) and "3 of 27" in advice(0.2, "pilot", 3, 27)
    assert "pilots" in advice(0.2, "static", 0, 27)
    assert advice(0.8, "pilot", 27, 27) is None
    # fitted: a feature that tells hits from misses gets a weight that says so
    rows = [[m, 1.0, 0.0, 1.4] for m in np.linspace(0, 1, 40)]
    model = fit(rows, [m > 0.5 for m, *_ in rows])
    assert probability([0.9, 1, 0, 1.4], model) > 0.5 > probability([0.1, 1, 0, 1.4], model)


def test_leave_one_source_out_judges_choices_by_the_mean_over_seeds():
    from autopeft.choose.replay import leave_one_source_out

    def bench(name, dataset, seeds=False):
        out = []
        for i, method in enumerate(METHODS):
            losses = list(np.linspace(3.0, 1.0 + 0.1 * i, 20))
            r = _run(name, method, 0.9 - 0.05 * i, dataset=dataset)
            out.append(r.model_copy(update={"curve": [CurvePoint(step=k + 1, train_loss=v) for k, v in enumerate(losses)],
                                            "total_steps": 20}))
        if seeds:  # LoRA, the best at seed 0, is a fluke: its mean is the worst
            out += [_run(name, "lora", 0.3, seed=k, dataset=dataset) for k in (1, 2, 3)]
        return out

    records = bench("a", "../shared/data/one/train.jsonl", seeds=True) + bench(
        "a2", "../shared/data/one/test.jsonl") + bench("b", "../shared/data/two/x.jsonl") + bench(
        "c", "../shared/data/three/x.jsonl")
    rows = leave_one_source_out(records, (0.3,), subsets=0)
    assert {r.benchmark for r in rows} == {"a", "a2", "b", "c"}  # reruns at other seeds are no candidates
    lora_on_a = next(r for r in rows if r.benchmark == "a" and r.way == "always_lora")
    assert lora_on_a.regret == pytest.approx(100 * (0.85 - 0.45))  # its mean (0.9, 0.3, 0.3, 0.3), against DoRA's 0.85
    assert not lora_on_a.within
    piloted = [r for r in rows if r.way == "0.3"]
    assert piloted and all(len(r.features) == 4 and r.features[1] == 1.0 for r in piloted)


def _stub_pilots(monkeypatch):
    import autopeft.choose.recommend as recommend_module
    from autopeft.choose.recommend import Measured

    def pilots(feasible, *args, **kwargs):  # what pilot processes would report, without running any
        return {row.method: Measured(
            status="ok", learning_rate=1e-3, pilot_steps=6, pilot_loss=2.0, seconds_per_step=0.1,
            estimated_full_seconds=1.0, peak_memory_bytes=row.estimated.peak_memory_bytes,
            curve=[CurvePoint(step=s, train_loss=3.0 - s / (4 + i)) for s in range(1, 7)])
            for i, row in enumerate(feasible)}, None

    monkeypatch.setattr(recommend_module, "_run_pilots", pilots)


def test_recommend_states_its_confidence_and_the_evidence_in_json_table_and_explanation(
        trainable_llama, monkeypatch, tmp_path):
    import hashlib

    from autopeft.cli import main

    _stub_pilots(monkeypatch)
    fingerprint = hashlib.sha256((EXAMPLES / "instructions.jsonl").read_bytes()).hexdigest()
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(_run("earlier", m, s, model=str(trainable_llama), fingerprint=fingerprint)
                            .model_dump_json() + "\n" for m, s in (("lora", 0.5), ("ia3", 0.6), ("vera", 0.9))))
    args = ["recommend", str(EXAMPLES / "instructions.jsonl"), "--model", str(trainable_llama), "--max-length", "64",
            "--max-examples", "40", "--batch-size", "4", "--epochs", "1", "--methods", "lora,ia3,vera",
            "--profiles", str(mine)]
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert 0.0 <= rec["confidence"] <= 1.0
    assert rec["evidence"] == {"kind": "same", "benchmarks": ["earlier"], "runs": 3}
    assert "3 stored runs of this model on your data weighed in" in rec["explanation"]
    assert f"about {rec['confidence']:.0%}" in rec["explanation"]
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0, table.output
    assert f"confidence: {rec['confidence']:.0%} that {rec['chosen']} lands within one point" in table.output


def test_run_json_and_the_report_carry_the_confidence(tmp_path):
    from autopeft.training.outputs import RunRecord, write_report

    kept = ROOT / "benchmarks" / "results" / "seed_noise" / "sst2-smollm2" / "runs" / "lora-lr-0.001-seed-1.json"
    record = RunRecord.model_validate_json(kept.read_text())
    from autopeft.profiles import record_from_run

    profile = record_from_run(record)  # what the store keeps of a run: its seed and its data
    assert profile.seed == 1 and profile.fingerprint == record.data["fingerprint"]
    assert profile.data_stats == {"examples": 1000.0, "mean_tokens": 11.204, "labels": 2.0}
    record.recommendation = {"chosen": "lora", "explanation": "lora is recommended: why.", "confidence": 0.42,
                             "candidates": [], "pilot_seconds": 1.0}
    record = RunRecord.model_validate_json(record.model_dump_json())  # as run.json holds it
    assert record.recommendation["confidence"] == 0.42
    write_report(tmp_path, record)
    assert "Confidence: 42% that lora lands within one point of the best candidate" in (tmp_path / "report.md").read_text()
