"""The recommender, profile records, the PEFT-results import and replay, on synthetic data."""

from __future__ import annotations

import re

import numpy as np
import pytest

from autopeft.errors import BadInputError
from autopeft.profiles import CurvePoint, ProfileRecord, append, import_peft_results, load_records, read_jsonl
from autopeft.choose.ranking import Candidate, Objective, Recommender, pareto_front


def _record(bench, name, final, losses, trainable=1000, method=None, dataset="d"):
    curve = [CurvePoint(step=10 * (i + 1), train_loss=v) for i, v in enumerate(losses)]
    return ProfileRecord(benchmark=bench, experiment=name, task="causal-lm", model="m", dataset=dataset,
                         method=method or name, total_steps=10 * len(losses), trainable_params=trainable,
                         total_params=10**6, curve=curve, metric="accuracy", score=final, source="test")


def _benchmark(bench, n=6, seed=0):
    """Runs whose final score follows their late loss: what the recommender must learn."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        end = 1.0 + 0.1 * i + rng.normal(0, 0.01)
        losses = list(np.linspace(3.0, end, 20))
        out.append(_record(bench, f"m{i}", 0.9 - 0.05 * i, losses))
    return out


def test_recommender_learns_that_lower_pilot_loss_finishes_better():
    rec = Recommender().fit(_benchmark("a") + _benchmark("b", seed=1) + _benchmark("c", seed=2))
    test = [Candidate.from_record(r, 0.3) for r in _benchmark("d", seed=3)]
    assert rec.mode(test) == "pilot"
    predicted = rec.predict(test)
    assert int(np.argmax(predicted)) == 0  # m0 has the lowest loss and the best score


def _rates(bench, seed, plan):
    """Each of 4 methods at the learning rates of ``plan``, (rate, its pilot's lead, its final cost) each."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(4):
        for lr, lead, cost in plan:
            end = 1.0 + 0.1 * i - lead + rng.normal(0, 0.005)
            record = _record(bench, f"m{i} lr={lr:g}", 0.9 - 0.05 * i - cost, list(np.linspace(3.0, end, 20)),
                             method=f"m{i}")
            out.append(record.model_copy(update={"learning_rate": lr}))
    return out


def _two_rates(bench, seed):
    """Each method at two learning rates: the larger one's pilot loss is lower, yet it finishes worse."""
    return _rates(bench, seed, ((1e-3, 0.0, 0.0), (3e-3, 0.04, 0.06)))


def test_recommender_learns_to_discount_the_pilot_lead_of_a_methods_larger_learning_rate():
    rec = Recommender().fit(_two_rates("a", 0) + _two_rates("b", 1) + _two_rates("c", 2))
    test = [Candidate.from_record(r, 0.3) for r in _two_rates("d", 3)]
    losses = [c.pilot[-1].train_loss for c in test]
    assert test[int(np.argmin(losses))].name == "m0 lr=0.003"  # the pilot alone would take the larger rate
    assert test[int(np.argmax(rec.predict(test)))].name == "m0 lr=0.001"


def test_what_a_larger_rate_predicts_is_learned_per_kind_of_task_and_not_carried_to_another():
    rec = Recommender().fit(_two_rates("a", 0) + _two_rates("b", 1) + _two_rates("c", 2))
    causal = [Candidate.from_record(r, 0.3) for r in _two_rates("d", 3)]
    # the same pilots on a classification task, which no profile taught it anything about
    classification = [c.model_copy(update={"task": "seq-cls"}) for c in causal]
    assert causal[int(np.argmax(rec.predict(causal)))].name == "m0 lr=0.001"
    assert classification[int(np.argmax(rec.predict(classification)))].name == "m0 lr=0.003"  # the lower loss


def _three_rates(bench, seed):
    """Each method at three learning rates: the larger the rate, the lower its pilot loss, but the best
    final score is the middle rate's; the largest, past the method's range, leads and falls back."""
    return _rates(bench, seed, ((1e-3, 0.0, 0.05), (3e-3, 0.04, 0.0), (1e-2, 0.08, 0.03)))


def test_recommender_learns_that_a_larger_rate_helps_only_up_to_the_middle_of_the_methods_range():
    rec = Recommender().fit(_three_rates("a", 0) + _three_rates("b", 1) + _three_rates("c", 2))
    test = [Candidate.from_record(r, 0.3) for r in _three_rates("d", 3)]
    losses = [c.pilot[-1].train_loss for c in test]
    assert test[int(np.argmin(losses))].name == "m0 lr=0.01"
    # a single slope would rank the three rates in order, one way or the other: never the middle first
    assert test[int(np.argmax(rec.predict(test)))].name == "m0 lr=0.003"


def _risky_rates(bench, seed):
    """Each method at two rates: the larger leads its pilot and ends a point above the smaller, except
    on one method, where it ends 29 points below it."""
    runs = _rates(bench, seed, ((1e-3, 0.0, 0.0), (3e-3, 0.04, -0.01)))
    return [r.model_copy(update={"score": r.score - 0.3}) if r.experiment == "m2 lr=0.003" else r for r in runs]


def test_recommender_weighs_how_far_a_run_falls_not_only_how_many_rivals_it_falls_behind():
    rec = Recommender().fit(_risky_rates("a", 0) + _risky_rates("b", 1) + _risky_rates("c", 2))
    test = [Candidate.from_record(r, 0.3) for r in _risky_rates("d", 3)]
    # by rank, the larger rate wins three methods of four; by points, it loses 6.5 on average
    assert test[int(np.argmax(rec.predict(test)))].name == "m0 lr=0.001"


def test_the_target_keeps_distances_and_a_few_diverged_runs_do_not_squeeze_the_rest():
    from autopeft.choose.ranking import _standing

    # one run in twelve diverged, as on the GSM8K bench, where its loss stretches the spread sevenfold
    losses = np.array([1.20, 1.22, 1.25, 1.30, 1.40, 1.50, 1.60, 1.70, 1.80, 1.90, 2.00, 6.7])
    standing = _standing(-losses)
    assert standing[0] == 1.0 and standing[-1] == 0.0 and np.all(np.diff(standing) <= 0)
    # 0.1 of loss costs the same standing wherever it falls among the runs that did not diverge
    assert np.allclose(np.diff(standing[3:10]), standing[4] - standing[3])
    assert standing[0] - standing[1] == pytest.approx((standing[3] - standing[4]) / 5)  # 0.02 of loss, a fifth
    assert np.median(standing[:-1]) < 0.7  # a min-max share puts every run that did not diverge above 0.85


def test_replay_takes_one_methods_learning_rates_as_its_configurations_as_tune_does():
    from autopeft.choose.halving import best_of_each
    from autopeft.choose.replay import _configurations

    runs = _two_rates("d", 3)
    key = _configurations(runs)
    assert len(set(key.values())) == 4 and key["m0 lr=0.001"] == key["m0 lr=0.003"]
    # one ranking keeps each method's best-scored rate, best method first
    kept = best_of_each(runs, [r.learning_rate * (1 + i) for i, r in enumerate(runs)], lambda r: key[r.experiment])
    assert [r.experiment for r in kept.values()] == ["m3 lr=0.003", "m2 lr=0.003", "m1 lr=0.003", "m0 lr=0.003"]
    # runs alike in their rate too differ in something the records do not hold: each is its own
    twins = [runs[0].model_copy(update={"experiment": f"seed {i}"}) for i in range(2)]
    assert len(set(_configurations(twins).values())) == 2


def test_one_benchmark_is_too_few_to_learn_from_and_the_mode_says_so():
    rec = Recommender().fit(_benchmark("only"))
    test = [Candidate.from_record(r, 0.3) for r in _benchmark("d", seed=3)]
    assert rec.mode(test) == "pilot-loss"
    assert int(np.argmax(rec.predict(test))) == 0
    with pytest.raises(RuntimeError, match="fit"):
        Recommender().predict(test)


def test_without_pilots_the_static_model_ranks():
    rec = Recommender().fit(_benchmark("a") + _benchmark("b", seed=1))
    test = [Candidate.from_record(r, None) for r in _benchmark("d", seed=3)]
    assert rec.mode(test) == "static"
    assert rec.predict(test).shape == (6,)


def test_pilots_ending_within_their_noise_are_called_too_close():
    """Two pilots of one run see the same batches, so their gap is judged step by step: a steady small
    gap is real, a gap the batches' ups and downs swamp is not, and the explanation says so."""
    from autopeft.profiles import end_loss_gap
    from autopeft.choose.explain import too_close_to_call

    rng = np.random.default_rng(0)
    batches = rng.normal(0, 0.2, 40)  # the same batch noise in both pilots

    def pilot(offset, wiggle=0.0):
        losses = 1.0 + batches + offset + wiggle * (-1.0) ** np.arange(40)
        return [CurvePoint(step=i + 1, train_loss=float(v)) for i, v in enumerate(losses)]

    chosen = Candidate(name="a", method="loha", pilot=pilot(0.0))
    steady = Candidate(name="b", method="lora", pilot=pilot(0.05))
    gap, error = end_loss_gap(chosen.pilot, steady.pilot)
    assert gap == pytest.approx(0.05) and error < 1e-9
    assert too_close_to_call(chosen, steady) is None
    noisy = Candidate(name="c", method="vera", pilot=pilot(0.02, wiggle=0.2))  # its own ups and downs
    clause = too_close_to_call(chosen, noisy)
    assert clause.startswith("its pilot loss and vera's differ by") and "--pilot-budget" in clause
    shorter = Candidate(name="d", method="ia3", pilot=pilot(0.0)[:20])
    assert end_loss_gap(chosen.pilot, shorter.pilot) is None  # pilots of different lengths are not compared


def test_a_classification_choice_says_when_no_pilot_beat_the_label_frequencies():
    """A pilot ending at the loss of always answering with the label frequencies has learned nothing
    from the text yet: the explanation says the choice rests on how the methods began."""
    import math
    from types import SimpleNamespace

    from autopeft.data import PreparedData
    from autopeft.choose.explain import not_learned_yet

    prepared = SimpleNamespace(info=SimpleNamespace(task="seq-cls"), train={"labels": [0] * 55 + [1] * 45})
    prior = PreparedData.label_frequency_loss(prepared)
    assert prior == pytest.approx(-(0.55 * math.log(0.55) + 0.45 * math.log(0.45)))
    assert PreparedData.label_frequency_loss(SimpleNamespace(info=SimpleNamespace(task="causal-lm"), train={})) is None
    with_validation = SimpleNamespace(info=SimpleNamespace(task="seq-cls"), validation={"labels": [1, 0, 1, 1]})
    assert PreparedData.validation_majority(with_validation) == 0.75
    assert PreparedData.validation_majority(SimpleNamespace(info=SimpleNamespace(task="seq-cls"), validation=None)) is None

    def pilot(end):
        return [CurvePoint(step=i + 1, train_loss=0.70 + (end - 0.70) * i / 19) for i in range(20)]

    stuck = [Candidate(name=m, method=m, pilot=pilot(e)) for m, e in (("lora", 0.695), ("loha", 0.700))]
    clause = not_learned_yet(stuck, prior)
    assert clause.startswith("no pilot has yet learned more than the label frequencies") and "--pilot-budget" in clause
    learning = stuck + [Candidate(name="dora", method="dora", pilot=pilot(0.55))]
    assert not_learned_yet(learning, prior) is None
    assert not_learned_yet(stuck, None) is None  # not a classification task
    # said whichever way the pilots were ranked, beside what that ranking rests on
    from autopeft.choose.explain import explain

    stuck = [c.model_copy(update={"learning_rate": 1e-3}) for c in stuck]
    for mode, because in (("pilot", "the recommender predicts it will finish best"),
                          ("pilot-loss", "reached the lowest loss")):
        text = explain(stuck[0], None, stuck, None, [0, 1], mode, None, Objective(), {}, prior_loss=prior)
        assert because in text and "no pilot has yet learned more than the label frequencies" in text


def test_pareto_front_keeps_only_undominated_candidates():
    cands = [Candidate(name=n, method=n, peak_memory_bytes=m, seconds=1, adapter_bytes=1)
             for n, m in (("a", 10), ("b", 20), ("c", 30))]
    assert pareto_front(cands, [0.5, 0.9, 0.7]) == [True, True, False]  # c: more memory and worse than b


def test_objective_parsing():
    assert Objective.parse(None).quality == 1
    mix = Objective.parse("quality=3,memory=1")
    assert mix.quality == pytest.approx(0.75) and mix.memory == pytest.approx(0.25)
    for bad in ("accuracy", "quality=-1", "memory=x"):
        with pytest.raises(BadInputError, match="--objective"):
            Objective.parse(bad)


@pytest.fixture
def results_dir(tmp_path, write_peft_result):
    _peft_result = write_peft_result
    d = tmp_path / "Bench"
    d.mkdir()
    losses = lambda end: [2.0, 1.5, end, end - 0.1, end - 0.2, end - 0.3, end - 0.3, end - 0.3, end - 0.3, end - 0.3]
    _peft_result(d, "rank32", 0.40, 20e9, losses(1.2))
    _peft_result(d, "rank32-dora", 0.50, 24e9, losses(1.0))
    _peft_result(d, "default", 0.45, 18e9, losses(1.1), method_dir="ia3")
    return d


def test_import_of_peft_results_maps_methods_and_measurements(results_dir):
    records = {r.experiment: r for r in import_peft_results(results_dir)}
    dora = records["lora/rank32-dora"]
    assert dora.method == "dora" and records["ia3/default"].method == "ia3"
    assert dora.score == 0.5 and dora.peak_memory_bytes == 24e9 and dora.licence == "Apache-2.0"
    assert [p.step for p in dora.pilot(0.2)] == [250, 500]


def test_a_malformed_result_file_is_named(results_dir):
    (results_dir / "broken.json").write_text("{not json")
    with pytest.raises(BadInputError, match="broken.json"):
        import_peft_results(results_dir)


def _result(directory, experiment, final, curve, peft_config=None, optimizer="AdamW", status="success"):
    """A result file in the PEFT method-comparison layout with any metrics: ``final`` is the last
    entry's (test) scores, ``curve`` the ``valid`` scores logged every 250 steps."""
    import json

    metrics = [{"step": 250 * (i + 1), "train loss": 2.0 - 0.1 * i, **point} for i, point in enumerate(curve)]
    metrics.append({"step": 250 * len(curve), "train loss": 1.0, "forgetting": 0.1, **final})
    doc = {"run_info": {"experiment_name": experiment, "peft_config": peft_config, "train_config": {
        "model_id": "llama", "batch_size": 4, "max_steps": 250 * len(curve), "optimizer_type": optimizer,
        "optimizer_kwargs": {"lr": 1e-4}}},
        "train_info": {"status": status, "accelerator_memory_max": 1e9, "metrics": metrics}}
    path = directory / (experiment.replace("/", "--") + ".json")
    path.write_text(json.dumps(doc))
    return path


def test_a_lower_is_better_metric_is_read_with_its_direction(tmp_path):
    from autopeft.choose.replay import replay

    d = tmp_path / "Perplexity"
    d.mkdir()
    for name, loss in (("a", 1.5), ("b", 1.2), ("c", 1.9)):
        _result(d, f"lora/{name}", {"test loss": loss}, [{"valid loss": loss + 0.3 - 0.01 * i} for i in range(10)])
    records = {r.experiment: r for r in import_peft_results(d)}
    b = records["lora/b"]
    assert b.metric == "test_loss" and b.higher_is_better is False and b.score == 1.2 and b.quality() == -1.2
    assert b.curve[0].eval_score == pytest.approx(1.5) and b.curve[0].eval_loss == pytest.approx(1.5)
    assert replay(d, 0.3, records=[]).oracle == "lora/b"  # the lowest loss is the best run


def test_metric_directions_and_the_primary_of_several_test_metrics(tmp_path):
    from autopeft.profiles import metric_direction

    for name in ("accuracy", "exact match", "f1", "bleu", "rouge1", "rougeL", "dino_similarity", "pass@1"):
        assert metric_direction(name) is True, name
    for name in ("loss", "perplexity", "error rate", "wer", "cer", "drift"):
        assert metric_direction(name) is False, name
    assert metric_direction("foo") is None
    d = tmp_path / "Mixed"
    d.mkdir()
    # accuracy comes first in the preference order, whatever order the run lists its metrics in
    _result(d, "lora/x", {"test loss": 0.9, "test rougeL": 0.3, "test accuracy": 0.6}, [{"valid accuracy": 0.5}])
    _result(d, "ia3/y", {"test accuracy": 0.4, "test loss": 1.1}, [{"valid accuracy": 0.3}])
    _result(d, "vera/z", {}, [{"valid accuracy": 0.1}], status="failed")  # no score: the shared metric, as None
    records = {r.experiment: r for r in import_peft_results(d)}
    assert {r.metric for r in records.values()} == {"test_accuracy"}
    assert records["lora/x"].score == 0.6 and records["vera/z"].score is None
    _result(d, "ia3/y", {"test loss": 1.1}, [{"valid loss": 1.2}])  # now the only metric they share is the loss
    assert {r.metric for r in import_peft_results(d)} == {"test_loss"}


def test_a_metric_of_unknown_direction_is_one_line_naming_the_file_and_the_metric(tmp_path):
    d = tmp_path / "Odd"
    d.mkdir()
    _result(d, "lora/a", {"test accuracy": 0.5}, [{"valid accuracy": 0.4}])
    bad = _result(d, "lora/b", {"test foo": 0.5}, [{"valid foo": 0.4}])
    with pytest.raises(BadInputError) as caught:
        import_peft_results(d)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{bad}: metric 'test foo' has no known direction (known: ")


def test_a_peft_run_maps_to_its_autopeft_method_and_keeps_the_source_name(tmp_path):
    from autopeft.methods.adapter_config import method_for

    d = tmp_path / "MetaMathQA"
    d.mkdir()
    lora = {"peft_type": "LORA", "r": 32, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"],
            "use_dora": False, "use_rslora": False, "init_lora_weights": True}
    prompt = {"peft_type": "ADAPTION_PROMPT", "adapter_len": 10, "adapter_layers": 28}
    runs = {"lora/llama-3.2-3B-rank32": (lora, "AdamW"),
            "lora/llama-3.2-3B-rank32-dora": ({**lora, "use_dora": True}, "AdamW"),
            "lora/llama-3.2-3B-rank64-rslora": ({**lora, "use_rslora": True}, "AdamW"),
            "lora/llama-3.2-3B-rank32-lorafa": (lora, "lora-fa"), "lora/llama-3.2-3B-rank32-loraplus": (lora, "lora+"),
            "adaptionprompt/llama-3.2-3B-lr_0.0005": (prompt, "AdamW"),
            "full-finetuning/llama-3.2-3B-lr_0.00001": (None, "AdamW")}
    for experiment, (config, optimizer) in runs.items():
        _result(d, experiment, {"test accuracy": 0.4}, [{"valid accuracy": 0.3}], peft_config=config,
                optimizer=optimizer)
    records = {r.experiment: r for r in import_peft_results(d)}
    assert {e: r.method for e, r in records.items() if e.startswith("lora/")} == {
        "lora/llama-3.2-3B-rank32": "lora", "lora/llama-3.2-3B-rank32-dora": "dora",
        "lora/llama-3.2-3B-rank64-rslora": "rslora", "lora/llama-3.2-3B-rank32-lorafa": "lorafa",
        "lora/llama-3.2-3B-rank32-loraplus": "loraplus"}
    assert {r.source_method for e, r in records.items() if e.startswith("lora/")} == {"lora"}
    adaption = records["adaptionprompt/llama-3.2-3B-lr_0.0005"]
    # the plugin where one is installed, else PEFT's own type as a stand-in: never the source's spelling
    assert adaption.method == method_for(prompt).name and adaption.source_method == "adaptionprompt"
    full = records["full-finetuning/llama-3.2-3B-lr_0.00001"]
    assert (full.method, full.family, full.source_method) == ("full", "full", "full-finetuning")


def test_replay_names_each_pick_by_its_autopeft_method(results_dir):
    from autopeft.choose.replay import replay

    capped = replay(results_dir, 0.3, max_vram=int(21e9), records=[])
    assert (capped.chosen_method, capped.oracle_method) == ("ia3", "ia3")
    assert capped.baselines["lora_default"].method == "lora"


def test_replay_scores_the_choice_against_the_oracle_and_baselines(results_dir):
    from autopeft.choose.replay import replay

    free = replay(results_dir, 0.3, records=[])
    assert free.oracle == "lora/rank32-dora" and free.chosen == "lora/rank32-dora" and free.regret == 0
    capped = replay(results_dir, 0.3, max_vram=int(21e9), records=[])
    assert capped.feasible == 2 and capped.oracle == "ia3/default"
    assert capped.baselines["lora_default"].choice == "lora/rank32"
    assert capped.baselines["lora_default"].regret == pytest.approx(5.0)
    assert capped.compute_fraction == pytest.approx(0.3)


def test_replay_spends_its_budget_by_halving_and_the_longer_pilots_decide(tmp_path, write_peft_result):
    from autopeft.choose.replay import replay

    d = tmp_path / "Bench"
    d.mkdir()
    # nine runs of 20 logged points; the slow starter is behind at 10% of the run, ahead from 15%
    for i in range(8):
        write_peft_result(d, f"fast{i}", 0.40 - 0.01 * i, 20e9, [2.0 + 0.01 * i, 1.0 + 0.01 * i] + [0.9 + 0.01 * i] * 18)
    write_peft_result(d, "slow", 0.50, 20e9, [2.0, 1.2, 0.8, 0.7] + [0.6] * 16)
    halved = replay(d, 0.1, records=[])
    # half the budget each for two rungs: 9 pilots of 5%, then the best third, 3 pilots of 15%
    assert halved.rungs[0] == (9, pytest.approx(0.05)) and len(halved.rungs) == 2
    assert halved.rungs[1] == (3, pytest.approx(0.15))
    assert halved.compute_fraction <= 0.1 + 1e-9
    assert halved.chosen == "lora/slow" and halved.regret == 0
    assert halved.baselines["lowest_pilot_loss"].choice == "lora/fast0"  # a flat pilot of 10% is fooled
    flat = replay(d, 0.1, records=[], pilots="flat")
    assert flat.chosen == "lora/fast0" and flat.rungs == [(9, 0.1)] and flat.compute_fraction == pytest.approx(0.1)
    with pytest.raises(BadInputError, match="budget-fraction"):
        replay(d, 0.01, records=[])


def test_halving_plans_fewer_rounds_rather_than_pilots_too_short_to_learn_from():
    from autopeft.choose.halving import next_length, survivors

    # 64 methods need 4 rounds at ETA 3: a quarter of 96 units each, over 64 pilots
    assert next_length(64, 64, 96.0, overhead=0, per_unit=1, shortest=0.1, cap=10) == pytest.approx(0.375)
    # that would be too short, and so would three rounds (0.5): two rounds, half the budget each
    assert next_length(64, 64, 96.0, overhead=0, per_unit=1, shortest=0.6, cap=10) == pytest.approx(0.75)
    assert next_length(64, 64, 96.0, overhead=0.5, per_unit=1, shortest=1.2, cap=10) is None  # not even one
    assert next_length(2, 2, 96.0, overhead=0, per_unit=1, shortest=0.1, cap=10) == 10
    assert [survivors(n) for n in (1, 2, 3, 8, 9, 63)] == [1, 2, 2, 3, 3, 21]


def test_a_budget_the_later_rungs_cannot_spend_below_the_cap_goes_to_longer_first_pilots():
    """A short job (58 steps, pilots capped at 29) with a generous floor of choosing time: 36 pilots
    of 18 methods, 1 s to start each and 0.3 s a step, 230 s. Split evenly over three rungs, the first
    got 3.8 steps and the later two, stopped at the cap, left 103 s of it unspent."""
    from autopeft.choose.halving import next_length, planned_cost

    plan = dict(overhead=1.0, per_unit=0.3, shortest=3, cap=29)
    # the 6 and then 2 methods going on cost 6 x 9.7 s and 2 x 9.7 s at the cap; the rest is the first rung's
    first = next_length(36, 18, 230.0, **plan)
    assert first == pytest.approx(((230 - 8 * (1 + 29 * 0.3)) / 36 - 1) / 0.3)  # 10.8 steps
    # whole steps, and a second rung at most half the cap before the third: 202 s planned (127 s before)
    assert planned_cost(36, 18, 230.0, **plan) == pytest.approx(202.2)
    # however large the budget, the first rung stops at half the cap while later rungs follow
    assert next_length(36, 18, 1e5, **plan) == pytest.approx(14.5)
    assert next_length(2, 2, 1e5, **plan) == 29  # two methods: one rung, to the cap
    # a long run (1,000 steps) whose cap the rungs do not reach: the budget is split evenly, as before
    assert next_length(36, 18, 230.0, **{**plan, "cap": 500}) == pytest.approx((230 / 3 / 36 - 1) / 0.3)


def test_the_least_a_plan_costs_counts_each_rung_with_its_survivors_at_twice_the_length():
    from autopeft.choose.halving import plan_cost

    # 27 methods at two rates: 54 pilots of 4 steps, then 9 of 8, then 3 of 16 (2 s to start each)
    assert plan_cost(54, 27, overhead=2, per_unit=1, shortest=4) == 54 * 6 + 9 * 10 + 3 * 18
    assert plan_cost(1, 1, overhead=1, per_unit=1, shortest=4) == 5  # one pilot, one rung
    assert plan_cost(54, 27, overhead=2, per_unit=1, shortest=4, rungs=2) == 54 * 6 + 9 * 10


def test_a_short_budget_pilots_more_methods_rather_than_longer_pilots_of_a_few():
    """What the pilots afford: every method's first rung, at one learning rate where both do not fit;
    longer rungs run only on what is left."""
    from autopeft.choose.pilots import PilotConfig, affordable

    configs = [PilotConfig(name=f"m{i} lr={lr}", method=f"m{i}", learning_rate=lr, batch_size=8)
               for i in range(12) for lr in (1e-4, 1e-3)]
    # 1 s to start a pilot, 1 s a step: 11 more methods at 3 steps (44 s) fit 75 s, not their second rates
    # (12 more pilots, 48 s); later rungs are not counted
    def flat(config):
        return 1.0, 1.0

    afforded = affordable(configs, 75.0, flat)
    assert [c.name for c in afforded] == [f"m{i} lr=0.0001" for i in range(12)]
    assert len(affordable(configs, 30.0, flat)) < 12
    assert affordable(configs, 1e6, flat) == configs


def test_a_method_dearer_than_several_others_is_afforded_after_them():
    """A method whose initialisation costs as much as fifteen pilots is piloted only after the others
    fit: a short budget covers the methods ranked after it instead, and names it; with the budget for
    it, it is kept, run after the others."""
    from autopeft.choose.pilots import PilotConfig, affordable, dear_methods

    configs = [PilotConfig(name=f"m{i} lr={lr}", method=f"m{i}", learning_rate=lr, batch_size=8,
                           init_steps=60.0 if i == 4 else 0.0) for i in range(8) for lr in (1e-4, 1e-3)]

    def cost(config):
        return 1.0 + config.init_steps, 1.0

    assert dear_methods(configs, cost) == {"m4"}
    short = affordable(configs, 48.0, cost)
    assert [c.method for c in short] == ["m0", "m1", "m2", "m3", "m5", "m6", "m7"]
    assert [c.method for c in affordable(configs, 120.0, cost)] == ["m0", "m1", "m2", "m3", "m5", "m6", "m7", "m4"]
    assert affordable(configs, 1e6, cost) == configs


def test_a_dear_method_close_to_the_leader_keeps_its_place():
    """Among the leading methods of the static ranking (``CONTENDERS``), a dear one is piloted in its
    place: its pilot could overturn the leader, which the pilots of methods far behind cannot."""
    from autopeft.choose.pilots import CONTENDERS, PilotConfig, affordable

    configs = [PilotConfig(name=f"m{i}", method=f"m{i}", learning_rate=1e-4, batch_size=8,
                           init_steps=30.0 if i in (1, CONTENDERS) else 0.0) for i in range(8)]

    def cost(config):
        return 1.0 + config.init_steps, 1.0

    # m1 (second) costs 34 s and is taken before m2; m{CONTENDERS}, as dear, waits for the others
    afforded = [c.method for c in affordable(configs, 60.0, cost)]
    assert afforded[:3] == ["m0", "m1", "m2"] and f"m{CONTENDERS}" not in afforded
    assert afforded == ["m0", "m1"] + [f"m{i}" for i in range(2, 8) if i != CONTENDERS]


def _fake_pilots(monkeypatch, seconds_of):
    """Pilots that take ``seconds_of(config)`` on a fake clock and learn nothing in particular."""
    from autopeft.choose import pilots
    from autopeft.profiles import CurvePoint
    from autopeft.training.outputs import PilotResult

    clock = [0.0]
    ran = []

    def run_pilot(config, base_options, steps, **kwargs):
        init, per_step = seconds_of(config)
        clock[0] += 1.0 + init + steps * per_step
        ran.append((config.name, steps))
        return PilotResult(status="ok", steps=steps, seconds=1.0 + init + steps * per_step,
                           train_seconds=steps * per_step, seconds_per_step=per_step, init_seconds=init,
                           curve=[CurvePoint(step=s, train_loss=2.0 - 0.01 * s) for s in range(1, steps + 1)])

    monkeypatch.setattr(pilots, "run_pilot", run_pilot)
    monkeypatch.setattr(pilots.time, "perf_counter", lambda: clock[0])
    return clock, ran


def test_pilots_keep_to_the_budget_when_a_method_costs_more_than_its_price(monkeypatch):
    """The plan prices m1 as LoRA, but its initialisation takes 60 s: the pilots after it that would
    end well past the budget are not started, so the halving overruns its budget by m1's unpriced
    minute at most, not by that minute and every pilot after it."""
    from autopeft.choose.pilots import PilotConfig, successive_halving

    configs = [PilotConfig(name=f"m{i}", method=f"m{i}", learning_rate=1e-3, batch_size=8) for i in range(10)]
    clock, ran = _fake_pilots(monkeypatch, lambda c: (60.0 if c.method == "m1" else 0.0, 1.0))
    said = []
    rungs = successive_halving(configs, {}, budget=lambda overhead, per_step: 60.0, total_steps=1000,
                               rank=lambda cs, rs: [-i for i in range(len(cs))], slots=[None], announce=said.append)
    assert clock[0] - 4.0 <= 60.0 * 1.1 + 60.0  # the calibration's 4 s came before the budget
    assert [name for name, _ in ran][-1] == "m1"  # none of m2..m8 started once m1 had spent the budget
    assert len(rungs[0].results) == 2
    assert any("the pilot budget ran out" in line for line in said)


@pytest.mark.parametrize("budget", [60.0, 1000.0])
def test_the_pilots_announce_the_time_they_are_planned_to_take(monkeypatch, budget):
    """A short job's pilots stop at half its run, well inside a generous budget: the time announced up
    front is what they take, not the budget (and the budget where they spend it all)."""
    from autopeft.choose.pilots import PilotConfig, successive_halving

    configs = [PilotConfig(name=f"m{i}", method=f"m{i}", learning_rate=1e-3, batch_size=8) for i in range(10)]
    clock, ran = _fake_pilots(monkeypatch, lambda c: (0.0, 1.0))
    said, announced_at = [], []

    def announce(line):
        said.append(line)
        announced_at.append(clock[0])

    successive_halving(configs, {}, budget=lambda overhead, per_step: budget, total_steps=40,
                       rank=lambda cs, rs: [-i for i in range(len(cs))], slots=[None], announce=announce)
    announced = float(re.search(r"pilots will take about (\d+) s", said[0]).group(1))
    took = clock[0] - announced_at[0]
    assert announced <= budget
    assert abs(announced - took) <= 0.15 * took, (announced, took)
    if budget == 1000.0:
        assert max(steps for _, steps in ran) == 20  # half the run: the pilots stop there


def test_a_pilots_step_time_is_timed_after_its_first_step(monkeypatch):
    """The first step pays one-off costs (on the 900-example TREC task: 0.53 s a step over a 3-step
    calibration pilot, 0.17 s over 29 steps), so a pilot times its steps from the end of the first:
    priced from a 3-step pilot, a 29-step one had cost about three times what it did."""
    from types import SimpleNamespace

    from autopeft.choose.pilots import _costs
    from autopeft.training import run
    from autopeft.training.outputs import PilotResult

    clock = [10.0, 10.2, 10.4]
    monkeypatch.setattr(run.time, "perf_counter", lambda: clock.pop(0) if clock else 99.0)
    stop = run._stop_after(3)
    control = SimpleNamespace(should_training_stop=False)
    for step in (1, 2, 3):
        stop.on_step_end(None, SimpleNamespace(global_step=step), control)
    assert stop.first_step_end == 10.0 and control.should_training_stop
    # what the plan reads back: the time beside the steps and the time a step give back the pilot's time
    result = PilotResult(status="ok", steps=3, seconds=4.0, train_seconds=1.6, seconds_per_step=0.2)
    overhead, per_step = _costs(result)
    assert per_step == 0.2 and overhead + 3 * per_step == pytest.approx(4.0)


def test_a_pilot_does_not_repeat_the_datas_warnings(monkeypatch, tmp_path, caplog):
    """The recommendation warns once about its data (here: validation examples that are also training
    examples); each of its 40-odd pilots prepares the same data and said it again."""
    import logging

    from autopeft.choose import pilots
    from autopeft.training import run
    from autopeft.training.outputs import PilotResult

    def pilot(data, **options):
        logging.getLogger("autopeft.data").warning("warning: 4 of 300 validation examples also occur")
        return PilotResult(status="ok", steps=3)

    monkeypatch.setattr(run, "pilot", pilot)
    data_log = logging.getLogger("autopeft.data")
    monkeypatch.setattr(data_log, "level", data_log.level)  # put back after the test
    with caplog.at_level(logging.WARNING):
        pilots._child({"data": "x.jsonl", "output_dir": str(tmp_path)}, 3, str(tmp_path / "result.json"))
    assert PilotResult.model_validate_json((tmp_path / "result.json").read_text()).status == "ok"
    assert not [r for r in caplog.records if r.name == "autopeft.data"]


def test_shipped_pilot_costs_price_data_driven_inits_above_lora():
    from autopeft.choose.pilots import expected_cost

    assert expected_cost("causal-lm", "lora")[0] < 2
    assert expected_cost("causal-lm", "eva")[0] > 5 * max(1.0, expected_cost("causal-lm", "lora")[0])
    assert expected_cost("seq-cls", "a-third-party-method") == (0.0, 1.0)


def test_store_appends_whole_records_and_reads_them_back(tmp_path):
    path = tmp_path / "store.jsonl"
    append(_benchmark("x", n=3), path)
    append(_benchmark("y", n=3), path)
    assert [r.benchmark for r in read_jsonl(path)] == ["x"] * 3 + ["y"] * 3
    path.write_text(path.read_text() + '{"benchmark": "z"}\n')
    with pytest.raises(BadInputError, match=":7:"):
        read_jsonl(path)


def test_shipped_profiles_load():
    records = load_records(store=False)
    assert records and all(r.benchmark for r in records)


def test_leave_one_task_out_scores_each_task_with_the_others_and_the_baselines():
    from autopeft.choose.replay import leave_one_task_out

    def bench(name, shift, dataset=None):
        # the lower the loss at every point, the better it ends: a pilot tells the truth
        return [_record(name, f"{m}", 0.9 - 0.1 * i, [3 + i + shift, 2 + i + shift, 1.5 + i, 1 + i, 0.9 + i] * 4,
                        method=m, dataset=dataset or name) for i, m in enumerate(["ia3", "lora", "vera", "oft"])]

    # "c2" is the data of "c" with another model: neither is learned from when the other is judged
    records = bench("a", 0) + bench("b", 0.5) + bench("c", 0.2) + bench("c2", 0.3, dataset="c")
    rows = leave_one_task_out(records, budget_fraction=0.3)
    assert [r.benchmark for r in rows] == ["a", "b", "c", "c2"]
    assert [r.trained_on for r in rows] == [["b", "c", "c2"], ["a", "c", "c2"], ["a", "b"], ["a", "b"]]
    for r in rows:
        assert r.top1 and r.chosen == r.oracle == "ia3" and r.regret == 0 and r.spearman == pytest.approx(1.0)
        assert r.baselines["always_lora"] == pytest.approx(1 / 3) and r.baselines["random"] == pytest.approx(0.5)
        assert 0 < r.compute_fraction <= 0.3


def test_leave_one_task_out_over_subsets_counts_what_each_subset_chose():
    from autopeft.choose.replay import leave_one_task_out_subsets

    def bench(name, shift):
        # the lower the loss at every point, the better it ends: a pilot tells the truth
        return [_record(name, m, 0.9 - 0.1 * i, [3 + i + shift, 2 + i + shift, 1.5 + i, 1 + i, 0.9 + i] * 4, method=m)
                for i, m in enumerate(["ia3", "lora", "vera", "oft", "loha", "boft"])]

    rows = leave_one_task_out_subsets(bench("a", 0) + bench("b", 0.5) + bench("c", 0.2), 0.3, subsets=12)
    for r in rows:
        # each subset of 4 of the 6 runs chooses its own best: ia3 when it is drawn, else lora, ...
        assert sum(r.picks.values()) == 12 and r.regret == 0
        assert set(r.picks) <= {"ia3", "lora", "vera"} and max(r.picks, key=r.picks.get) == "ia3"


def test_replay_pilots_candidates_in_the_order_tune_does_lora_first_then_the_static_ranking():
    from autopeft.choose.replay import _in_tune_order

    class Static:
        def mode(self, candidates):
            return "static"

        def predict(self, candidates):
            return np.array([{"lora": 0.1, "a": 0.5, "b": 0.9}[c.method] for c in candidates])

    runs = [_record("x", name, 0.5, [1.0, 0.9], method=name.split()[0]) for name in ("a 1", "lora 1", "b 1", "b 2")]
    assert [r.experiment for r in _in_tune_order(runs, Static())] == ["lora 1", "b 1", "b 2", "a 1"]
