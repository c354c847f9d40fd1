"""Config files: ``--config FILE`` (YAML or JSON) for train, tune, recommend and bench, flags over it,
a run's run.json as a config that repeats the run, ``--print-config``, the same mapping in the SDK,
and one line with exit status 2 for every bad config. Also torch's dtype names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from autopeft.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = str(EXAMPLES / "instructions.jsonl")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, *parts):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autopeft: error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_a_yaml_config_with_a_flag_over_it_trains_and_its_run_json_repeats_the_run(trainable_llama, tmp_path):
    config = tmp_path / "lora.yaml"
    config.write_text(f"""# a team's usual settings
data: {DATA}
model: {trainable_llama}
method: lora
set:
  r: 4
learning-rate: 3e-3
batch_size: 4
max_examples: 32
max_length: 64
max-steps: 3
weight_decay: 0.01      # no flag: any TrainOptions field
samples: 0
forgetting: false
precision: float32
""")
    first = run("train", "--config", config, "--max-steps", "4", "-o", tmp_path / "first", "--no-profile-store")
    assert first.exit_code == 0, first.output
    options = json.loads((tmp_path / "first" / "run.json").read_text())["options"]
    assert options["max_steps"] == 4  # the flag wins over the file
    assert (options["method"], options["settings"], options["learning_rate"]) == ("lora", {"r": 4}, 3e-3)
    assert (options["batch_size"], options["weight_decay"], options["precision"]) == (4, 0.01, "fp32")
    assert options["profile_store"] is False and options["model"] == str(trainable_llama)

    second = run("train", "--config", tmp_path / "first" / "run.json", "-o", tmp_path / "second")
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "second" / "run.json").read_text())
    assert {**again["options"], "output_dir": None} == {**options, "output_dir": None}
    assert again["steps"] == 4 and again["settings"]["r"] == 4


@pytest.mark.parametrize("text, parts", [
    ("data: x.jsonl\nbatchsize: 8\n", ["bad.yaml:2: batchsize: not an option of train; did you mean 'batch_size'?"]),
    ("data: x.jsonl\nbatch_size: eight\n", ["bad.yaml:2: batch_size: ", "eight"]),
    ("data: x.jsonl\nmax_steps: true\n", ["bad.yaml:2: max_steps: "]),
    ("data: x.jsonl\nwarmup_ratio: 2\n", ["bad.yaml:2: warmup_ratio: ", "less than 1"]),
    ("data: x.jsonl\nset: [r]\n", ["bad.yaml:2: set: ", "KEY=VALUE"]),
    ("data: x.jsonl\nepochs: [1, 2]\n", ["bad.yaml:2: epochs: one value"]),
    ("data: x.jsonl\nbatch_size: [8\nseed: 1\n", ["bad.yaml:3: not valid YAML"]),
    ("data: x.jsonl\n\tbatch_size: 8\n", ["bad.yaml:", "not valid YAML"]),
    ("- data\n- x.jsonl\n", ["bad.yaml:1: a config is a mapping"]),
    ("data: x.jsonl\nreport_to: tensorbord\n", ["bad.yaml:2: report_to: unknown tracker 'tensorbord'; "
                                               "did you mean 'tensorboard'?"]),
], ids=["unknown-key", "wrong-type", "bool-for-int", "out-of-range", "bad-setting", "list-for-one",
        "yaml-syntax", "yaml-tab", "not-a-mapping", "unknown-tracker"])
def test_a_bad_config_is_one_line_naming_the_file_line_and_key(tmp_path, monkeypatch, text, parts):
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text(text)
    one_line_error(run("train", "--config", "bad.yaml", "-o", "out"), *parts)
    assert not Path("out").exists()


@pytest.mark.parametrize("command", ["recommend", "tune"])
def test_a_misspelt_method_in_a_config_names_the_file_and_line(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    output = ["-o", "out"] if command == "tune" else []
    Path("choose.yaml").write_text("max_vram: 3GB\nmethods: [lora, lorra]\n")
    one_line_error(run(command, "--config", "choose.yaml", "data.jsonl", *output),
                   "choose.yaml:2: methods: unknown method 'lorra'; did you mean 'lora'")
    Path("choose.yaml").write_text("exclude: dorra\n")
    one_line_error(run(command, "--config", "choose.yaml", "data.jsonl", *output),
                   "choose.yaml:1: exclude: unknown method 'dorra'; did you mean 'dora'")
    assert not Path("out").exists()


def test_a_missing_config_file_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(run("train", "--config", "nope.yaml"), "nope.yaml: no such config file")
    one_line_error(run("tune", "--config", "nope.json"), "nope.json: no such config file")


def test_a_json_config_and_a_tune_config_are_checked_the_same_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("tune.json").write_text(json.dumps({"data": "x.jsonl", "max-vram": "twelve", "methods": ["lora"]}, indent=1))
    one_line_error(run("tune", "--config", "tune.json"), "tune.json:3: max_vram: ", "twelve")
    Path("tune.json").write_text(json.dumps({"data": "x.jsonl", "method": "lora"}, indent=1))
    one_line_error(run("tune", "--config", "tune.json"), "tune.json:3: method: not an option of tune")
    Path("tune.json").write_text('{"data": "x.jsonl",\n "batch_size": 8,\n}')
    one_line_error(run("tune", "--config", "tune.json"), "tune.json:3: not valid JSON")
    Path("tabs.json").write_text('{\n\t"data": "x.jsonl",\n\t"batch_size": "eight"\n}')  # valid JSON, not YAML
    one_line_error(run("train", "--config", "tabs.json"), "tabs.json", "batch_size: ", "eight")


@pytest.mark.parametrize("command, extra", [
    ("train", ["--method", "dora", "-s", "r=4", "--max-steps", "5"]),
    ("tune", ["--max-vram", "3GB", "--methods", "lora,ia3", "--require", "merge", "--no-pilot"]),
    ("recommend", ["--max-adapter-size", "20MB", "--pilot-budget", "5m", "--profiles", DATA]),
    ("bench", ["--benchmark", "team/x", "-o", "bench", "--learning-rates", "2"]),
])
def test_print_config_writes_the_resolved_options_as_a_config_that_config_takes_back(tmp_path, monkeypatch, command,
                                                                                    extra):
    monkeypatch.chdir(tmp_path)
    tracker = "report-to: tensorboard\n" if command != "recommend" else ""  # recommend keeps nothing to track
    Path("base.yaml").write_text(f"data: {DATA}\nbatch-size: 4\nmax_length: 64\n{tracker}")
    printed = run(command, "--config", "base.yaml", *extra, "--print-config")
    assert printed.exit_code == 0, printed.output
    values = yaml.safe_load(printed.stdout)
    assert values["data"] == DATA and values["batch_size"] == 4 and values["max_length"] == 64
    if command != "recommend":
        assert values["report_to"] in (["tensorboard"], "tensorboard")
    Path("printed.yaml").write_text(printed.stdout)
    again = run(command, "--config", "printed.yaml", "--print-config")
    assert again.exit_code == 0, again.output
    assert yaml.safe_load(again.stdout) == values
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "printed.yaml"]  # nothing ran


def test_print_config_of_train_fills_in_every_default_as_run_json_would_hold_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    printed = run("train", DATA, "--lr", "1e-3", "--gradient-accumulation", "2", "--no-profile-store",
                  "--print-config")
    values = yaml.safe_load(printed.stdout)
    assert values["learning_rate"] == 1e-3 and values["gradient_accumulation_steps"] == 2
    assert values["profile_store"] is False and values["method"] == "lora" and values["epochs"] == 3.0
    assert values["output_dir"] == str(Path("runs") / "instructions-lora")
    assert {"warmup_ratio", "weight_decay", "validation_fraction", "seed", "report_to", "max_length"} <= set(values)
    assert None not in values.values() and "pilot_steps" not in values


def _run_json(tmp_path: Path) -> Path:
    """A finished run's record, as train writes it (only the parts a config reads matter)."""
    options = {"data": DATA, "output_dir": str(tmp_path / "old"), "method": "dora", "settings": {"r": 4},
               "learning_rate": 0.002, "batch_size": 4, "max_length": 64, "weight_decay": 0.1, "epochs": 1.0,
               "pilot_steps": None, "eval_steps": 3}
    path = tmp_path / "old" / "run.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"method": "dora", "settings": {"r": 4, "alpha": 8}, "output_dir": str(path.parent),
                                "metrics": {"eval_loss": 1.0}, "options": options}, indent=2))
    return path


def test_a_run_json_is_a_config_train_repeats_and_tune_takes_the_data_and_schedule_of(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _run_json(tmp_path)
    train = yaml.safe_load(run("train", "--config", path, "-o", "new", "--print-config").stdout)
    assert (train["method"], train["settings"], train["learning_rate"], train["weight_decay"]) == (
        "dora", {"r": 4}, 0.002, 0.1)
    assert train["output_dir"] == "new"
    # the run's dir works too; without -o, the run's own dir is not reused
    assert yaml.safe_load(run("train", "--config", path.parent, "--print-config").stdout)["output_dir"] != str(
        path.parent)
    tune = run("tune", "--config", path, "--print-config")
    assert tune.exit_code == 0, tune.output
    values = yaml.safe_load(tune.stdout)
    assert values["data"] == DATA and values["weight_decay"] == 0.1 and values["eval_steps"] == 3
    assert not {"method", "settings", "learning_rate"} & set(values)
    assert "the run's method, settings, learning_rate left out" in tune.stderr


def test_the_sdk_takes_the_same_mapping_with_arguments_over_it(tmp_path, monkeypatch):
    import autopeft.choose.tune
    import autopeft.training.run

    calls = {}
    monkeypatch.setattr(autopeft.training.run, "train", lambda data, **kw: calls.setdefault("train", (data, kw)))
    monkeypatch.setattr(autopeft.choose.tune, "tune", lambda data, **kw: calls.setdefault("tune", (data, kw)))
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {DATA}\noutput: runs/x\nset: [r=8, target_modules=all-linear]\ngradient-accumulation: 2\n"
                      f"no-profile-store: true\nmax_steps: 10\njson: true\n")
    autopeft.train(config=config, max_steps=20)
    data, kw = calls["train"]
    assert data == DATA and kw["output_dir"] == "runs/x" and kw["max_steps"] == 20
    assert kw["settings"] == {"r": 8, "target_modules": "all-linear"} and kw["gradient_accumulation_steps"] == 2
    assert kw["profile_store"] is False and "json" not in kw

    autopeft.tune(DATA, output_dir="t", config={"max-vram": "3GB", "pilot-budget": "5m", "no_pilot": True,
                                                 "methods": "lora,ia3", "batch_size": 4})
    data, kw = calls["tune"]
    assert kw["constraints"].max_vram == 3 * 10**9 and kw["constraints"].methods == ("lora", "ia3")
    assert kw["pilot_seconds"] == 300 and kw["pilot"] is False and kw["batch_size"] == 4
    with pytest.raises(autopeft.BadInputError, match=r"^config: batchsize: not an option of train; did you mean "
                                                     r"'batch_size'\?"):
        autopeft.train(DATA, output_dir="y", config={"batchsize": 4})
    with pytest.raises(autopeft.BadInputError, match=r"c2.yaml:2: warmup_ratio: "):
        (tmp_path / "c2.yaml").write_text("data: x\nwarmup_ratio: 3\n")
        autopeft.train(output_dir="y", config=tmp_path / "c2.yaml")


@pytest.mark.parametrize("command", ["train", "tune", "recommend"])
def test_every_option_of_the_command_line_is_a_key_the_sdk_takes(command):
    """The command line's keys come from its options; the SDK's from a table: they must not drift apart."""
    from autopeft.configfile import sdk_keys, sdk_name

    known = sdk_keys(command)
    for param in main.commands[command].params:
        if param.name in ("config", "print_config"):
            continue
        for opt in [o for o in getattr(param, "opts", []) if o.startswith("--")] or [param.name]:
            key = opt.removeprefix("--").replace("-", "_")
            assert sdk_name(key) in known or key == "json", (command, key)


def test_dtype_names_of_torch_mean_the_short_ones(tiny_llama_dir):
    base = ["estimate", "--model", tiny_llama_dir, "--method", "lora", "--device", "cpu", "--seq-len", "16", "--json"]
    short, long_ = run(*base, "--dtype", "bf16"), run(*base, "--dtype", "bfloat16")
    assert short.exit_code == long_.exit_code == 0, long_.output
    assert json.loads(short.stdout) == json.loads(long_.stdout)
    refused = run(*base, "--dtype", "float64")  # a usage error: one line from the `autopeft` entry point
    assert refused.exit_code == 2 and "'float64' is not one of bf16, fp16, fp32, bfloat16" in refused.output
    from autopeft.training.options import TrainOptions

    assert [TrainOptions(data="d", output_dir="o", precision=p).precision
            for p in ("bfloat16", "float16", "float32", "torch.bfloat16", "fp16")] == ["bf16", "fp16", "fp32", "bf16",
                                                                                       "fp16"]
    printed = run("train", DATA, "--precision", "float16", "--print-config")
    assert yaml.safe_load(printed.stdout)["precision"] == "fp16"
