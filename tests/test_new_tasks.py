"""The benches on the newer data sets (``benchmarks/new_tasks.py``): each converter on a tiny file in its data
set's own format, the task CLI's refusals, and the ``sql_execution`` metric those text-to-SQL benches use."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import pytest

from autopeft.methods.metrics import get_metric

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nt():
    spec = importlib.util.spec_from_file_location("new_tasks", ROOT / "benchmarks" / "new_tasks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["new_tasks"] = module
    spec.loader.exec_module(module)
    return module


def write(folder: Path, name: str, text: str | bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


# -- sql_execution ----------------------------------------------------------------------------------


@pytest.fixture()
def database(tmp_path):
    path = tmp_path / "geo.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE city (name TEXT, state TEXT, population INTEGER)")
        db.executemany("INSERT INTO city VALUES (?, ?, ?)",
                       [("austin", "texas", 900), ("dallas", "texas", 1300), ("reno", "nevada", 250)])
    db.close()
    return path


def sql_metric(database, monkeypatch):
    monkeypatch.setenv("AUTOPEFT_SQL_DATABASE", str(database))
    return get_metric("sql_execution")


REFERENCE = "SELECT name FROM city WHERE state = \"texas\" ;"


def test_sql_execution_scores_the_result_not_the_wording(database, monkeypatch):
    metric = sql_metric(database, monkeypatch)
    assert metric.score_one(REFERENCE, REFERENCE) == 1.0
    # other words, same rows (in another order: the reference has no ORDER BY)
    assert metric.score_one("select NAME from CITY where population > 800 order by name desc", REFERENCE) == 1.0
    assert metric.score_one("SELECT name FROM city", REFERENCE) == 0.0  # one row too many
    assert metric.score_one("SELECT name FROM city WHERE state = 'nevada'", REFERENCE) == 0.0


def test_sql_execution_keeps_the_order_an_ordered_reference_asks_for(database, monkeypatch):
    metric = sql_metric(database, monkeypatch)
    reference = "SELECT name FROM city ORDER BY population DESC"
    assert metric.score_one("SELECT name FROM city ORDER BY population DESC", reference) == 1.0
    assert metric.score_one("SELECT name FROM city ORDER BY population", reference) == 0.0


@pytest.mark.parametrize("prediction", ["SELEC name FRM city", "SELECT nope FROM city", "", "SELECT 1; SELECT 2",
                                        "DROP TABLE city", "SELECT name FROM city WHERE x = '\x00'",
                                        "it is austin and dallas"])
def test_sql_execution_scores_a_query_that_fails_0_and_changes_nothing(database, monkeypatch, prediction):
    metric = sql_metric(database, monkeypatch)
    assert metric.score_one(prediction, REFERENCE) == 0.0
    assert metric.score_one(REFERENCE, REFERENCE) == 1.0  # the table is still there: the database is read-only


def test_sql_execution_stops_a_runaway_query(database, monkeypatch):
    metric = sql_metric(database, monkeypatch)
    metric.timeout = 0.2
    runaway = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT name FROM city, n "
               "WHERE i < 0")
    assert metric.score_one(runaway, REFERENCE) == 0.0


def test_sql_execution_refuses_references_it_cannot_use_before_training(database, monkeypatch, tmp_path):
    metric = sql_metric(database, monkeypatch)
    assert metric.reference_problem(REFERENCE) is None
    assert "does not run" in metric.reference_problem("SELECT name FROM towns")
    monkeypatch.delenv("AUTOPEFT_SQL_DATABASE")
    assert "AUTOPEFT_SQL_DATABASE" in metric.reference_problem(REFERENCE)
    monkeypatch.setenv("AUTOPEFT_SQL_DATABASE", str(tmp_path / "missing.sqlite"))
    assert "not a file" in metric.reference_problem(REFERENCE)


def test_sql_execution_takes_its_database_from_the_sdk_too(database, monkeypatch):
    monkeypatch.delenv("AUTOPEFT_SQL_DATABASE", raising=False)
    from autopeft.methods.metrics import get_metrics

    metric = type(get_metrics()["sql_execution"])(database=database)
    assert metric.score([REFERENCE, "SELECT 1"], [REFERENCE, REFERENCE]) == 0.5


def test_every_task_benches_only_methods_that_can_train_its_kind_of_model(nt):
    """A method that cannot train the task's kind of model would stop its bench at the start."""
    import autopeft

    for task in nt.TASKS.values():
        kind = {"accuracy": "seq-cls", "f1": "token-cls"}.get(task.metric, "causal-lm")
        unable = [m for m in task.methods.split(",") if kind not in autopeft.get_method(m).tasks]
        assert not unable, f"{task.name}: {unable} cannot train {kind}"


# -- the converters, each on a tiny file in its data set's format -------------------------------------


def test_trec_names_the_coarse_classes_and_reads_latin_1(nt, tmp_path):
    write(tmp_path, "TREC.train.all", b"0 How did serfdom develop ?\n5 When was Ozzy born ?\n4 Where is the sister\xf0city ?\n")
    write(tmp_path, "TREC.test.all", "3 Who was Galileo ?\n")
    out = nt.trec(tmp_path)
    assert [r["label"] for r in out["train"]] == ["DESC", "NUM", "LOC"]
    assert out["test"] == [{"text": "Who was Galileo ?", "label": "HUM"}]
    write(tmp_path, "TREC.test.all", "9 What ?\n")
    with pytest.raises(ValueError, match="TREC.test.all:1"):
        nt.trec(tmp_path)


def test_trec_fine_labels_the_fine_class_and_refuses_a_coarse_line(nt, tmp_path):
    write(tmp_path, "TREC.train", b"DESC:manner How did serfdom develop ?\nNUM:date When was Ozzy born ?\n")
    write(tmp_path, "TREC.test", b"LOC:city What is the sister\xf0city ?\n")
    out = nt.trec_fine(tmp_path)
    assert sorted(r["label"] for r in out["train"]) == ["DESC:manner", "NUM:date"]
    assert out["test"] == [{"text": "What is the sister\xf0city ?", "label": "LOC:city"}]
    write(tmp_path, "TREC.test", "3 Who was Galileo ?\n")
    with pytest.raises(ValueError, match="TREC.test:1: not '<COARSE>:<fine> <question>'"):
        nt.trec_fine(tmp_path)


def test_class_sample_keeps_every_label_at_its_size(nt):
    rows = [{"text": f"q{i}", "label": "big"} for i in range(960)] + \
           [{"text": f"r{i}", "label": f"rare{i % 8}"} for i in range(40)]  # 8 labels of 5 rows
    sample = nt.class_sample(rows, 100, minimum=3)
    counts = {label: sum(r["label"] == label for r in sample) for label in {r["label"] for r in rows}}
    assert len(sample) == 100  # the rare labels' minimum comes out of the big one
    assert all(counts[f"rare{i}"] == 3 for i in range(8)) and counts["big"] == 76
    assert nt.class_sample(rows, 100, minimum=3) == sample  # seeded
    assert nt.class_sample(rows, 100, minimum=3, seed=1) != sample
    assert len(nt.class_sample(rows[:10], 100)) == 10  # a sample as large as the data is all of it


def test_tweeteval_emotion_pairs_texts_with_named_labels(nt, tmp_path):
    write(tmp_path, "mapping.txt", "0\tanger\n1\tjoy\n2\toptimism\n3\tsadness\n")
    for split in ("train", "val", "test"):
        write(tmp_path, f"{split}_text.txt", "so happy today \n#worst day ever\n")
        write(tmp_path, f"{split}_labels.txt", "1\n3\n")
    out = nt.tweeteval_emotion(tmp_path)
    assert set(out) == {"train", "validation", "test"}
    assert out["validation"] == [{"text": "so happy today", "label": "joy"}, {"text": "#worst day ever", "label": "sadness"}]
    write(tmp_path, "test_labels.txt", "1\n")
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        nt.tweeteval_emotion(tmp_path)


def test_clinc150_labels_each_query_with_its_intent_domain(nt, tmp_path):
    write(tmp_path, "domains.json", json.dumps({"banking": ["balance", "transfer"], "travel": ["book_flight"]}))
    write(tmp_path, "data_full.json", json.dumps({
        "train": [["what is my balance", "balance"], ["fly me to rome", "book_flight"]],
        "val": [["send 5 dollars to tom", "transfer"]], "test": [["a flight to oslo", "book_flight"]],
        "oos_train": [["how tall is everest", "oos"]]}))
    out = nt.clinc150_domains(tmp_path)
    assert [r["label"] for r in out["train"]] == ["banking", "travel"]
    assert out["validation"][0]["label"] == "banking" and out["test"][0]["label"] == "travel"
    assert "oos" not in {r["label"] for rows in out.values() for r in rows}  # out-of-scope queries left out


def test_clinc150_intents_samples_every_intent_in_its_share(nt, tmp_path):
    train = [[f"query {i} about {intent}", intent] for intent in ("balance", "transfer", "book_flight")
             for i in range(1500)]
    write(tmp_path, "data_full.json", json.dumps({
        "train": train, "val": [["send 5 dollars to tom", "transfer"]], "test": [["a flight to oslo", "book_flight"]],
        "oos_train": [["how tall is everest", "oos"]]}))
    out = nt.clinc150_intents(tmp_path)
    assert set(out) == {"train", "test"}  # the bench holds out its own validation quarter
    assert len(out["train"]) == 3000 and sum(r["label"] == "transfer" for r in out["train"]) == 1000
    assert out["test"] == [{"text": "a flight to oslo", "label": "book_flight"}]


def test_clinc150_oos_trains_on_every_out_of_scope_query_and_tests_on_a_balanced_split(nt, tmp_path):
    intents = [f"intent{k}" for k in range(150)]
    train = [[f"query {i} about {intent}", intent] for intent in intents for i in range(20)]
    test = [[f"test {i} about {intent}", intent] for intent in intents for i in range(10)]
    write(tmp_path, "data_full.json", json.dumps({
        "train": train, "val": [["send 5 dollars to tom", "intent1"]], "test": test,
        "oos_train": [[f"how tall is peak {i}", "oos"] for i in range(100)],
        "oos_val": [[f"who won cup {i}", "oos"] for i in range(100)],
        "oos_test": [[f"what is moss {i}", "oos"] for i in range(1000)]}))
    out = nt.clinc150_oos(tmp_path)
    assert set(out) == {"train", "test"}
    labels = {split: Counter(r["label"] for r in rows) for split, rows in out.items()}
    assert labels["train"] == {"in-scope": 1000, "out-of-scope": 200}
    assert labels["test"] == {"in-scope": 1000, "out-of-scope": 1000}
    in_scope = {r["text"].split(" about ")[1] for r in out["train"] if r["label"] == "in-scope"}
    assert in_scope == set(intents)  # sampled by intent: every one of them
    assert 0 < [r["label"] for r in out["train"][:200]].count("out-of-scope") < 200  # shuffled, not in blocks
    assert nt.clinc150_oos(tmp_path) == out  # seeded


def test_banking77_reads_its_csv(nt, tmp_path):
    write(tmp_path, "train.csv", 'text,category\nI am still waiting on my card?,card_arrival\n"Hi, my pin?",pin_blocked\n')
    write(tmp_path, "test.csv", "text,category\nwhere is my card,card_arrival\n")
    out = nt.banking77(tmp_path)
    assert out["train"][1] == {"text": "Hi, my pin?", "label": "pin_blocked"}
    assert len(out["test"]) == 1


def test_davidson_split_is_stratified_seeded_and_disjoint(nt, tmp_path):
    rows = [(i, 3, 0, 0, 3, cls, f"tweet number {i}") for i, cls in enumerate([0] * 10 + [1] * 50 + [2] * 20)]
    write(tmp_path, "labeled_data.csv", ",count,hate_speech,offensive_language,neither,class,tweet\n"
          + "".join(",".join(map(str, r)) + "\n" for r in rows))
    out = nt.davidson(tmp_path)
    test = [r["label"] for r in out["test"]]
    assert (test.count("hate"), test.count("offensive"), test.count("neither")) == (2, 10, 4)
    assert not {r["text"] for r in out["train"]} & {r["text"] for r in out["test"]}
    assert len(out["train"]) + len(out["test"]) == 80
    assert nt.davidson(tmp_path) == out  # the same split every time
    assert nt.davidson(tmp_path, seed=1)["test"] != out["test"]


def test_svamp_holds_out_200_problems_as_equation_and_answer(nt, tmp_path):
    problems = [{"Body": f"Tom has {i} apples.", "Question": "He eats 2. How many are left?",
                 "Equation": f"( {i}.0 - 2.0 )", "Answer": i - 2.0, "Type": "Subtraction"} for i in range(3, 253)]
    write(tmp_path, "SVAMP.json", json.dumps(problems))
    out = nt.svamp(tmp_path)
    assert len(out["test"]) == 200 and len(out["train"]) == 50
    record = out["train"][0]
    number = int(record["prompt"].split()[2])
    assert record["completion"] == f"({number} - 2) = {number - 2}"
    assert not {r["prompt"] for r in out["train"]} & {r["prompt"] for r in out["test"]}


def test_nl_rx_turk_pairs_descriptions_with_expressions(nt, tmp_path):
    for split in ("train", "val", "test"):
        write(tmp_path, f"src-{split}.txt", "lines with the word <M0>\nlines ending in a vowel\n")
        write(tmp_path, f"targ-{split}.txt", ". * <M0> . *\n( . * ) ( [ <VOW> ] )\n")
    out = nt.nl_rx_turk(tmp_path)
    assert out["test"][1] == {"prompt": "Regular expression for: lines ending in a vowel",
                              "completion": "( . * ) ( [ <VOW> ] )"}
    write(tmp_path, "targ-val.txt", ". *\n")
    with pytest.raises(ValueError, match="2 descriptions but 1 expressions"):
        nt.nl_rx_turk(tmp_path)


def test_scan_splits_command_from_actions(nt, tmp_path):
    write(tmp_path, "tasks_train_simple.txt", "IN: jump twice OUT: I_JUMP I_JUMP\n")
    write(tmp_path, "tasks_test_simple.txt", "IN: walk left OUT: I_TURN_LEFT I_WALK\nwalk\n")
    with pytest.raises(ValueError, match="tasks_test_simple.txt:2"):
        nt.scan(tmp_path)
    write(tmp_path, "tasks_test_simple.txt", "IN: walk left OUT: I_TURN_LEFT I_WALK\n")
    out = nt.scan(tmp_path)
    assert out["train"] == [{"prompt": "Actions for: jump twice", "completion": "I_JUMP I_JUMP"}]


def test_text2sql_fills_variables_splits_by_question_and_drops_what_does_not_run(nt, tmp_path, database):
    items = [{"query-split": "train", "variables": [], "sql": [
        'SELECT CITYalias0.name FROM city AS CITYalias0 WHERE CITYalias0.state = "state_name0" ;', "SELECT 2"],
        "sentences": [{"question-split": "train", "text": "cities in state_name0", "variables": {"state_name0": "texas"}},
                      {"question-split": "dev", "text": "towns of state_name0", "variables": {"state_name0": "nevada"}},
                      {"question-split": "exclude", "text": "state_name0?", "variables": {"state_name0": "utah"}}]},
        {"query-split": "test", "variables": [], "sql": ["SELECT name FROM towns ;"],
         "sentences": [{"question-split": "test", "text": "all towns", "variables": {}}]}]
    write(tmp_path, "geo.json", json.dumps(items))
    out = nt.text2sql("geo.json")(tmp_path)
    assert out["train"] == [{"prompt": "SQL for: cities in texas", "completion":
                             'SELECT CITYalias0.name FROM city AS CITYalias0 WHERE CITYalias0.state = "texas" ;'}]
    assert out["validation"][0]["prompt"] == "SQL for: towns of nevada"
    assert len(out["test"]) == 1
    # against a database, a question whose query does not run there (no table "towns") is left out
    out = nt.text2sql("geo.json", "geo.sqlite")(tmp_path)
    assert out["test"] == [] and len(out["train"]) == 1


def test_wnut17_reads_conll_sentences(nt, tmp_path):
    conll = "@paul\tO\nin\tO\nNew\tB-location\nYork\tI-location\n\nhi\tO\n"
    for name in ("wnut17train.conll", "emerging.dev.conll", "emerging.test.annotated"):
        write(tmp_path, name, conll)
    out = nt.wnut17(tmp_path)
    assert out["test"] == [{"tokens": ["@paul", "in", "New", "York"], "tags": ["O", "O", "B-location", "I-location"]},
                           {"tokens": ["hi"], "tags": ["O"]}]


def test_convert_writes_each_split_under_the_work_dir(nt, tmp_path):
    data = tmp_path / "data"
    write(data / "scan", "tasks_train_simple.txt", "IN: jump OUT: I_JUMP\n")
    write(data / "scan", "tasks_test_simple.txt", "IN: run OUT: I_RUN\n")
    paths = nt.convert(nt.TASKS["scan"], tmp_path / "work", data)
    assert paths["train"] == tmp_path / "work" / "scan" / "train.jsonl"
    assert json.loads(paths["test"].read_text()) == {"prompt": "Actions for: run", "completion": "I_RUN"}


# -- the task CLI -------------------------------------------------------------------------------------


def test_every_task_has_a_converter_model_and_metric(nt):
    assert len(nt.TASKS) >= 10
    for task in nt.TASKS.values():
        assert task.model in ("minilm-l6", "smollm2-135m")
        assert task.metric in ("accuracy", "f1") or task.metric == task.options[task.options.index("--metric") + 1]


def test_an_unknown_task_exits_2_naming_the_closest(nt, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        nt.main(["--work", str(tmp_path), "bench", "tre"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'tre'" in err and "trec" in err
    with pytest.raises(SystemExit) as stop:
        nt.main(["--work", str(tmp_path), "convert", "scan", "banknig77"])
    assert stop.value.code == 2 and "banking77" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing converted before the refusal


def test_bench_dry_run_prints_the_command_with_the_database(nt, capsys, tmp_path):
    data = tmp_path / "data"
    write(data / "text2sql", "geography.json", json.dumps([{"query-split": "train", "variables": [], "sql": ["SELECT 1"],
          "sentences": [{"question-split": q, "text": "one", "variables": {}} for q in ("train", "dev", "test")]}]))
    sqlite3.connect(data / "text2sql" / "geography-db.added-in-2020.sqlite").close()
    assert nt.main(["--work", str(tmp_path / "work"), "--data", str(data), "bench", "geoquery", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"$ AUTOPEFT_SQL_DATABASE={(data / 'text2sql').resolve()}/geography-db")
    assert "--metric sql_execution" in out
    assert "--validation" in out and "test-100.jsonl" in out


def _fake_bench(folder: Path, benchmark: str, scores: dict[str, float]) -> None:
    write(folder, "bench.json", json.dumps({"benchmark": benchmark}))
    write(folder, "records.jsonl", "".join(json.dumps(
        {"method": name.split("@")[0], "learning_rate": float(name.split("@")[1]), "score": score, "metric":
         "test_accuracy", "higher_is_better": True, "train_seconds": 60}) + "\n" for name, score in scores.items()))


def test_report_ranks_finished_benches_only_and_says_how_to_run_the_rest(nt, tmp_path):
    _fake_bench(tmp_path / "trec", "autopeft/trec-minilm-l6",
                {"lora@0.001": 0.70, "lora@0.0003": 0.20, "full@0.0001": 0.88, "ia3@0.005": 0.40})
    _fake_bench(tmp_path / "banking77", "autopeft/banking77-minilm-l6", {"lora@0.001": 0.5})
    assert nt.is_unfinished(tmp_path / "trec")  # no finished.json yet: make_profiles leaves it out
    write(tmp_path / "trec", nt.FINISHED, "{}")
    assert not nt.is_unfinished(tmp_path / "trec")
    text = nt.report(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| trec"))
    assert "full (0.0001) | 0.8800 | 0.7000 (0.001) | 2 of 3 | 0.4000 | 4 |" in row
    assert "- `banking77`: 1 runs recorded, not finished" in text
    assert "`python benchmarks/new_tasks.py bench scan`" in text


def test_train_refuses_sql_execution_without_a_database_before_training(trainable_llama, tmp_path, monkeypatch,
                                                                         database):
    from click.testing import CliRunner

    from autopeft.cli import main

    data = tmp_path / "sql.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"cities in {s}", "completion": f"SELECT name FROM city WHERE "
                                        f"state = '{s}'"}) + "\n" for s in ("texas", "nevada") * 5))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"prompt": "all towns", "completion": "SELECT name FROM towns"}) + "\n")
    argv = ["train", str(data), "--model", str(trainable_llama), "-o", str(tmp_path / "run"), "--metric",
            "sql_execution", "--max-length", "32", "--test", str(test)]
    monkeypatch.delenv("AUTOPEFT_SQL_DATABASE", raising=False)
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2 and "AUTOPEFT_SQL_DATABASE" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("AUTOPEFT_SQL_DATABASE", str(database))
    result = CliRunner().invoke(main, argv)  # now the test file's reference is the problem: no table "towns"
    assert result.exit_code == 2 and "test.jsonl:1" in result.output and "no such table: towns" in result.output
    assert not (tmp_path / "run").exists()
