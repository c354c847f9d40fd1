"""Pilots, `recommend` and `tune` end to end on tiny models: pilots in their own processes, the
memory budget, the JSON contract, exit status 3, and the outputs of a tuned run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autopeft.cli import main
from autopeft.training.outputs import RunRecord
from autopeft.choose.pilots import PilotConfig, run_pilot, run_rung

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAST = ["--max-length", "64", "--max-examples", "40", "--batch-size", "4", "--epochs", "1"]


def _base(model_dir):
    return {"data": str(EXAMPLES / "instructions.jsonl"), "model": str(model_dir), "max_length": 64,
            "max_examples": 40, "epochs": 1}


@pytest.mark.slow
def test_a_pilot_runs_its_steps_of_the_full_schedule_in_its_own_process(trainable_llama):
    result = run_pilot(PilotConfig(name="lora", method="lora", learning_rate=1e-2, batch_size=4),
                       _base(trainable_llama), 4)
    assert result.status == "ok" and result.steps == 4
    assert [p.step for p in result.curve] == [1, 2, 3, 4] and all(p.train_loss > 0 for p in result.curve)
    assert result.total_steps > 4  # the pilot stopped early in the full run's schedule
    assert result.peak_memory_bytes > 0 and result.seconds_per_step > 0
    assert result.seconds_per_step * (result.steps - 1) <= result.train_seconds  # timed after the first step


@pytest.mark.slow
def test_a_pilot_over_its_memory_budget_is_stopped_and_marked(trainable_llama):
    result = run_pilot(PilotConfig(name="lora", method="lora", learning_rate=1e-2, batch_size=4),
                       _base(trainable_llama), 4, max_memory=50_000_000)
    assert result.status == "oom" and "budget" in result.error


@pytest.mark.slow
def test_a_pilot_that_crashes_marks_only_itself(trainable_llama):
    result = run_pilot(PilotConfig(name="bad", method="lora", settings={"r": 0}, learning_rate=1e-2, batch_size=4),
                       _base(trainable_llama), 2)
    assert result.status == "failed" and result.error


@pytest.mark.slow
def test_pilots_side_by_side_measure_what_they_measure_one_after_another(trainable_llama):
    """Pilots spread over devices (here two slots on the CPU) give the same curves as run in turn."""
    configs = [PilotConfig(name=f"{m}@{lr}", method=m, learning_rate=lr, batch_size=4)
               for m, lr in (("lora", 1e-2), ("ia3", 3e-2), ("lora", 3e-3))]
    seen = []
    in_turn = run_rung(configs, _base(trainable_llama), 3)
    side_by_side = run_rung(configs, _base(trainable_llama), 3, slots=[None, None],
                            on_pilot=lambda config, steps, result: seen.append(config.name))
    assert list(side_by_side) == [c.name for c in configs] and sorted(seen) == sorted(in_turn)
    for name, result in in_turn.items():
        assert result.status == side_by_side[name].status == "ok"
        assert [p.train_loss for p in result.curve] == [p.train_loss for p in side_by_side[name].curve]


def test_halving_keeps_the_learning_rate_the_ranking_prefers_not_the_lowest_pilot_loss():
    """Each method's rate that goes on is the ranking's choice, made over every configuration of the rung
    together: a larger rate whose early loss is lowest can lose to a smaller one the recommender prefers."""
    from autopeft.choose.pilots import PilotResult, _survivors
    from autopeft.profiles import CurvePoint

    losses = {("lora", 1e-2): 0.5, ("lora", 1e-3): 0.7, ("ia3", 3e-2): 0.6, ("ia3", 3e-3): 0.9, ("vera", 1e-2): 1.0}
    configs = [PilotConfig(name=f"{m}@{lr:g}", method=m, learning_rate=lr, batch_size=4) for m, lr in losses]
    results = {c.name: PilotResult(status="ok",
                                   curve=[CurvePoint(step=3, train_loss=losses[c.method, c.learning_rate])])
               for c in configs}
    seen = []

    def prefer_small_rates(ranked, ranked_results):
        seen.append([c.name for c in ranked])
        return [-c.learning_rate for c in ranked]

    alive, chosen = _survivors(configs, results, prefer_small_rates)
    assert seen == [[c.name for c in configs]]  # one ranking, every rate of every method side by side
    assert chosen == {"lora": "lora@0.001", "ia3": "ia3@0.003", "vera": "vera@0.01"}
    assert [c.name for c in alive] == ["lora@0.001", "ia3@0.003"]  # the best of three methods: two go on


def test_a_survivor_of_halving_ranks_above_every_candidate_it_outlasted_whatever_the_predictions():
    """The recommender's predictions are not bound to [0, 1] (on the shipped profiles one in twelve
    falls below 0), so a survivor predicted low must still rank above a dropped candidate predicted high."""
    from autopeft.profiles import CurvePoint
    from autopeft.choose.recommend import _predict_by_rung
    from autopeft.choose.ranking import Candidate

    def pilot(steps):
        return [CurvePoint(step=s, train_loss=1.0) for s in range(1, steps + 1)]

    candidates = [Candidate(name=name, method=name, pilot=pilot(steps))
                  for name, steps in (("dropped", 3), ("survivor", 6), ("rival", 6), ("early", 1))]
    predictions = {"dropped": 0.9, "survivor": -0.8, "rival": -0.9, "early": 1.4}

    class Fake:
        def predict(self, subset):
            return [predictions[c.name] for c in subset]

        def mode(self, subset):
            return "pilot"

    predicted, mode = _predict_by_rung(candidates, Fake())
    order = sorted(range(4), key=lambda i: -predicted[i])
    assert [candidates[i].name for i in order] == ["survivor", "rival", "dropped", "early"] and mode == "pilot"
    assert predicted[1] == -0.8  # the longest pilots keep the recommender's own numbers


@pytest.mark.slow
def test_recommend_json_follows_the_contract(trainable_llama):
    res = CliRunner().invoke(main, ["recommend", str(EXAMPLES / "instructions.jsonl"), "--model", str(trainable_llama),
                                    *FAST, "--methods", "lora,ia3,vera", "--pilot-budget", "60s", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["chosen"] in {"lora", "ia3", "vera"}
    rows = {c["method"]: c for c in rec["candidates"]}
    assert set(rows) >= {"lora", "ia3", "vera", "dora"}
    assert rows["dora"]["feasible"] is False and rows["dora"]["excluded_because"] == ["not among --methods"]
    for name in ("lora", "ia3", "vera"):
        row = rows[name]
        assert {"method", "settings", "feasible", "excluded_because", "estimated", "measured", "predicted_score",
                "pareto"} <= set(row)
        assert row["measured"]["status"] == "ok" and row["measured"]["pilot_steps"] >= 3
    assert any(c["pareto"] for c in rec["candidates"] if c["feasible"])
    assert rec["explanation"].startswith(rec["chosen"])


@pytest.mark.slow
def test_pilots_and_the_fine_tune_get_only_the_settings_set_so_methods_fit_the_rest_to_the_model(trainable_llama):
    """VB-LoRA's vector length must divide the layer sizes (64 here, not its default 256): left unset, the
    method fits it to the model. recommend shows every default, but pilots and tune are given only what
    was set, so that fitting still happens."""
    res = CliRunner().invoke(main, ["recommend", str(EXAMPLES / "instructions.jsonl"), "--model", str(trainable_llama),
                                    *FAST, "--methods", "vblora", "--pilot-budget", "30s", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    row = next(c for c in rec["candidates"] if c["method"] == "vblora")
    assert row["settings"]["vector_length"] == 256  # the default, shown
    assert row["measured"]["status"] == "ok", row["measured"]["error"]
    assert rec["chosen"] == "vblora" and rec["settings"] == {}


def test_constraints_nothing_satisfies_exit_3_with_the_nearest_misses(trainable_llama):
    res = CliRunner().invoke(main, ["recommend", str(EXAMPLES / "instructions.jsonl"), "--model", str(trainable_llama),
                                    *FAST, "--max-vram", "1MB", "--no-pilot"])
    assert res.exit_code == 3
    assert "Nearest misses" in res.output and "(--max-vram 1 MB less 10% for estimate error)" in res.output


@pytest.mark.slow
def test_tune_trains_the_winner_and_records_why(trainable_llama, tmp_path):
    out = tmp_path / "tuned"
    res = CliRunner().invoke(main, ["tune", str(EXAMPLES / "instructions.jsonl"), "--model", str(trainable_llama),
                                    *FAST, "--methods", "lora,ia3", "--pilot-budget", "60s", "-o", str(out),
                                    "--json", "--max-vram", "8GB"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["method"] == summary["recommendation"]["chosen"] and summary["pilot_seconds"] > 0
    record = RunRecord.model_validate_json((out / "run.json").read_text())
    assert record.recommendation["chosen"] == record.method
    assert (out / "pareto.png").is_file() and "pareto.png" in (out / "report.md").read_text()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(trainable_llama)), str(out))
    # the run joined this machine's profile store
    from autopeft.profiles import load_records

    assert [r.method for r in load_records(shipped=False)] == [record.method]


@pytest.mark.slow
def test_a_tune_whose_fine_tune_learned_nothing_names_the_runner_up(trainable_bert, tmp_path):
    out = tmp_path / "tuned"
    # the pilots find their own rates; the fine-tune is given one too small to learn anything
    res = CliRunner().invoke(main, ["tune", str(EXAMPLES / "sentiment.jsonl"), "--model", str(trainable_bert),
                                    *FAST, "--methods", "lora,ia3", "--pilot-budget", "60s", "-o", str(out),
                                    "--learning-rate", "1e-9", "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    record = RunRecord.model_validate_json((out / "run.json").read_text())
    assert record.warnings and "from the text" in record.warnings[0]
    other = ({"lora", "ia3"} - {record.method}).pop()
    assert f"the runner-up was {other}: `autopeft train {EXAMPLES / 'sentiment.jsonl'} --method {other}" in res.stderr
    # the explanation is told once, before the fine-tune; the result names the choice and where the reasons are
    assert res.output.count("is recommended") == 1 and "is recommended" in res.stderr
    assert f"{record.method} was chosen; why: {out}/report.md" in res.stdout


def test_profiles_commands(tmp_path):
    res = CliRunner().invoke(main, ["profiles", "list", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["benchmarks"]
    res = CliRunner().invoke(main, ["profiles", "export", str(tmp_path / "all.jsonl")])
    assert res.exit_code == 0 and (tmp_path / "all.jsonl").read_text().count("\n") > 10


def test_replay_cli_prints_the_contract(tmp_path, write_peft_result):
    _peft_result = write_peft_result
    d = tmp_path / "Bench"
    d.mkdir()
    losses = [2.0, 1.5, 1.2, 1.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    _peft_result(d, "rank32", 0.40, 20e9, losses)
    _peft_result(d, "default", 0.45, 18e9, [v - 0.1 for v in losses], method_dir="ia3")
    res = CliRunner().invoke(main, ["replay", str(d), "--budget-fraction", "0.2", "--max-vram", "19GB", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"chosen", "chosen_score", "oracle", "oracle_score", "regret", "baselines", "compute_fraction"} <= set(out)
    assert out["chosen"] == out["oracle"] == "ia3/default" and out["regret"] == 0
    assert out["chosen_method"] == out["oracle_method"] == "ia3"
    human = CliRunner().invoke(main, ["replay", str(d), "--budget-fraction", "0.2", "--max-vram", "19GB"])
    assert "chosen  ia3 (ia3/default)" in human.output
    assert {"lora_default", "lowest_pilot_loss"} <= set(out["baselines"])
    bad = CliRunner().invoke(main, ["replay", str(tmp_path / "missing")])
    assert bad.exit_code == 2


def test_target_gpu_plans_for_a_known_accelerator_and_names_the_known_ones(trainable_llama):
    from autopeft.errors import BadInputError
    from autopeft.devices import target_device

    assert target_device("a100-40gb").total_memory_bytes == 40 * 2**30
    try:
        target_device("gtx-9999")
    except BadInputError as exc:
        assert "H100" in str(exc)
    else:
        raise AssertionError("an unknown accelerator must be refused")


def test_a_cost_model_its_pilot_proves_wrong_is_named_and_judged_by_the_measurement(trainable_llama, monkeypatch):
    """A plugin whose cost model lies (here: ia3's pilot measures 3x its estimate) is reported by name,
    and its measured figure, not its estimate, is what --max-vram holds it to."""
    import autopeft.choose.recommend as recommend_module
    from autopeft.choose.constraints import Constraints
    from autopeft.profiles import CurvePoint
    from autopeft.choose.recommend import Measured

    def pilots(feasible, *args, **kwargs):  # what the pilot processes would report
        return {row.method: Measured(
            status="ok", learning_rate=1e-3, pilot_steps=3, pilot_loss=2.0, seconds_per_step=0.1,
            estimated_full_seconds=1.0, curve=[CurvePoint(step=s, train_loss=3.0 - s / 3) for s in (1, 2, 3)],
            peak_memory_bytes=row.estimated.peak_memory_bytes * (3 if row.method == "ia3" else 1))
            for row in feasible}, None

    monkeypatch.setattr(recommend_module, "_run_pilots", pilots)

    def run(**constraints):
        said = []
        rec = recommend_module.recommend(
            str(EXAMPLES / "instructions.jsonl"), model=str(trainable_llama), max_length=64, max_examples=40,
            batch_size=4, epochs=1, constraints=Constraints(methods=("lora", "ia3"), **constraints), say=said.append)
        return {c.method: c for c in rec.candidates}, said

    rows, said = run()
    assert rows["lora"].warnings == [] and rows["ia3"].feasible
    (warning,) = rows["ia3"].warnings
    assert warning.startswith("the cost model of ia3 (plugin autopeft) is wrong") and warning in said
    estimate = rows["ia3"].estimated.peak_memory_bytes
    rows, _ = run(max_vram=2 * estimate)  # fits as estimated, not as measured
    assert not rows["ia3"].feasible and "pilot measured" in rows["ia3"].excluded_because[-1]
    assert rows["lora"].feasible


class _Seen(Exception):
    """Raised by a stand-in for the pilots: what they were given is all a test needs."""


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["tune", "recommend command"])
def test_pilots_sample_split_and_pack_the_data_as_the_fine_tune_will(entry, trainable_llama, tmp_path, monkeypatch):
    import autopeft.choose.recommend as recommend_module
    from autopeft.choose.constraints import Constraints
    from autopeft.choose.tune import tune

    seen = {}

    def pilots(feasible, methods, options, *args, **kwargs):
        seen.update(options.model_dump(include={"seed", "data_seed", "validation_fraction", "pack",
                                                "train_on_inputs"}))
        raise _Seen

    monkeypatch.setattr(recommend_module, "_run_pilots", pilots)
    data = str(EXAMPLES / "instructions.jsonl")
    if entry == "tune":
        with pytest.raises(_Seen):
            tune(data, output_dir=str(tmp_path / "run"), model=str(trainable_llama), max_length=64,
                 max_examples=40, batch_size=4, epochs=1, constraints=Constraints(methods=("lora",)), seed=5,
                 data_seed=2, validation_fraction=0.2, pack=True, train_on_inputs=True, progress=False)
    else:
        result = CliRunner().invoke(main, ["recommend", data, "-m", str(trainable_llama), "--max-length", "64",
                                           "--max-examples", "40", "-b", "4", "--epochs", "1", "--methods", "lora",
                                           "--seed", "5", "--data-seed", "2", "--validation-fraction", "0.2",
                                           "--pack", "--train-on-inputs"])
        assert seen, result.output  # the command reports the stand-in's exception as an error: no matter
    assert seen == {"seed": 5, "data_seed": 2, "validation_fraction": 0.2, "pack": True, "train_on_inputs": True}


@pytest.mark.parametrize("given, expected", [
    ({}, 240.0),  # a short job: the floor, less what screening took
    # a share the user asked for is kept exactly, however small: 15/85 of the 1.1 s run, less screening
    ({"pilot_fraction": 0.15}, 0.15 / 0.85 * 1.1),
    ({"pilot_seconds": 7.0}, 7.0),
])
def test_a_short_job_gets_the_floor_of_choosing_time_unless_the_user_set_a_budget(given, expected, trainable_llama,
                                                                                   monkeypatch):
    """A 10-step run buys a share of nothing: by default choosing still gets MIN_CHOOSE_SECONDS, and the
    explanation says how many methods the pilots covered and why the rest were ranked without one."""
    import autopeft.choose.pilots as pilots_module
    from autopeft.choose import recommend as recommend_module
    from autopeft.choose.constraints import Constraints

    budgets = []

    def halving(configs, base, *, budget, **kwargs):  # no pilot runs: the budget it is given is all we need
        budgets.append(budget(1.0, 0.01))
        return []

    monkeypatch.setattr(pilots_module, "successive_halving", halving)
    said = []
    rec = recommend_module.recommend(str(EXAMPLES / "instructions.jsonl"), model=str(trainable_llama), max_length=64,
                                     max_examples=40, batch_size=4, max_steps=10, say=said.append,
                                     constraints=Constraints(methods=("lora", "ia3", "vera")), **given)
    (budget,) = budgets
    if not given:
        assert recommend_module.MIN_CHOOSE_SECONDS == expected and expected - 30 < budget <= expected
        assert any(f"at least {expected:.0f} s in all" in line for line in said)
    elif "pilot_seconds" in given:
        assert budget == pytest.approx(expected, abs=1e-6)
    else:
        assert 0 <= budget <= expected
    assert rec.mode == "static"


def test_the_explanation_says_how_many_methods_the_pilots_covered_and_why_not_the_rest(trainable_llama, monkeypatch):
    import autopeft.choose.pilots as pilots_module
    from autopeft.choose import recommend as recommend_module
    from autopeft.choose.constraints import Constraints
    from autopeft.profiles import CurvePoint
    from autopeft.training.outputs import PilotResult

    def halving(configs, base, *, budget, **kwargs):  # the budget reached the first two methods' first rates
        budget(1.0, 0.01)
        firsts = {}
        for config in configs:
            firsts.setdefault(config.method, config)
        ran = list(firsts.values())[:2]
        results = {c.name: PilotResult(status="ok", steps=3, curve=[CurvePoint(step=s, train_loss=3.0 - s / (3 + i))
                                                                     for s in (1, 2, 3)], peak_memory_bytes=1)
                   for i, c in enumerate(ran)}
        return [pilots_module.Rung(steps=3, results=results, chosen={c.method: c.name for c in ran})]

    monkeypatch.setattr(pilots_module, "successive_halving", halving)
    rec = recommend_module.recommend(str(EXAMPLES / "instructions.jsonl"), model=str(trainable_llama), max_length=64,
                                     max_examples=40, batch_size=4, max_steps=10, say=lambda line: None,
                                     constraints=Constraints(methods=("lora", "ia3", "vera", "loha")))
    assert rec.mode == "pilot"
    assert "covered 2 of the 4 methods, the most promising by the stored profiles; the other 2 are ranked " \
           "without a pilot" in rec.explanation

    def dear_halving(configs, base, **kwargs):  # as above, and the last method was too dear to pilot
        rungs = halving(configs, base, **kwargs)
        return [rungs[0].model_copy(update={"passed_over": [configs[-1].method]})]

    monkeypatch.setattr(pilots_module, "successive_halving", dear_halving)
    rec = recommend_module.recommend(str(EXAMPLES / "instructions.jsonl"), model=str(trainable_llama), max_length=64,
                                     max_examples=40, batch_size=4, max_steps=10, say=lambda line: None,
                                     constraints=Constraints(methods=("lora", "ia3", "vera", "loha")))
    assert ": a pilot of it costs over 3 typical ones); the other 2 are ranked without a pilot" in rec.explanation
