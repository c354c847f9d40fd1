"""Benches on the ten newer data sets of ``../shared/data`` (fourteen tasks): each task's converter, size, model
and metric.

Every task here reads its data set as published (see ``../shared/data/README.md``), converts it into one
of autopeft's input formats (classification ``{text, label}``, prompt/completion, tagged tokens) under a
work directory outside the project (``--work``, default ``$AUTOPEFT_HOME/newtasks``: the data stays in
../shared), and benches it with ``autopeft bench`` into ``benchmarks/results/bench/<task>/`` (resumable:
the same command again continues it). ``benchmarks/make_profiles.py`` then turns each finished bench into
``profiles/bench-<task>.jsonl``.

Each task is sized so that a bench of about 70 runs takes a few CPU hours: classification is the
set-up of the held-out SST-2 and GSM8K benches (1,200 sampled examples, a quarter held out and evaluated
as it trains, 2 epochs of the other 900, the published test split scored once at the end; about 50 s to
1.5 min a run on one core), generation a few hundred examples for one epoch, scored on 100 test prompts
with the task's metric (SVAMP: about 6 minutes a run, NL-RX-Turk's first run 14, a third of it
generating). TREC's 50 fine classes and CLINC150's 150 intents are sampled by class in their converters
(``class_sample``; CLINC150's 3,000, so that 15 queries an intent are left to train on): the bench's random
sample can miss a class the test split asks for. WNUT-17 trains on twice the classification sample (2,400
sentences, its dev file as validation): with 900, every run still tagged every word O, as entities are
rare words.

    python benchmarks/new_tasks.py list
    python benchmarks/new_tasks.py convert [TASK ...]
    python benchmarks/new_tasks.py bench TASK [--methods a,b] [--learning-rates 2] [--dry-run]
    python benchmarks/new_tasks.py report     # benchmarks/results/new_tasks.md: best method per task, LoRA's place
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BENCHES = ROOT / "benchmarks" / "results" / "bench"
#: written into a bench directory when its bench ends with every run recorded
FINISHED = "finished.json"

#: the methods a classification bench sweeps: those of the held-out SST-2 and GSM8K benches, so the new
#: tasks line up with the old ones method for method
CLS_METHODS = ("lora,full,dora,ia3,vera,pissa,oft,loha,lokr,miss,ln_tuning,prompt_tuning,rslora,shira,vblora,"
               "gralora,randlora,lily")
#: the methods of a generation bench on SmolLM2: those of the GSM8K bench
GEN_METHODS = "lora,dora,rslora,pissa,vera,ia3,oft,loha,lokr,miss,prompt_tuning,full"
#: a classification bench (see the module docstring); eval every 29 steps keeps a run near a minute
CLS_OPTIONS = ["--max-examples", "1200", "--validation-fraction", "0.25", "--max-length", "64", "--batch-size", "32",
               "--epochs", "2", "--eval-steps", "29", "--early-stopping", "0", "--save-steps", "100000"]


@dataclasses.dataclass(frozen=True)
class Task:
    """One bench: where its data comes from, how it is converted, and how it is trained and judged."""

    name: str
    source: str  # folder under ../shared/data
    convert: Callable[[Path], dict[str, list[dict]]]  # source folder -> split name -> records
    model: str
    metric: str  # what judges a run: accuracy (seq-cls), f1 (token-cls) or a task metric (causal LM)
    options: tuple[str, ...]  # autopeft bench options beside the data, model and splits
    methods: str
    about: str  # one line for `list` and the profiles README
    minutes: int  # wall time of a bench on one core of this 2-core machine, the other busy: measured where it ran
    #: environment the runs need, each a variable and a file of the source folder (the SQL metric's database)
    env: tuple[tuple[str, str], ...] = ()

    @property
    def benchmark(self) -> str:
        return f"autopeft/{self.name}-{self.model}"


# --- converters: each takes the data set's folder and returns its splits ----------------------------------

TREC_CLASSES = ("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM")


def trec(src: Path) -> dict[str, list[dict]]:
    """TREC's ``<label> <question>`` lines (Latin-1), the 6 coarse classes named."""
    def read(name: str) -> list[dict]:
        rows = _trec_lines(src / name, lambda label: label.isdigit() and int(label) < len(TREC_CLASSES),
                           "<0-5> <question>")
        return [{"text": r["text"], "label": TREC_CLASSES[int(r["label"])]} for r in rows]
    return {"train": read("TREC.train.all"), "test": read("TREC.test.all")}


def _trec_lines(path: Path, valid: Callable[[str], bool], form: str) -> list[dict]:
    """A TREC file's ``<label> <question>`` lines (Latin-1) as records; ValueError at a line whose label
    is not ``valid`` or that has no question."""
    rows = []
    for number, line in enumerate(_lines(path, "latin-1"), 1):
        label, _, text = line.partition(" ")
        if not valid(label) or not text.strip():
            raise ValueError(f"{path}:{number}: not '{form}'")
        rows.append({"text": text.strip(), "label": label})
    return rows


def trec_fine(src: Path) -> dict[str, list[dict]]:
    """TREC's ``<coarse>:<fine> <question>`` lines (Latin-1), labelled with the fine class (50, skewed:
    ``HUM:ind`` has 962 training questions, ``ENTY:currency`` 4): the harder of TREC's two standard tasks.
    The training split is a class-proportional sample of 1,200 (see ``class_sample``): the bench's own
    random sample leaves out rare classes that the test set asks for."""
    def read(name: str) -> list[dict]:
        return _trec_lines(src / name, lambda label: re.fullmatch(r"[A-Z]+:[a-z]+", label) is not None,
                           "<COARSE>:<fine> <question>")
    return {"train": class_sample(read("TREC.train"), 1200), "test": read("TREC.test")}


def tweeteval_emotion(src: Path) -> dict[str, list[dict]]:
    """TweetEval emotion: ``SPLIT_text.txt`` and ``SPLIT_labels.txt`` line by line, names from ``mapping.txt``."""
    names = dict(line.split("\t") for line in _lines(src / "mapping.txt"))
    out = {}
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        texts, labels = _lines(src / f"{name}_text.txt"), _lines(src / f"{name}_labels.txt")
        if len(texts) != len(labels):
            raise ValueError(f"{src}/{name}_*.txt: {len(texts)} texts but {len(labels)} labels")
        out[split] = [{"text": t.strip(), "label": names[label.strip()]} for t, label in zip(texts, labels)]
    return out


def clinc150_domains(src: Path) -> dict[str, list[dict]]:
    """CLINC150's in-scope queries labelled with their intent's domain (10 balanced classes): the 150
    intents leave 6 examples each in a 900-example sample, too few to learn in two short epochs, while
    a domain has 90, as the other classification tasks here have per class."""
    domain = {intent: name for name, intents in json.loads((src / "domains.json").read_text()).items()
              for intent in intents}
    full = json.loads((src / "data_full.json").read_text())
    return {split: [{"text": text, "label": domain[intent]} for text, intent in full[key]]
            for split, key in (("train", "train"), ("validation", "val"), ("test", "test"))}


def clinc150_intents(src: Path) -> dict[str, list[dict]]:
    """CLINC150's in-scope queries labelled with their intent (150 balanced classes). Training: a
    class-proportional sample of 3,000 (20 of each intent, 15 left after the bench holds out its
    validation quarter): the few-shot end of intent detection; the 1,200 of the other tasks leave 6."""
    full = json.loads((src / "data_full.json").read_text())
    rows = {split: [{"text": text, "label": intent} for text, intent in full[key]]
            for split, key in (("train", "train"), ("test", "test"))}
    return {"train": class_sample(rows["train"], 3000), "test": rows["test"]}


def clinc150_oos(src: Path) -> dict[str, list[dict]]:
    """CLINC150 out-of-scope detection: does a query ask for one of the 150 intents the assistant serves,
    or for something outside them? Training: the 200 out-of-scope queries of its training and validation
    splits with 1,000 in-scope ones sampled by intent (a sixth out of scope); test: its 1,000 out-of-scope
    test queries and 1,000 in-scope ones sampled by intent, so that accuracy is balanced accuracy and
    the majority class scores 50%."""
    full = json.loads((src / "data_full.json").read_text())

    def in_scope(key: str) -> list[dict]:
        rows = class_sample([{"text": text, "label": intent} for text, intent in full[key]], 1000)
        return [{"text": row["text"], "label": "in-scope"} for row in rows]

    def out_of_scope(*keys: str) -> list[dict]:
        return [{"text": text, "label": "out-of-scope"} for key in keys for text, _ in full[key]]

    train, test = in_scope("train") + out_of_scope("oos_train", "oos_val"), in_scope("test") + out_of_scope("oos_test")
    random.Random(0).shuffle(train)
    return {"train": train, "test": test}


def class_sample(rows: list[dict], size: int, minimum: int = 3, seed: int = 0) -> list[dict]:
    """A seeded sample of ``size`` rows (at most), each label in its share of them and at least ``minimum``
    (or all it has), in a seeded order: a test split can then ask for every label the training split holds."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    labels = sorted(by_label)
    share = {label: min(len(by_label[label]), max(minimum, round(size * len(by_label[label]) / len(rows))))
             for label in labels}
    while sum(share.values()) > size:  # the minimums come out of the largest classes
        share[max(labels, key=lambda label: share[label])] -= 1
    rng = random.Random(seed)
    chosen = [row for label in labels for row in rng.sample(by_label[label], share[label])]
    rng.shuffle(chosen)
    return chosen


def banking77(src: Path) -> dict[str, list[dict]]:
    """Banking77's ``text,category`` CSV files."""
    def read(name: str) -> list[dict]:
        with open(src / name, newline="", encoding="utf-8") as f:
            return [{"text": r["text"].strip(), "label": r["category"]} for r in csv.DictReader(f)]
    return {"train": read("train.csv"), "test": read("test.csv")}


DAVIDSON_CLASSES = ("hate", "offensive", "neither")
#: the share of each Davidson class held out as the test split
DAVIDSON_TEST = 0.2


def davidson(src: Path, seed: int = 0) -> dict[str, list[dict]]:
    """The Davidson tweets (``class`` 0 hate, 1 offensive, 2 neither) with a seeded stratified split:
    a fifth of each class is the test split."""
    with open(src / "labeled_data.csv", newline="", encoding="utf-8") as f:
        rows = [{"text": r["tweet"].strip(), "label": DAVIDSON_CLASSES[int(r["class"])]} for r in csv.DictReader(f)]
    by_class = defaultdict(list)
    for row in rows:
        by_class[row["label"]].append(row)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        cut = round(len(members) * DAVIDSON_TEST)
        test += members[:cut]
        train += members[cut:]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


def svamp(src: Path, seed: int = 0) -> dict[str, list[dict]]:
    """SVAMP as prompt/completion (``benchmarks/svamp.py``'s conversion: the completion is the equation and
    its answer), a seeded shuffle holding out 200 problems as the test split."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from svamp import convert

    problems = json.loads((src / "SVAMP.json").read_text(encoding="utf-8"))
    random.Random(seed).shuffle(problems)
    return {"test": [convert(p) for p in problems[:200]], "train": [convert(p) for p in problems[200:]]}


def nl_rx_turk(src: Path) -> dict[str, list[dict]]:
    """NL-RX-Turk: each English description (``src-*.txt``) and its regular expression (``targ-*.txt``)."""
    out = {}
    for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
        sources, targets = _lines(src / f"src-{name}.txt"), _lines(src / f"targ-{name}.txt")
        if len(sources) != len(targets):
            raise ValueError(f"{src}/*-{name}.txt: {len(sources)} descriptions but {len(targets)} expressions")
        out[split] = [{"prompt": f"Regular expression for: {s.strip()}", "completion": t.strip()}
                      for s, t in zip(sources, targets)]
    return out


def scan(src: Path) -> dict[str, list[dict]]:
    """SCAN's simple split: ``IN: <command> OUT: <actions>`` lines."""
    def read(name: str) -> list[dict]:
        rows = []
        for number, line in enumerate(_lines(src / name), 1):
            match = re.fullmatch(r"IN:\s*(.+?)\s+OUT:\s*(.+)", line.strip())
            if not match:
                raise ValueError(f"{src / name}:{number}: not 'IN: ... OUT: ...'")
            rows.append({"prompt": f"Actions for: {match[1]}", "completion": match[2]})
        return rows
    return {"train": read("tasks_train_simple.txt"), "test": read("tasks_test_simple.txt")}


def text2sql(file: str, database: str | None = None) -> Callable[[Path], dict[str, list[dict]]]:
    """A text2sql-data file (``geography.json``, ``advising.json``): each question with its variables
    filled in, in the text and in the first of its equivalent queries, split by ``question-split`` (those
    marked ``exclude`` left out). With ``database`` (a file beside the data), the questions whose query
    does not run on it are left out too (5 of GeoQuery's 877): the ``sql_execution`` metric needs a
    reference result."""
    def convert(src: Path) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
        for item in json.loads((src / file).read_text(encoding="utf-8")):
            for sentence in item["sentences"]:
                text, sql = sentence["text"], item["sql"][0]
                for name, value in sentence["variables"].items():
                    text = text.replace(name, value)
                    sql = sql.replace(f'"{name}"', f'"{value}"').replace(name, value)
                split = {"dev": "validation"}.get(sentence["question-split"], sentence["question-split"])
                if split not in out:  # Advising marks some questions "exclude"
                    continue
                out[split].append({"prompt": f"SQL for: {text}", "completion": " ".join(sql.split())})
        if database:
            import sqlite3

            connection = sqlite3.connect(f"file:{(src / database).resolve()}?mode=ro", uri=True)

            def runs(query: str) -> bool:
                try:
                    connection.execute(query.rstrip(" ;")).fetchall()
                except sqlite3.Error:
                    return False
                return True
            out = {split: [r for r in rows if runs(r["completion"])] for split, rows in out.items()}
            connection.close()
        return out
    return convert


def wnut17(src: Path) -> dict[str, list[dict]]:
    """WNUT-17's CoNLL files (word TAB BIO tag) as tagged-token records."""
    return {split: _conll(src / name) for split, name in
            (("train", "wnut17train.conll"), ("validation", "emerging.dev.conll"), ("test", "emerging.test.annotated"))}


def _conll(path: Path) -> list[dict]:
    rows, tokens, tags = [], [], []
    for number, line in enumerate(_lines(path) + [""], 1):
        if not line.strip():
            if tokens:
                rows.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        fields = line.split()
        if len(fields) < 2:
            raise ValueError(f"{path}:{number}: not 'word<TAB>tag'")
        tokens.append(fields[0])
        tags.append(fields[-1])
    return rows


def _lines(path: Path, encoding: str = "utf-8") -> list[str]:
    return path.read_text(encoding=encoding).splitlines()


# --- the tasks ---------------------------------------------------------------------------------------------

def _cls(name, source, convert, about, minutes=60, model="minilm-l6", examples=1200):
    options = list(CLS_OPTIONS)
    options[options.index("--max-examples") + 1] = str(examples)
    return Task(name=name, source=source, convert=convert, model=model, metric="accuracy",
                options=tuple(options), methods=CLS_METHODS, about=about, minutes=minutes)


def _gen(name, source, convert, metric, about, *, examples, length, new_tokens, minutes, env=()):
    options = ("--max-examples", str(examples), "--max-length", str(length), "--batch-size", "8", "--epochs", "1",
               "--eval-steps", "1000", "--early-stopping", "0", "--save-steps", "100000", "--metric", metric,
               "--generate-max-new-tokens", str(new_tokens), "--generate-max-examples", "100")
    return Task(name=name, source=source, convert=convert, model="smollm2-135m", metric=metric, options=options,
                methods=GEN_METHODS, about=about, minutes=minutes, env=env)


GEOQUERY_DB = "geography-db.added-in-2020.sqlite"

TASKS: dict[str, Task] = {t.name: t for t in [
    _cls("trec", "trec", trec, "TREC question type, 6 coarse classes; test: the 500 TREC test questions", minutes=40),
    _cls("trec-fine", "trec", trec_fine,
         "TREC question type, 50 fine classes (1,200 sampled by class); test: the 500 TREC test questions", minutes=30),
    _cls("tweeteval-emotion", "tweeteval-emotion", tweeteval_emotion,
         "TweetEval emotion (anger, joy, optimism, sadness); test: its 1,421 test tweets"),
    _cls("clinc150-domains", "clinc150", clinc150_domains,
         "CLINC150 in-scope queries by intent domain (10 balanced classes); test: its 4,500 test queries", minutes=70),
    _cls("clinc150-intents", "clinc150", clinc150_intents,
         "CLINC150 in-scope queries by intent (150 balanced classes, 3,000 sampled); test: its 4,500 test "
         "queries", minutes=71, examples=3000),
    _cls("clinc150-oos", "clinc150", clinc150_oos,
         "CLINC150 out-of-scope detection (200 out-of-scope and 1,000 in-scope queries); test: 1,000 of each",
         minutes=29),
    _cls("banking77", "banking77", banking77, "Banking77, 77 intents; test: its 3,080 test queries", minutes=90),
    _cls("davidson", "hate-offensive", davidson,
         "Davidson tweets: hate, offensive or neither (seeded stratified split, a fifth of each class is test)",
         minutes=115),
    _gen("svamp", "svamp", svamp, "final_number", "SVAMP word problems: equation and answer, scored by the answer "
         "number on 100 of 200 held-out problems", examples=400, length=160, new_tokens=24, minutes=255),
    _gen("nl-rx-turk", "nl-rx-turk", nl_rx_turk, "exact_match", "NL-RX-Turk: English to regular expression, "
         "exact match on 100 test descriptions", examples=400, length=96, new_tokens=48, minutes=420),
    _gen("geoquery", "text2sql", text2sql("geography.json", GEOQUERY_DB), "sql_execution", "GeoQuery text to SQL (question "
         "split): the predicted query's result on the bundled SQLite database equals the reference's",
         examples=400, length=192, new_tokens=96, minutes=480,
         env=(("AUTOPEFT_SQL_DATABASE", GEOQUERY_DB),)),
    # Advising ships no database: its queries are judged by exact match (spacing and case aside)
    _gen("advising", "text2sql", text2sql("advising.json"), "exact_match", "Advising text to SQL (question "
         "split), exact match of the query (no database is bundled)", examples=400, length=256,
         new_tokens=128, minutes=540),
    _gen("scan", "scan", scan, "exact_match", "SCAN commands to actions (simple split), exact match on 100 test "
         "commands", examples=400, length=96, new_tokens=64, minutes=420),
    Task(name="wnut17", source="wnut17", convert=wnut17, model="minilm-l6", metric="f1",
         options=("--max-examples", "2400", "--max-length", "64", "--batch-size", "32", "--epochs", "2",
                  "--eval-steps", "50", "--early-stopping", "0", "--save-steps", "100000"),
         # prompt tuning's virtual tokens have no label of their own to tag: it cannot train a tagger
         methods=CLS_METHODS.replace("prompt_tuning,", ""), about="WNUT-17 emerging entities (6 types), entity F1 on its 1,287 test sentences; "
                                    "the dev file is the validation set", minutes=170),
]}


# --- the CLI -----------------------------------------------------------------------------------------------

def work_dir(value: str | None) -> Path:
    """Where converted files go: ``--work``, else ``$AUTOPEFT_HOME/newtasks`` (``~/.cache/autopeft``)."""
    if value:
        return Path(value).expanduser().resolve()
    home = os.environ.get("AUTOPEFT_HOME") or str(Path.home() / ".cache" / "autopeft")
    return Path(home).expanduser().resolve() / "newtasks"


def check_tasks(names: list[str]) -> list[Task]:
    """The tasks called ``names``; SystemExit(2) with the closest names for an unknown one."""
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        from autopeft.errors import unknown_names

        print(unknown_names("task", unknown, TASKS, source="new_tasks.py"), file=sys.stderr)
        raise SystemExit(2)
    return [TASKS[name] for name in names]


def convert(task: Task, work: Path, data: Path = DATA) -> dict[str, Path]:
    """Write the task's splits as JSONL under ``work/<task>/`` (each file replaced whole) and return them."""
    splits = task.convert(data / task.source)
    folder = work / task.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        if not rows:
            continue
        path = folder / f"{split}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged files keep their times
            partial = path.with_suffix(".tmp")
            partial.write_text(text, encoding="utf-8")
            partial.replace(path)
        paths[split] = path
    return paths


def bench_command(task: Task, paths: dict[str, Path], output: Path, methods: str | None,
                  learning_rates: int, edge_rates: int) -> list[str]:
    """The ``autopeft bench`` command line of a task."""
    argv = ["autopeft", "bench", str(paths["train"]), "--benchmark", task.benchmark, "--model", task.model,
            "--test", str(paths["test"])]
    if "validation" in paths and "--validation-fraction" not in task.options:
        argv += ["--validation", str(paths["validation"])]
    return argv + list(task.options) + ["--learning-rates", str(learning_rates), "--edge-rates", str(edge_rates),
                                        "--methods", methods or task.methods, "-o", str(output)]


def _test_sample(path: Path, count: int = 100, seed: int = 0) -> Path:
    """A seeded sample of ``count`` test records beside ``path`` (generation costs per example)."""
    rows = path.read_text(encoding="utf-8").splitlines()
    random.Random(seed).shuffle(rows)
    sample = path.with_name(f"{path.stem}-{count}.jsonl")
    text = "".join(r + "\n" for r in rows[:count])
    if not sample.is_file() or sample.read_text(encoding="utf-8") != text:
        sample.write_text(text, encoding="utf-8")
    return sample


def report(benches: Path = BENCHES) -> str:
    """The Markdown summary of the tasks' benches: per task, its best method, LoRA's place among the methods
    (each at its best rate), and which tasks have not run or not finished (with the command that runs them)."""
    lines = ["# The newer data sets: one `autopeft bench` per task", "",
             "Written by `python benchmarks/new_tasks.py report` from `benchmarks/results/bench/<task>/`. Each task "
             "converts its data set from `../shared/data` (`python benchmarks/new_tasks.py list` gives the sizes, "
             "models and metrics); each method at its best learning rate of the sweep (its own search space, 2 rates "
             "and up to 2 past an edge where it scored best). Only finished benches count here and ship as "
             "profiles.", "",
             "| task | model | metric | methods x runs | best (lr) | score | LoRA (lr) | LoRA's place | worst | "
             "train min |", "|---|---|---|---:|---|---:|---|---:|---:|---:|"]
    missing = []
    for task in TASKS.values():
        bench = benches / task.name
        records = [r for r in _records(bench) if r.get("score") is not None]
        if not (bench / FINISHED).is_file() or not records:
            done = len(_records(bench))
            missing.append(f"- `{task.name}`: " + (f"{done} runs recorded, not finished" if done else "not run")
                           + f" (about {task.minutes} min on one core): `python benchmarks/new_tasks.py bench "
                             f"{task.name}`")
            continue
        higher = records[0]["higher_is_better"]
        best: dict[str, dict] = {}
        for r in records:  # each method at its best rate
            if r["method"] not in best or (r["score"] - best[r["method"]]["score"]) * (1 if higher else -1) > 0:
                best[r["method"]] = r
        order = sorted(best.values(), key=lambda r: -r["score"] if higher else r["score"])
        lora = next((i for i, r in enumerate(order, 1) if r["method"] == "lora"), None)
        minutes = sum(r.get("train_seconds") or 0 for r in _records(bench)) / 60
        lora_cell = (f"{order[lora - 1]['score']:.4f} ({order[lora - 1]['learning_rate']:g})" if lora else "-")
        lines.append(f"| {task.name} | {task.model} | {order[0]['metric']} | {len(best)} x "
                     f"{len(_records(bench))} | {order[0]['method']} ({order[0]['learning_rate']:g}) | "
                     f"{order[0]['score']:.4f} | {lora_cell} | {lora or '-'} of {len(order)} | "
                     f"{order[-1]['score']:.4f} | {minutes:.0f} |")
    if missing:
        lines += ["", "Not in the table yet:", "", *missing]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="where converted files go (default $AUTOPEFT_HOME/newtasks)")
    parser.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the tasks, their model, metric and rough bench time")
    sub.add_parser("report", help="write benchmarks/results/new_tasks.md from the finished benches")
    conv = sub.add_parser("convert", help="write the tasks' splits under --work")
    conv.add_argument("tasks", nargs="*", help="default: every task")
    run = sub.add_parser("bench", help="convert, then run (or continue) one task's bench")
    run.add_argument("task")
    run.add_argument("--methods", help="comma-separated; default: the task's list")
    run.add_argument("--learning-rates", type=int, default=2)
    run.add_argument("--edge-rates", type=int, default=2)
    run.add_argument("--output", help="bench directory (default benchmarks/results/bench/<task>)")
    run.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    args = parser.parse_args(argv)

    if args.command == "list":
        for task in TASKS.values():
            print(f"{task.name:18} {task.model:13} {task.metric:14} ~{task.minutes:>3} min  {task.about}")
        return 0
    if args.command == "report":
        path = ROOT / "benchmarks" / "results" / "new_tasks.md"
        path.write_text(report())
        print(f"wrote {path}")
        return 0
    data, work = Path(args.data), work_dir(args.work)
    if args.command == "convert":
        for task in check_tasks(args.tasks or list(TASKS)):
            paths = convert(task, work, data)
            print(f"{task.name}: " + ", ".join(f"{split} {sum(1 for _ in p.open())}" for split, p in paths.items())
                  + f" -> {work / task.name}")
        return 0
    (task,) = check_tasks([args.task])
    paths = convert(task, work, data)
    if task.metric not in ("accuracy", "f1"):
        paths["test"] = _test_sample(paths["test"])
    output = Path(args.output) if args.output else BENCHES / task.name
    command = bench_command(task, paths, output, args.methods, args.learning_rates, args.edge_rates)
    needs = {name: str((data / task.source / file).resolve()) for name, file in task.env}
    env = {**os.environ, **needs, "PYTHONWARNINGS": "ignore"}
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in needs.items())
    print(f"$ {shown + ' ' if shown else ''}{shlex.join(command)}", flush=True)
    if args.dry_run:
        return 0
    started = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", *command], cwd=ROOT, env=env)
    minutes = (time.perf_counter() - started) / 60
    print(f"{task.name}: exit {code} after {minutes:.1f} min", flush=True)
    if code == 0:  # every planned run and every edge run has its record: make_profiles may ship it
        finished = output / FINISHED
        before = json.loads(finished.read_text()) if finished.is_file() else {}
        finished.write_text(json.dumps({
            "command": f"python benchmarks/new_tasks.py bench {task.name}" + (
                f" --methods {args.methods}" if args.methods else "") + (
                f" --learning-rates {args.learning_rates}" if args.learning_rates != 2 else ""),
            "autopeft_bench": (shown + " " if shown else "") + shlex.join(command),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall_minutes": round(minutes + (before.get("wall_minutes") or 0), 1),  # every call to this bench
            "train_minutes_all_runs": round(sum(r.get("train_seconds") or 0 for r in _records(output)) / 60, 1),
            "runs": len(_records(output))}, indent=2) + "\n")
    return code


def _records(output: Path) -> list[dict]:
    path = output / "records.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shipped_dataset(task: Task, converted: str) -> str:
    """How a shipped profile names a task's data: the data set it was converted from and how, not the
    converted file's path on the machine that benched it (which also names the source for
    ``autopeft.profiles.data_source``)."""
    return (f"../shared/data/{task.source}/ converted by `python benchmarks/new_tasks.py convert {task.name}` "
            f"({Path(converted).name})")


def is_unfinished(bench: Path) -> bool:
    """Whether ``bench`` is a bench of a task here that has not finished (no ``finished.json``): its records
    stay out of the shipped profiles until it has."""
    spec = bench / "bench.json"
    if not spec.is_file():
        return False
    benchmark = json.loads(spec.read_text()).get("benchmark")
    return benchmark in {t.benchmark for t in TASKS.values()} and not (bench / FINISHED).is_file()


if __name__ == "__main__":
    raise SystemExit(main())
