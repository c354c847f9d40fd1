"""Training data: read a file, detect its format, check every record, tokenise, split and pack.

Token classification data (named entities and other word tags) is read from CoNLL files (a word and
its tag per line, a blank line between sentences) or from records ``{"tokens": [...], "tags": [...]}``;
each word's first sub-token carries its tag and the rest are ignored by the loss, as in Hugging Face's
token-classification recipe.

Every problem with the user's file is a BadInputError naming the file and the line, so the CLI prints one
``path:line: problem`` line and exits 2. For Parquet files, and items of a ``.json`` list, the "line" is the
row number and the line the item starts on respectively.

Heavy libraries (datasets, torch, pyarrow) are imported inside the functions that need them, so that
``autopeft --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import hashlib
import io
import json
import logging
import math
import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from pydantic import BaseModel

from .errors import BadInputError, close_names, first_line, one_of
from .tasks import TASKS

if TYPE_CHECKING:  # pragma: no cover
    import datasets

logger = logging.getLogger(__name__)

FORMATS = ("text", "prompt-completion", "alpaca", "chat", "classification", "conll", "tagged-tokens")
#: the formats of token classification: both hold records {tokens, tags}, so train and validation may mix them
TOKEN_FORMATS = ("conll", "tagged-tokens")
#: file suffixes always read as CoNLL; a file of another suffix (other than .jsonl, .json, .csv, .tsv and
#: .parquet) is read as CoNLL when its first line is a word and a tag (WNUT-17's test file ends .annotated)
CONLL_SUFFIXES = (".conll", ".iob", ".iob2", ".bio", ".ner")
IGNORE_INDEX = -100  # the label value that PyTorch's cross-entropy (and transformers) skip
MAX_SPLIT_VALIDATION = 2000  # evaluating more than this buys little precision and costs every epoch

_ROLES = ("system", "user", "assistant")
_TEXT_FIELDS = ("text", "sentence", "content")  # SST-2 calls its text "sentence" (train) and "content" (dev)
_FORMAT_HELP = ("chat {messages}, alpaca {instruction, input, output}, prompt-completion {prompt, completion} "
                "or {question, answer}, classification {text|sentence|content, label}, tagged tokens "
                "{tokens, tags|ner_tags} (or a CoNLL file), or text {text}")
#: a tag of the IOB/IOBES schemes seqeval scores: O, or a position (B, I, E, S) and a type
_TAG = re.compile(r"O|[BIES]-\S+")
_TAG_HELP = "O, or B-, I-, E- or S- and an entity type, such as B-person"
# Lone surrogates can come from JSON escapes such as "\ud800"; tokenizers cannot encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT = re.compile(r"\s*-?\d+\s*")
_JSON_WS = re.compile(r"[ \t\n\r]*")


class TokenStats(BaseModel):
    """Token lengths of the training examples after tokenisation and truncation.

    Packed data describes the examples before packing; they are not truncated, since blocks hold their rest.
    """

    count: int
    total: int
    min: int
    mean: float
    median: float
    p95: int
    max: int
    truncated: int  # examples longer than max_length (cut to max_length)


class DataInfo(BaseModel):
    """What was trained on; lands in run.json."""

    path: str
    format: str  # one of FORMATS
    task: str  # one of autopeft.tasks.TASKS
    num_examples: int  # records in the training file, before max_examples and the split
    num_train: int  # training examples (not packed blocks: len(PreparedData.train) counts those)
    num_validation: int
    validation_source: str  # "file", "split", or "none" when there is no validation set
    labels: list[str] | None  # class names (seq-cls) or tags (token-cls) in label-id order, None for causal LM
    fingerprint: str  # sha256 hex of the training file's bytes
    chat_template: bool  # the tokenizer's chat template was used
    train_on_inputs: bool
    packed: bool
    tokens: TokenStats
    warnings: list[str] = []  # what makes the data weak for its task (see check_teachable)


@dataclasses.dataclass
class RecordSet:
    """Records as read, each with its line: what generation (task metrics) renders prompts from."""

    source: str
    format: str
    rows: list[tuple[int, dict]]


@dataclasses.dataclass
class PreparedData:
    train: "datasets.Dataset"
    validation: "datasets.Dataset | None"
    info: DataInfo
    label2id: dict[str, int] | None
    test: "datasets.Dataset | None" = None
    #: the validation and test records behind ``validation`` and ``test``, for generation
    validation_records: RecordSet | None = None
    test_records: RecordSet | None = None

    def label_frequency_loss(self) -> float | None:
        """Classification: the loss of answering every example (token classification: every word) with
        the training labels' frequencies, which a classifier reaches without reading the text. None for
        causal LM."""
        if self.info.task not in ("seq-cls", "token-cls") or not len(self.train):
            return None
        if self.info.task == "token-cls":
            counts = Counter(tag for row in self.train["labels"] for tag in row if tag != IGNORE_INDEX)
        else:
            counts = Counter(self.train["labels"])
        total = sum(counts.values())
        return -sum(n / total * math.log(n / total) for n in counts.values())

    def longest_row(self) -> int:
        """The longest training row a batch can hold, in tokens: a packed block where the data is packed
        (``info.tokens`` counts the examples before packing). What the cost model plans a step for."""
        lengths = self.train["length"] if len(self.train) else []
        return max(lengths, default=self.info.tokens.max)

    def validation_majority(self) -> float | None:
        """Classification: the share of the validation set's most frequent label, the accuracy of
        answering it every time. None for other tasks or without a validation set."""
        if self.info.task != "seq-cls" or self.validation is None:
            return None
        labels = self.validation["labels"]
        return max(Counter(labels).values()) / len(labels) if len(labels) else None


# --------------------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass
class _Loaded:
    """A checked data file: normalised records and the line each came from."""

    source: str
    format: str
    records: list[dict]
    lines: list[int]
    sha256: str


class _Problem(Exception):
    """A record-level problem; the caller adds file and line."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def read_records(path: str | os.PathLike) -> tuple[str, list[dict]]:
    """Read a data file and return (format, normalised records). Raises BadInputError naming file and line.

    Normalised shapes: text {text}; prompt-completion {prompt, completion}; alpaca {instruction, input,
    output}; chat {messages: [{role, content}]}; classification {text, label}; conll and tagged-tokens
    {tokens: [...], tags: [...]}.
    """
    loaded = _load(path)
    return loaded.format, loaded.records


def _load(path: str | os.PathLike) -> _Loaded:
    source = str(path)
    data = _read_bytes(Path(path), source)
    with _collector_paused():
        sentences = _conll_rows(data, Path(path), source)
        if sentences is not None:
            fmt, rows, records = "conll", sentences, [record for _, record in sentences]
        else:
            rows = _parse(data, Path(path), source)
            fmt, records = _normalise_all(rows, source)
        lines = [line for line, _ in rows]
    return _Loaded(source, fmt, records, lines, hashlib.sha256(data).hexdigest())


def served_task(fmt: str) -> str:
    """The task data of format ``fmt`` trains."""
    if fmt == "classification":
        return "seq-cls"
    return "token-cls" if fmt in TOKEN_FORMATS else "causal-lm"


def data_task(path: str | os.PathLike) -> str:
    """The task a data file's format serves (reads and checks the whole file)."""
    return served_task(_load(path).format)


@contextlib.contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector while building many small records.

    With torch and transformers imported the heap holds millions of objects, and the collections that
    67k new dicts trigger walk all of them: reading SST-2 took 0.65 s with the collector on, 0.2 s off.
    Records hold no reference cycles, so nothing is left for the collector to do afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_bytes(path: Path, source: str) -> bytes:
    if path.is_dir():
        raise BadInputError("is a directory; give a data file (.jsonl, .json, .csv, .tsv, .parquet or .conll)", source)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError("no such file", source) from None
    except OSError as exc:
        raise BadInputError(f"cannot read the file: {exc.strerror or exc}", source) from None
    if not data.strip():
        raise BadInputError("the file is empty", source)
    return data


def _parse(data: bytes, path: Path, source: str) -> list[tuple[int, Any]]:
    """(line, raw record) pairs; the suffix picks the parser and anything unknown is read as JSON Lines."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parse_parquet(path, source)
    text = _decode(data, source)
    if suffix == ".json":
        return _parse_json(text, source)
    if suffix in (".csv", ".tsv"):
        return _parse_delimited(text, source, "\t" if suffix == ".tsv" else ",")
    return _parse_jsonl(text, source)


def _decode(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadInputError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
                            source, line) from None
    return text.removeprefix("\ufeff")  # editors on Windows add a byte-order mark


#: the longest JSON Lines record read: far beyond any training example (max_length keeps a few
#: thousand tokens of it), and short of what a whole dataset on one line would be
MAX_RECORD_CHARS = 8 * 2**20


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key
        self.line: int | None = None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


# Python's json keeps the last of two equal keys without a word; a record with both is refused
_STRICT = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _duplicate(exc: _DuplicateKey, source: str, line: int | None) -> BadInputError:
    return BadInputError(f"duplicate key {exc.key!r} in one object; JSON would silently keep only the last, so "
                         f"remove one", source, line)


def _parse_jsonl(text: str, source: str) -> list[tuple[int, Any]]:
    from .sizes import format_size

    rows = []
    # split("\n"), not splitlines(): the latter also breaks on \x0b, \x1c, \u2028..., miscounting lines.
    for number, raw in enumerate(text.split("\n"), start=1):
        if len(raw) > MAX_RECORD_CHARS:
            raise BadInputError(f"a line of {format_size(len(raw.encode()))}: records over "
                                f"{format_size(MAX_RECORD_CHARS)} are refused (one JSON document in a file "
                                f"should be named .json)", source, number)
        line = raw.strip()
        if not line:
            continue
        try:
            record = _STRICT.decode(line)
        except _DuplicateKey as exc:
            raise _duplicate(exc, source, number) from None
        except (ValueError, RecursionError) as exc:
            raise BadInputError(f"not valid JSON ({_json_problem(exc)})", source, number) from None
        if not isinstance(record, dict):
            raise BadInputError(f"expected one JSON object {{...}} per line, found {_kind(record)}", source, number)
        rows.append((number, record))
    if not rows:
        raise BadInputError("the file is empty", source)
    return rows


def _parse_json(text: str, source: str) -> list[tuple[int, Any]]:
    """A list of records, or an object holding one list of records (or a single record)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _parse_jsonl(text, source)  # JSON Lines saved under a .json name
        raise BadInputError(f"not valid JSON ({_json_problem(exc)})", source, exc.lineno) from None
    except (ValueError, RecursionError) as exc:
        raise BadInputError(f"not valid JSON ({_json_problem(exc)})", source) from None
    start = _JSON_WS.match(text, 0).end()
    if isinstance(doc, dict) and _detect(doc) is not None:
        try:
            _STRICT.decode(text)
        except _DuplicateKey as exc:
            raise _duplicate(exc, source, None) from None
        return [(_line_at(text, start), doc)]
    if isinstance(doc, dict):
        lists = [key for key, value in doc.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise BadInputError(f"expected a list of records, or an object holding one list of them; found an "
                                f"object with {len(lists)} lists", source, _line_at(text, start))
        start = _object_value_pos(text, start, lists[0])
    elif not isinstance(doc, list):
        raise BadInputError(f"expected a list of records, found {_kind(doc)}", source, _line_at(text, start))
    try:
        rows = _array_items(text, start)
    except _DuplicateKey as exc:
        raise _duplicate(exc, source, exc.line) from None
    for line, record in rows:
        if not isinstance(record, dict):
            raise BadInputError(f"expected each record to be a JSON object {{...}}, found {_kind(record)}",
                                source, line)
    if not rows:
        raise BadInputError("the list of records is empty", source, _line_at(text, start))
    return rows


def _array_items(text: str, pos: int) -> list[tuple[int, Any]]:
    """Items of the (already validated) JSON array starting at ``pos``, each with the line it starts on."""
    items = []
    pos = _JSON_WS.match(text, pos + 1).end()
    while text[pos] != "]":
        try:
            value, end = _STRICT.raw_decode(text, pos)
        except _DuplicateKey as exc:
            exc.line = _line_at(text, pos)
            raise
        items.append((_line_at(text, pos), value))
        pos = _JSON_WS.match(text, end).end()
        if text[pos] == ",":
            pos = _JSON_WS.match(text, pos + 1).end()
    return items


def _object_value_pos(text: str, pos: int, key: str) -> int:
    """Where the value of ``key`` starts in the (already validated) JSON object at ``pos``; last one wins."""
    decoder = json.JSONDecoder()
    found = -1
    pos = _JSON_WS.match(text, pos + 1).end()
    while text[pos] != "}":
        name, end = decoder.raw_decode(text, pos)
        pos = _JSON_WS.match(text, _JSON_WS.match(text, end).end() + 1).end()  # past the colon
        if name == key:
            found = pos
        _, end = decoder.raw_decode(text, pos)
        pos = _JSON_WS.match(text, end).end()
        if text[pos] == ",":
            pos = _JSON_WS.match(text, pos + 1).end()
    return found


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _parse_delimited(text: str, source: str, delimiter: str) -> list[tuple[int, Any]]:
    """CSV/TSV with a header row; each record's line is the file line it starts on (the header is line 1)."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    table = _tsv_table(text) if kind == "TSV" else _csv_table(text, source)
    if not table:
        raise BadInputError("the file is empty", source)
    header_line, header = table[0]
    header = [name.strip() for name in header]
    if len(table) == 1:
        raise BadInputError("a header but no records", source, header_line)
    for line, fields in table:
        if len(fields) != len(header):
            raise BadInputError(f"expected {len(header)} fields like the header (line {header_line}), found "
                                f"{len(fields)}", source, line)
    rows = [(line, dict(zip(header, fields))) for line, fields in table[1:]]
    _labels_to_int(rows)
    return rows


def _tsv_table(text: str) -> list[tuple[int, list[str]]]:
    """TSV is read without quote handling, as GLUE's TSVs are meant to be (a sentence may open with a bare
    quote mark), so a record is one line: splitting lines is exact, and faster than the csv module."""
    return [(number, line.rstrip("\r").split("\t"))
            for number, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _csv_table(text: str, source: str) -> list[tuple[int, list[str]]]:
    """Quoted CSV fields may span lines, so each row's first line comes from the reader's line count."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    table = []
    consumed = 0
    try:
        for fields in reader:
            line, consumed = consumed + 1, reader.line_num
            if "".join(fields).strip():
                table.append((line, fields))
    except csv.Error as exc:
        raise BadInputError(f"not valid CSV ({exc})", source, consumed + 1) from None
    return table


def _labels_to_int(rows: list[tuple[int, dict]]) -> None:
    """CSV has no types: a label column of whole numbers is read as integers, so 10 sorts after 9."""
    if "label" not in rows[0][1]:
        return
    if all(map(_INT.fullmatch, (record["label"] for _, record in rows))):
        for _, record in rows:
            record["label"] = int(record["label"])


def _parse_parquet(path: Path, source: str) -> list[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for a corrupt or foreign file
        raise BadInputError(f"not a readable Parquet file ({first_line(exc)})", source) from None
    rows = list(enumerate(table.to_pylist(), start=1))
    if not rows:
        raise BadInputError("the file holds no rows", source)
    return rows


# --------------------------------------------------------------------------------------------------------
# CoNLL


def _conll_rows(data: bytes, path: Path, source: str) -> list[tuple[int, dict]] | None:
    """The sentences of a CoNLL file as (first line, {tokens, tags}), or None when the file is not CoNLL:
    a suffix of :data:`CONLL_SUFFIXES`, or any suffix but those of the other formats and a first line
    that is a word and a tag."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        return None
    text = _decode(data, source)
    if suffix not in CONLL_SUFFIXES and not _looks_like_conll(text):
        return None
    return _parse_conll(text, source)


def _conll_fields(line: str) -> list[str]:
    """A CoNLL line's columns: split at tabs where it has any (a word may then hold spaces), else at
    spaces. The word is the first column, the tag the last (CoNLL-2003 has POS and chunk tags between)."""
    return [f.strip() for f in line.split("\t")] if "\t" in line else line.split()


def _looks_like_conll(text: str) -> bool:
    for line in text.split("\n"):
        if line.strip() and not line.startswith("-DOCSTART-"):
            fields = _conll_fields(line.strip("\r"))
            return len(fields) >= 2 and bool(_TAG.fullmatch(fields[-1]))
    return False


def _parse_conll(text: str, source: str) -> list[tuple[int, dict]]:
    """Sentences: a word and its tag per line, sentences parted by lines of nothing but whitespace,
    ``-DOCSTART-`` lines skipped. Every line is checked: one line with no tag, or a tag outside the
    IOB/IOBES schemes, is an error naming the line."""
    rows: list[tuple[int, dict]] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                rows.append((start, {"tokens": tokens, "tags": tags}))
                tokens, tags = [], []
            continue
        fields = _conll_fields(line)
        if len(fields) < 2 or not fields[0] or not fields[-1]:
            what = "no word" if fields and not fields[0] else "no tag"
            raise BadInputError(f"{what} on this line ({line.strip()[:60]!r}): each line is a word and its tag "
                                f"(WORD<TAB>TAG), and a blank line parts sentences", source, number)
        if not _TAG.fullmatch(fields[-1]):
            raise BadInputError(f"tag {fields[-1][:40]!r} is not an entity tag ({_TAG_HELP})", source, number)
        if _SURROGATE.search(fields[0]):
            raise BadInputError("the word holds an invalid Unicode character (a lone surrogate)", source, number)
        if not tokens:
            start = number
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        rows.append((start, {"tokens": tokens, "tags": tags}))
    if not rows:
        raise BadInputError("the file holds no sentence (only -DOCSTART- lines or blank ones)", source)
    return rows


# --------------------------------------------------------------------------------------------------------
# Formats


def _detect(record: dict) -> str | None:
    """The format a record's keys suggest; the first record decides the file's format."""
    if "tokens" in record:
        return "tagged-tokens"
    if "messages" in record:
        return "chat"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record or "question" in record:
        return "prompt-completion"
    if "label" in record:
        return "classification"
    if "text" in record:
        return "text"
    return None


def _normalise_all(rows: list[tuple[int, Any]], source: str) -> tuple[str, list[dict]]:
    detected_at, first = rows[0]
    fmt = _detect(first)
    if fmt is None:
        keys = ", ".join(sorted(map(str, first))) or "none"
        raise BadInputError(f"cannot tell the data format from the keys ({keys}); expected {_FORMAT_HELP}",
                            source, detected_at)
    normalise = _NORMALISERS[fmt]
    records = []
    for line, raw in rows:
        try:
            records.append(normalise(raw))
        except _Problem as problem:
            raise BadInputError(_explain(problem, raw, fmt, detected_at), source, line) from None
    if fmt == "classification":
        _check_label_types(records, rows, source)
    return fmt, records


def _explain(problem: _Problem, raw: dict, fmt: str, detected_at: int) -> str:
    message = f"{problem} (the file is {fmt}, detected from line {detected_at})"
    other = _detect(raw)
    if problem.missing and other not in (None, fmt):
        message += f"; this record looks like {other}: one file must hold one format"
    return message


def _string(record: dict, key: str, missing_hint: str = "") -> str:
    if key not in record:
        raise _Problem(f"missing field {key!r}{missing_hint}", missing=True)
    return _checked_string(record[key], f"field {key!r}")


def _checked_string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Problem(f"{what} must be a string, found {_kind(value)}")
    if _SURROGATE.search(value):
        raise _Problem(f"{what} holds an invalid Unicode escape (a lone surrogate)")
    return value


def _normalise_text(record: dict) -> dict:
    return {"text": _string(record, "text")}


def _normalise_prompt_completion(record: dict) -> dict:
    return {"prompt": _aliased(record, "prompt", "question"), "completion": _aliased(record, "completion", "answer")}


def _aliased(record: dict, key: str, alias: str) -> str:
    """GSM8K and kin say question/answer for prompt/completion."""
    if key not in record and alias in record:
        return _string(record, alias)
    return _string(record, key, f" (or {alias!r})")


def _normalise_alpaca(record: dict) -> dict:
    # Many Alpaca exports write a null input where there is none; treat it like the empty string.
    extra = "" if record.get("input") is None else _string(record, "input")
    return {"instruction": _string(record, "instruction"), "input": extra, "output": _string(record, "output")}


def _normalise_chat(record: dict) -> dict:
    if "messages" not in record:
        raise _Problem("missing field 'messages'", missing=True)
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Problem(f"field 'messages' must be a non-empty list of {{role, content}}, found {_kind(messages)}")
    out = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _Problem(f"{where} must be an object {{role, content}}, found {_kind(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise _Problem(f"{where} is missing {key!r}", missing=True)
        role = _checked_string(message["role"], f"{where}.role")
        if role not in _ROLES:
            raise _Problem(f"{where}.role must be one of {', '.join(_ROLES)}, found {role!r}")
        out.append({"role": role, "content": _checked_string(message["content"], f"{where}.content")})
    if not any(message["role"] == "assistant" for message in out):
        raise _Problem("the conversation has no assistant turn, so there is nothing to learn")
    return {"messages": out}


def _normalise_classification(record: dict) -> dict:
    key = "text" if "text" in record else "sentence" if "sentence" in record else "content"
    text, label = record.get(key), record.get("label")
    # The common case in one expression: SST-2 has 67k records and all of them are checked.
    if type(text) is str and (type(label) is int or type(label) is str and label.strip()) \
            and not _SURROGATE.search(text) and (type(label) is int or not _SURROGATE.search(label)):
        return {"text": text, "label": label}
    return _classification_problem(record)


def _classification_problem(record: dict) -> dict:
    key = next((name for name in _TEXT_FIELDS if name in record), None)
    if key is None:
        raise _Problem("missing field 'text' (or 'sentence' or 'content')", missing=True)
    label = record.get("label", None)
    if "label" not in record:
        raise _Problem("missing field 'label'", missing=True)
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise _Problem(f"field 'label' must be an integer or a string, found {_kind(label)}")
    if isinstance(label, str) and not _checked_string(label, "field 'label'").strip():
        raise _Problem("field 'label' is empty")
    return {"text": _string(record, key), "label": label}


def _normalise_tagged_tokens(record: dict) -> dict:
    """{tokens, tags}; Hugging Face datasets call the tags ``ner_tags`` (as names here: their class ids
    mean nothing without the dataset's label names)."""
    key = "tags" if "tags" in record else "ner_tags"
    if key not in record:
        raise _Problem("missing field 'tags' (or 'ner_tags')", missing=True)
    tokens, tags = record["tokens"], record[key]
    if not isinstance(tokens, list) or not tokens:
        raise _Problem(f"field 'tokens' must be a non-empty list of words, found {_kind(tokens) if tokens != [] else 'an empty list'}")
    if not isinstance(tags, list):
        raise _Problem(f"field {key!r} must be a list of tags, found {_kind(tags)}")
    if len(tags) != len(tokens):
        raise _Problem(f"field 'tokens' holds {len(tokens)} words but {key!r} holds {len(tags)} tags; give one tag "
                       f"per word")
    for index, (token, tag) in enumerate(zip(tokens, tags)):
        if not isinstance(token, str) or not token.strip():
            raise _Problem(f"tokens[{index}] must be a non-empty word, found "
                           f"{_kind(token) if not isinstance(token, str) else repr(token)}")
        _checked_string(token, f"tokens[{index}]")
        if isinstance(tag, int) and not isinstance(tag, bool):
            raise _Problem(f"{key}[{index}] is a class id ({tag}); give the tag names ({_TAG_HELP}), which "
                           f"entity-level scoring needs")
        if not isinstance(tag, str) or not _TAG.fullmatch(tag):
            raise _Problem(f"{key}[{index}] is {_kind(tag) if not isinstance(tag, str) else repr(tag[:40])}, not an "
                           f"entity tag ({_TAG_HELP})")
    return {"tokens": tokens, "tags": tags}


_NORMALISERS: dict[str, Callable[[dict], dict]] = {
    "text": _normalise_text, "prompt-completion": _normalise_prompt_completion, "alpaca": _normalise_alpaca,
    "chat": _normalise_chat, "classification": _normalise_classification, "tagged-tokens": _normalise_tagged_tokens,
}


def _check_label_types(records: list[dict], rows: list[tuple[int, Any]], source: str) -> None:
    """Mixing 1 and "1" would give two classes that look alike; ask for one type instead."""
    first = type(records[0]["label"])
    for record, (line, _) in zip(records, rows):
        if type(record["label"]) is not first:
            raise BadInputError(f"field 'label' is {_kind(record['label'])} but the label on line {rows[0][0]} is "
                                f"{_kind(records[0]['label'])}; use one type for every label", source, line)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _json_problem(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return first_line(exc)



# --------------------------------------------------------------------------------------------------------
# Rendering causal-LM examples as text


def _last_assistant(messages: list[dict]) -> int:
    return max(i for i, message in enumerate(messages) if message["role"] == "assistant")


def _as_messages(record: dict, fmt: str) -> list[dict]:
    """The conversation up to and including the assistant turn to learn; later turns have no answer."""
    if fmt == "chat":
        messages = record["messages"]
        return messages[: _last_assistant(messages) + 1]
    return [{"role": "user", "content": _user_text(record, fmt)},
            {"role": "assistant", "content": _reply_text(record, fmt)}]


def _user_text(record: dict, fmt: str) -> str:
    if fmt == "alpaca":
        return record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
    return record["prompt"]


def _reply_text(record: dict, fmt: str) -> str:
    return record["output"] if fmt == "alpaca" else record["completion"]


def _uses_template(fmt: str, tokenizer) -> bool:
    return fmt in ("alpaca", "prompt-completion", "chat") and bool(getattr(tokenizer, "chat_template", None))


def _render(record: dict, fmt: str, tokenizer, use_template: bool, source: str, line: int) -> tuple[str, str]:
    """(prompt text, full text) of a causal-LM example; the prompt is what the loss skips."""
    if fmt == "text":
        return "", record["text"]
    if not use_template:
        return _render_plain(record, fmt)
    messages = _as_messages(record, fmt)
    try:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        # A conversation that opens with the assistant has no prompt: all of it is learned.
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True) \
            if len(messages) > 1 else ""
    except Exception as exc:  # jinja's raise_exception() and template bugs: name the record
        raise BadInputError(f"the tokenizer's chat template cannot render this record ({first_line(exc)})",
                            source, line) from None
    return prompt, full


def _render_plain(record: dict, fmt: str) -> tuple[str, str]:
    """Alpaca-style headers for a tokenizer without a chat template; the caller appends EOS."""
    if fmt == "prompt-completion":
        prompt, completion = record["prompt"], record["completion"]
        # Joined as written, except that "...May?" + "Natalia..." (GSM8K) gets a newline between them.
        if prompt and completion and not prompt[-1].isspace() and not completion[0].isspace():
            prompt += "\n"
        return prompt, prompt + completion
    if fmt == "alpaca":
        prompt = f"### Instruction:\n{record['instruction']}\n\n"
        if record["input"]:
            prompt += f"### Input:\n{record['input']}\n\n"
        prompt += "### Response:\n"
        return prompt, prompt + record["output"]
    messages = _as_messages(record, fmt)
    prompt = "".join(f"### {message['role'].title()}:\n{message['content']}\n\n" for message in messages[:-1])
    prompt += "### Assistant:\n"
    return prompt, prompt + messages[-1]["content"]


# --------------------------------------------------------------------------------------------------------
# Tokenising


@dataclasses.dataclass
class _Encoded:
    columns: dict[str, list]
    truncated: int = 0
    dropped: int = 0
    lost_words: int = 0  # token classification: words cut off at max_length (neither learned nor scored)
    vanished: list[str] = dataclasses.field(default_factory=list)  # words the tokenizer turns into no token

    def __len__(self) -> int:
        return len(self.columns["input_ids"])


def _encode_causal(rows: list[tuple[int, dict]], fmt: str, tokenizer, *, max_length: int | None,
                   train_on_inputs: bool, source: str) -> _Encoded:
    """input_ids, attention_mask, labels (prompt tokens -100) and length; ``max_length`` None: no cut."""
    use_template = _uses_template(fmt, tokenizer)
    prompts, fulls = [], []
    for line, record in rows:
        prompt, full = _render(record, fmt, tokenizer, use_template, source, line)
        prompts.append(prompt)
        fulls.append(full)
    # A rendered template carries its own BOS; plain text gets the tokenizer's special tokens.
    special = not use_template
    fast = getattr(tokenizer, "is_fast", False)
    batch = tokenizer(fulls, add_special_tokens=special, return_offsets_mapping=fast, verbose=False)
    prompt_tokens = None if fast else tokenizer(prompts, add_special_tokens=special, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = _Encoded({"input_ids": [], "attention_mask": [], "labels": [], "length": []})
    for i, ids in enumerate(batch["input_ids"]):
        ids = list(ids)
        if train_on_inputs or not prompts[i]:
            labels = list(ids)
        elif fast:
            # Mask by character position, which is exact whatever the tokenizer merges. A token that
            # straddles the seam (" four" after a prompt ending in a space) holds response text: learn it.
            cut = _common_prefix(prompts[i], fulls[i])
            labels = [IGNORE_INDEX if end <= cut else token
                      for token, (_, end) in zip(ids, batch["offset_mapping"][i])]
        else:
            cut = len(prompt_tokens[i])
            labels = [IGNORE_INDEX] * min(cut, len(ids)) + ids[cut:]
        if not use_template and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
            labels.append(eos)
        if max_length is not None and len(ids) > max_length:
            out.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        # The label at position 0 is never a target (the model shifts labels by one).
        if all(label == IGNORE_INDEX for label in labels[1:]):
            out.dropped += 1
            continue
        _append(out.columns, ids, labels)
    return out


def _common_prefix(prompt: str, full: str) -> int:
    """Characters of ``full`` that belong to the prompt. Usually all of ``prompt``; a few chat templates
    render earlier turns differently once a reply follows, and then the shared prefix is the best guess."""
    if full.startswith(prompt):
        return len(prompt)
    return len(os.path.commonprefix([prompt, full]))


def _append(columns: dict[str, list], ids: list[int], labels: list | int) -> None:
    columns["input_ids"].append(ids)
    columns["attention_mask"].append([1] * len(ids))
    columns["labels"].append(labels)
    columns["length"].append(len(ids))


def _encode_classification(rows: list[tuple[int, dict]], tokenizer, label2id: dict[str, int], *,
                           max_length: int, source: str) -> _Encoded:
    _refuse_unseen_labels(rows, list(label2id), source)
    texts = [record["text"] for _, record in rows]
    ids = [list(x) for x in tokenizer(texts, verbose=False)["input_ids"]]
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        # Re-tokenise only the long ones with truncation, so that end tokens such as [SEP] stay in place.
        cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length, verbose=False)
        for i, short in zip(long, cut["input_ids"]):
            ids[i] = list(short)
    out = _Encoded({"input_ids": [], "attention_mask": [], "labels": [], "length": []}, truncated=len(long))
    for tokens, (_, record) in zip(ids, rows):
        if not tokens:  # an empty text with a tokenizer that adds no [CLS]/[SEP]: nothing to classify
            out.dropped += 1
            continue
        _append(out.columns, tokens, label2id[str(record["label"])])
    return out


def _label_names(records: list[dict]) -> list[str]:
    """Sorted label names; integer labels sort as numbers, so 2 comes before 10."""
    return [str(label) for label in sorted({record["label"] for record in records})]


def _tag_names(records: Sequence[dict]) -> list[str]:
    """The tags of token-classification records: O first, then by entity type, B before I (E, S)."""
    tags = {tag for record in records for tag in record["tags"]}
    return sorted(tags, key=lambda tag: ("", "") if tag == "O" else (tag[2:], tag[0]))


def _encode_tokens(rows: list[tuple[int, dict]], tokenizer, label2id: dict[str, int], *, max_length: int,
                   source: str) -> _Encoded:
    """input_ids, attention_mask, labels (each word's tag on its first sub-token, -100 on the rest and on
    special tokens) and length. Sentences longer than ``max_length`` tokens are cut; the words cut off
    are counted in ``lost_words``."""
    if not getattr(tokenizer, "is_fast", False):
        raise BadInputError(f"token classification needs a fast tokenizer (one that maps tokens to words); "
                            f"{type(tokenizer).__name__} is not", source="--model")
    words = [record["tokens"] for _, record in rows]
    batch = tokenizer(words, is_split_into_words=True, verbose=False)
    long = [i for i, ids in enumerate(batch["input_ids"]) if len(ids) > max_length]
    cut = tokenizer([words[i] for i in long], is_split_into_words=True, truncation=True, max_length=max_length,
                    verbose=False) if long else None
    where = {i: k for k, i in enumerate(long)}
    out = _Encoded({"input_ids": [], "attention_mask": [], "labels": [], "length": []}, truncated=len(long))
    for i, (_, record) in enumerate(rows):
        encoding = cut if i in where else batch
        k = where.get(i, i)
        word_ids = encoding.word_ids(k)
        labels, seen = [], set()
        for word in word_ids:
            if word is None or word in seen:
                labels.append(IGNORE_INDEX)
            else:
                seen.add(word)
                labels.append(label2id[record["tags"][word]])
        # in a sentence cut short, the words after the last one with a token were cut off
        end = max(seen, default=-1) + 1 if i in where else len(record["tokens"])
        out.vanished += [record["tokens"][w] for w in range(end) if w not in seen]
        out.lost_words += len(record["tokens"]) - end
        if not seen:  # no word left a token (all cut, or all empty after tokenisation): nothing to learn
            out.dropped += 1
            continue
        _append(out.columns, list(encoding["input_ids"][k]), labels)
    return out


def _check_entities(records: Sequence[dict], part: str, source: str, hint: str) -> None:
    """Refuse a part of the data in which no word carries an entity tag: a training set so teaches a
    model to tag everything O, and a validation or test set so scores every model an F1 of 0."""
    words = sum(len(record["tags"]) for record in records)
    if all(tag == "O" for record in records for tag in record["tags"]):
        raise BadInputError(f"the {part} holds no entity: all {words} words of its {len(records)} sentences are "
                            f"tagged O; {hint}", source)


def _warn_untrained_tags(train: Sequence[dict], others: dict[str, Sequence[dict]]) -> None:
    """Tags of the validation or test data that the training data lacks: the model cannot learn them,
    and their entities count as missed."""
    known = {tag for record in train for tag in record["tags"]}
    for part, records in others.items():
        missing = Counter(tag for record in records for tag in record["tags"] if tag not in known)
        if missing:
            listed = ", ".join(f"{tag} ({n})" for tag, n in missing.most_common())
            logger.warning("the %s data has tags the training data lacks, which the model cannot learn: %s",
                           part, listed)


def _pack(encoded: _Encoded, block: int, tokenizer) -> _Encoded:
    """Concatenate examples (each ending in EOS) and cut into blocks of ``block`` tokens.

    Labels travel with their tokens, so masked prompts stay masked. The last block may be shorter. A block
    of prompt tokens alone has no loss and would only cost a step's compute, so it is left out.
    """
    eos = tokenizer.eos_token_id
    stream_ids: list[int] = []
    stream_labels: list[int] = []
    for ids, labels in zip(encoded.columns["input_ids"], encoded.columns["labels"]):
        stream_ids += ids
        stream_labels += labels
        if eos is not None and not _ends_with_eos(ids, eos, tokenizer):
            stream_ids.append(eos)
            stream_labels.append(eos)
    out = dataclasses.replace(encoded, columns={"input_ids": [], "attention_mask": [], "labels": [], "length": []})
    for start in range(0, len(stream_ids), block):
        labels = stream_labels[start:start + block]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            _append(out.columns, stream_ids[start:start + block], labels)
    return out


def _ends_with_eos(ids: list[int], eos: int, tokenizer) -> bool:
    """Whether an example already closes with EOS; chat templates often follow it with a newline
    (SmolLM2 ends a turn with "<|im_end|>\\n", and <|im_end|> is its EOS)."""
    if ids[-1] == eos:
        return True
    tail = ids[-3:]
    if eos not in tail:
        return False
    after = tail[len(tail) - tail[::-1].index(eos):]
    return not tokenizer.decode(after).strip()


def _token_stats(lengths: list[int], truncated: int) -> TokenStats:
    ordered = sorted(lengths)
    n = len(ordered)
    middle = n // 2
    median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    p95 = ordered[min(n - 1, max(0, -(-95 * n // 100) - 1))]  # nearest-rank percentile
    return TokenStats(count=n, total=sum(ordered), min=ordered[0], mean=sum(ordered) / n, median=median,
                      p95=p95, max=ordered[-1], truncated=truncated)


# --------------------------------------------------------------------------------------------------------
# Can the data teach the task?

#: a label with fewer training examples than this is warned about: too few to learn it from
FEW_EXAMPLES_PER_LABEL = 5
#: the most frequent training label this many times as frequent as the rarest is warned about
IMBALANCE_RATIO = 20


def check_teachable(task: str, fmt: str, train_rows: list[tuple[int, dict]], val_rows: list[tuple[int, dict]], *,
                    source: str, validation_source: str, validation_file: str | None = None,
                    population: Sequence[dict] = ()) -> list[str]:
    """Refuse data that cannot teach ``task``, before any model loads: a BadInputError with the counts
    (classification: a single label; every text the same). Return, as sentences (each also logged as a
    warning), what makes the data merely weak: rare or imbalanced labels, a text given two labels, a
    validation set without some label or holding training examples, causal-LM data whose responses are
    all one.

    :param validation_source: "file", "split" or "none", as :class:`DataInfo` says.
    :param validation_file: the validation file's path, where ``validation_source`` is "file".
    :param population: the records the rows were sampled from (``--max-examples``), to say what the
        sample lost.
    """
    if task == "seq-cls":
        found = _classification_problems(train_rows, val_rows, source=source,
                                         validation_source=validation_source, population=population)
        if validation_source == "file":
            _refuse_unseen_labels(val_rows, _label_names([r for _, r in train_rows]), validation_file or "")
    elif task == "causal-lm":
        found = _causal_lm_problems(fmt, train_rows)
    else:
        return []
    found += _validation_overlap(task, train_rows, val_rows)
    for warning in found:
        logger.warning("warning: %s", warning)
    return found


def _classification_problems(train_rows, val_rows, *, source: str, validation_source: str,
                             population: Sequence[dict]) -> list[str]:
    # a split was carved from the user's examples (stratified: each label keeps a training example)
    given = train_rows + val_rows if validation_source == "split" else train_rows
    counts = Counter(str(record["label"]) for _, record in train_rows)
    if len(counts) < 2:
        (label,) = counts
        kind = "examples" if validation_source == "split" else "training examples"
        what = f"all {len(given)} {kind}" if len(given) > 1 else f"the only one of the {kind}"
        others = sorted({str(record["label"]) for record in population} - {label})
        if others:  # the --max-examples sample lost them
            what += (f" of the --max-examples sample (of {len(population)} records, which also hold "
                     f"{', '.join(map(repr, others[:5]))}{'...' if len(others) > 5 else ''}; sample more)")
        raise BadInputError(f"{what} {'have' if len(given) > 1 else 'has'} label {label!r}; a classifier needs "
                            f"examples of at least two labels", source)
    texts = {record["text"] for _, record in train_rows}
    if len(texts) == 1:
        raise BadInputError(f"all {len(train_rows)} training examples have the same text ({next(iter(texts))[:40]!r}): "
                            f"a classifier learns from differences between texts", source)
    found = []
    rare = sorted((n, label) for label, n in counts.items() if n < FEW_EXAMPLES_PER_LABEL)
    if rare:
        listed = ", ".join(f"{label!r} ({n})" for n, label in rare)
        found.append(f"{'label' if len(rare) == 1 else 'labels'} {listed} {'has' if len(rare) == 1 else 'have'} fewer "
                     f"than {FEW_EXAMPLES_PER_LABEL} training examples: too few to learn "
                     f"{'it' if len(rare) == 1 else 'them'} from")
    (top, most), (low, least) = counts.most_common()[0], counts.most_common()[-1]
    if most >= IMBALANCE_RATIO * least:
        found.append(f"the training labels are imbalanced: {top!r} has {most} examples, {low!r} {least} "
                     f"({most / least:.0f} to 1); always answering {top!r} would score "
                     f"{most / sum(counts.values()):.0%} accuracy, so judge the run by macro_f1")
    by_text: dict[str, set] = {}
    for _, record in train_rows:
        by_text.setdefault(record["text"], set()).add(str(record["label"]))
    conflicting = [text for text, labels in by_text.items() if len(labels) > 1]
    if conflicting:
        found.append(f"{len(conflicting)} training {'text has' if len(conflicting) == 1 else 'texts have'} "
                     f"more than one label (e.g. {conflicting[0][:40]!r}): no model gets both right")
    if len(val_rows) >= len(counts):  # (a smaller one cannot hold every label)
        val_counts = Counter(str(record["label"]) for _, record in val_rows)
        absent = [label for label in counts if not val_counts[label]]
        if absent:
            listed = ", ".join(f"{label!r} ({_count(counts[label], 'training example')})" for label in absent)
            found.append(f"the validation set has no example of {listed}: its scores say nothing about "
                         f"{'that label' if len(absent) == 1 else 'those labels'}")
    return found


def _causal_lm_problems(fmt: str, train_rows) -> list[str]:
    if len(train_rows) < 2:
        return []
    if fmt == "text":
        texts = {record["text"] for _, record in train_rows}
        return [f"all {len(train_rows)} training examples are the same text"] if len(texts) == 1 else []
    replies = {_response_of(record, fmt) for _, record in train_rows}
    if len(replies) == 1:
        return [f"all {len(train_rows)} training examples have the same response ({next(iter(replies))[:40]!r}): "
                f"the model can only learn to give it, whatever the prompt"]
    return []


def _response_of(record: dict, fmt: str) -> str:
    if fmt == "chat":
        return record["messages"][_last_assistant(record["messages"])]["content"]
    return _reply_text(record, fmt)


def _validation_overlap(task: str, train_rows, val_rows) -> list[str]:
    """Validation examples that are training examples too: their scores measure memory."""
    if not val_rows:
        return []
    key = (lambda record: record["text"]) if task == "seq-cls" else (
        lambda record: json.dumps(record, sort_keys=True, ensure_ascii=False))
    trained = {key(record) for _, record in train_rows}
    shared = sum(key(record) in trained for _, record in val_rows)
    if not shared:
        return []
    return [f"{shared} of {len(val_rows)} validation examples also occur in the training data: on them, "
            f"validation measures memory rather than learning"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _refuse_unseen_labels(rows: list[tuple[int, dict]], labels: Sequence[str], source: str) -> None:
    """Labels of a validation or test file that training never shows: a classifier cannot predict
    them. The error names each with its count (and the closest training label), at its first line."""
    unseen: dict[str, list[int]] = {}
    for line, record in rows:
        if str(record["label"]) not in labels:
            unseen.setdefault(str(record["label"]), []).append(line)
    if not unseen:
        return

    def described(label: str) -> str:
        close = close_names(label, list(labels))
        return _count(len(unseen[label]), "example") + (f"; did you mean {one_of(close)}?" if close else "")

    if len(unseen) == 1:
        (label,) = unseen
        what = f"label {label!r} does not occur in the training data ({described(label)})"
    else:
        what = (f"labels {', '.join(f'{label!r} ({described(label)})' for label in unseen)} do not occur in the "
                f"training data")
    first = min(lines[0] for lines in unseen.values())
    raise BadInputError(f"{what}; a classifier cannot predict a label it never saw in training (training labels: "
                        f"{', '.join(labels)}; the first unseen one is on this line)", source, first)


# --------------------------------------------------------------------------------------------------------
# Preparing


def prepare_data(train_path: str | os.PathLike, tokenizer, *, task: str | None = None,
                 validation_path: str | os.PathLike | None = None, validation_fraction: float = 0.1,
                 max_length: int = 512, train_on_inputs: bool = False, pack: bool = False,
                 max_examples: int | None = None, seed: int = 0,
                 test_path: str | os.PathLike | None = None) -> PreparedData:
    """Read, check, tokenise and split a training file (and optional validation and test files).

    ``task`` defaults to what the format serves (classification -> "seq-cls", CoNLL and tagged tokens ->
    "token-cls", the rest -> "causal-lm").
    Without ``validation_path``, a seeded random ``validation_fraction`` of the training records (at least
    1, at most 2000) is held out. With fewer than 2 records, or ``validation_fraction=0``, nothing is held
    out: ``validation`` is None and the caller must not evaluate (no eval steps, no early stopping).
    ``max_examples`` keeps a seeded random sample of that many training records, before the split.
    ``pack`` (causal LM only) packs the whole (untruncated) training examples into ``max_length`` blocks;
    validation is never packed.
    ``test_path``: a file in the training file's format, encoded alike, scored once after training.
    The datasets have the columns input_ids, attention_mask, labels and length.

    Token classification: the tags are those of all the files given (so that every gold tag has an id);
    tags the training split lacks are warned about, and a training split, validation set or test file
    without any entity is refused.
    """
    _check_options(task, validation_fraction, max_length, max_examples)
    train = _load(train_path)
    task = _task_for(train, task)
    if pack and task != "causal-lm":
        raise BadInputError(f"packing applies to causal-LM data only; this is {task} data", source="pack")
    rows = [(train.lines[i], train.records[i]) for i in _sample(len(train.records), max_examples, seed)]
    if validation_path is not None:
        validation = _load(validation_path)
        _check_same_format(validation, train, "validation")
        train_rows, val_rows, val_source = rows, list(zip(validation.lines, validation.records)), "file"
        val_file = validation.source
    else:
        train_rows, val_rows = _split(rows, validation_fraction, seed,
                                      strata=(lambda row: row[1]["label"]) if task == "seq-cls" else None)
        val_source, val_file = ("split" if val_rows else "none"), train.source
    test = _load(test_path) if test_path is not None else None
    if test is not None:
        _check_same_format(test, train, "test")
    data_warnings = check_teachable(task, train.format, train_rows, val_rows, source=train.source,
                                    validation_source=val_source, validation_file=val_file,
                                    population=train.records)
    if validation_path is None and not val_rows and validation_fraction > 0 and len(rows) > 1:
        data_warnings.append("no validation split: every label has a single example, which training needs; "
                             "give a --validation file to evaluate")
        logger.warning("warning: %s", data_warnings[-1])

    label2id = None
    if task == "seq-cls":
        names = _label_names([record for _, record in train_rows])
        label2id = {name: index for index, name in enumerate(names)}
        encode = lambda part, source: _encode_classification(  # noqa: E731
            part, tokenizer, label2id, max_length=max_length, source=source)
    elif task == "token-cls":
        train_records, val_records = [r for _, r in train_rows], [r for _, r in val_rows]
        _check_entities(train_records, "training data" if val_source != "split" else "training split", train.source,
                        "tag the entities (B- and I- tags) so there is something to learn")
        if val_records:
            _check_entities(val_records, "validation file" if val_source == "file" else "validation split", val_file,
                            "entity F1 cannot be measured on it; give a --validation file with entities")
        if test is not None:
            _check_entities(test.records, "test file", test.source, "entity F1 cannot be measured on it")
        others = {"validation": val_records, "test": test.records if test is not None else []}
        _warn_untrained_tags(train_records, others)
        names = _tag_names([*train_records, *others["validation"], *others["test"]])
        label2id = {name: index for index, name in enumerate(names)}
        encode = lambda part, source: _encode_tokens(  # noqa: E731
            part, tokenizer, label2id, max_length=max_length, source=source)
    else:
        encode = lambda part, source, limit=max_length: _encode_causal(  # noqa: E731
            part, train.format, tokenizer, max_length=limit, train_on_inputs=train_on_inputs, source=source)

    # Packing cuts the stream into blocks anyway, so packed examples are not truncated (nothing is lost).
    train_enc = encode(train_rows, train.source, None) if pack else encode(train_rows, train.source)
    _warn_dropped(train_enc, len(train_rows), "training", max_length)
    if not len(train_enc):
        raise BadInputError(f"no training example has anything to learn within max_length={max_length} (empty, "
                            f"or the prompt fills it); raise max_length", train.source)
    val_enc = encode(val_rows, val_file) if val_rows else None
    if val_enc is not None:
        _warn_dropped(val_enc, len(val_rows), "validation", max_length)
        if not len(val_enc):
            raise BadInputError(f"no validation example has anything to learn within max_length={max_length}",
                                val_file)

    test_enc = None
    if test is not None:
        test_enc = encode(list(zip(test.lines, test.records)), test.source)
        _warn_dropped(test_enc, len(test.records), "test", max_length)
        if not len(test_enc):
            raise BadInputError(f"no test example has anything to learn within max_length={max_length}", test.source)

    stats = _token_stats(train_enc.columns["length"], train_enc.truncated)
    info = DataInfo(
        path=str(train_path), format=train.format, task=task, num_examples=len(train.records),
        num_train=len(train_enc), num_validation=len(val_enc) if val_enc else 0, validation_source=val_source,
        labels=list(label2id) if label2id else None, fingerprint=train.sha256,
        chat_template=task == "causal-lm" and _uses_template(train.format, tokenizer),
        train_on_inputs=train_on_inputs, packed=pack, tokens=stats, warnings=data_warnings)
    logger.info("%s: %s format, %d training and %d validation examples", train.source, train.format,
                info.num_train, info.num_validation)
    if pack:
        train_enc = _pack(train_enc, max_length, tokenizer)
    return PreparedData(train=_dataset(train_enc), validation=_dataset(val_enc) if val_enc else None, info=info,
                        label2id=label2id, test=_dataset(test_enc) if test_enc is not None else None,
                        validation_records=RecordSet(val_file, train.format, val_rows) if val_rows else None,
                        test_records=(RecordSet(test.source, test.format, list(zip(test.lines, test.records)))
                                      if test_path is not None else None))


def _check_options(task, validation_fraction, max_length, max_examples) -> None:
    if task is not None and task not in TASKS:
        raise BadInputError(f"task must be one of {', '.join(TASKS)}, got {task!r}", source="task")
    if not 0 <= validation_fraction < 1:
        raise BadInputError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}",
                            source="validation_fraction")
    if max_length < 2:  # a causal LM needs two tokens for one target
        raise BadInputError(f"max_length must be at least 2, got {max_length!r}", source="max_length")
    if max_examples is not None and max_examples < 1:
        raise BadInputError(f"max_examples must be at least 1, got {max_examples!r}", source="max_examples")


def _task_for(loaded: _Loaded, task: str | None) -> str:
    served = served_task(loaded.format)
    if task is not None and task != served:
        needs = {"seq-cls": "classification", "token-cls": "token-tagged (CoNLL)"}.get(task, "causal-LM")
        raise BadInputError(f"task {task} needs {needs} data, but the detected format is {loaded.format} (for "
                            f"{served})", loaded.source, loaded.lines[0])
    return served


def _check_same_format(other: _Loaded, train: _Loaded, part: str) -> None:
    """A validation or test file holds the training file's format (CoNLL and tagged-token records mix:
    both are a list of words and their tags)."""
    if other.format != train.format and not {other.format, train.format} <= set(TOKEN_FORMATS):
        raise BadInputError(f"the {part} file is {other.format} but the training file is {train.format}; both "
                            f"must hold one format", other.source, other.lines[0])


def _sample(total: int, max_examples: int | None, seed: int) -> list[int] | range:
    """Indices of a seeded random subset of ``total`` records, in file order."""
    if max_examples is None or max_examples >= total:
        return range(total)
    return sorted(random.Random(seed).sample(range(total), max_examples))


def _split(rows: list, fraction: float, seed: int, strata: Callable[[Any], Any] | None = None) -> tuple[list, list]:
    """(training rows, validation rows): a seeded random ``fraction`` held out. With ``strata`` (a row's
    class), each class is held out in its share and keeps at least one training row, so that a rare
    label cannot land in validation alone (where the model could not learn it)."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    size = min(MAX_SPLIT_VALIDATION, len(rows) - 1, max(1, round(fraction * len(rows))))
    if strata is None:
        held = set(random.Random(seed).sample(range(len(rows)), size))
    else:
        held = _stratified_sample([strata(row) for row in rows], size, seed)
    return ([row for i, row in enumerate(rows) if i not in held],
            [row for i, row in enumerate(rows) if i in held])


def _stratified_sample(keys: list, size: int, seed: int) -> set[int]:
    """Up to ``size`` indices, each key's share of them (largest remainders first), never all of a key's."""
    groups: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    order = sorted(groups, key=str)
    room = {key: len(groups[key]) - 1 for key in order}
    size = min(size, sum(room.values()))
    exact = {key: size * len(groups[key]) / len(keys) for key in order}
    quota = {key: min(room[key], math.floor(exact[key])) for key in order}
    by_remainder = sorted(order, key=lambda key: exact[key] - math.floor(exact[key]), reverse=True)
    left = size - sum(quota.values())
    while left > 0:  # ends: size is at most the total room
        for key in by_remainder:
            if left and quota[key] < room[key]:
                quota[key] += 1
                left -= 1
    rng = random.Random(seed)
    return {index for key in order for index in rng.sample(groups[key], quota[key])}


def _warn_dropped(encoded: _Encoded, total: int, part: str, max_length: int) -> None:
    if encoded.dropped:
        logger.warning("dropped %d of %d %s examples with nothing to learn (empty, or the prompt fills "
                       "max_length=%d)", encoded.dropped, total, part, max_length)
    if encoded.lost_words:
        logger.warning("%d words of the %s data are cut off at max_length=%d (in %d sentences): they are neither "
                       "learned nor scored; raise --max-length to keep them", encoded.lost_words, part, max_length,
                       encoded.truncated)
    if encoded.vanished:
        shown = ", ".join(ascii(word) for word in encoded.vanished[:3])
        logger.warning("%d words of the %s data become no token at all in this tokenizer (%s%s): they are neither "
                       "learned nor scored", len(encoded.vanished), part, shown,
                       ", ..." if len(encoded.vanished) > 3 else "")


def _dataset(encoded: _Encoded) -> "datasets.Dataset":
    import datasets

    return datasets.Dataset.from_dict(encoded.columns)


# --------------------------------------------------------------------------------------------------------
# Batching and sampling


@dataclasses.dataclass
class _Collator:
    """Right-pads a list of examples into tensors. A class, not a closure, so DataLoader workers can pickle it."""

    task: str
    pad_id: int

    def __call__(self, features: Sequence[dict]) -> dict:
        import torch

        ids = [_as_list(feature["input_ids"]) for feature in features]
        width = max(len(x) for x in ids)
        masks = [_as_list(feature["attention_mask"]) if "attention_mask" in feature else [1] * len(x)
                 for feature, x in zip(features, ids)]
        batch = {"input_ids": torch.tensor([_pad(x, width, self.pad_id) for x in ids], dtype=torch.long),
                 "attention_mask": torch.tensor([_pad(m, width, 0) for m in masks], dtype=torch.long)}
        if self.task in ("causal-lm", "token-cls"):
            labels = [_pad(_as_list(feature["labels"]), width, IGNORE_INDEX) for feature in features]
        else:
            labels = [int(feature["labels"]) for feature in features]
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return batch


def _as_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _pad(values: list, width: int, fill: int) -> list:
    return values + [fill] * (width - len(values))


def make_collator(task: str, tokenizer) -> Callable[[Sequence[dict]], dict]:
    """A collate function for a torch DataLoader or transformers Trainer (``data_collator=``).

    Pads input_ids with the pad token (EOS when the tokenizer has none: causal LMs often lack one),
    attention_mask with 0 and causal-LM and token-classification labels with -100, on the right; drops
    ``length``.
    """
    if task not in TASKS:
        raise BadInputError(f"task must be one of {', '.join(TASKS)}, got {task!r}", source="task")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return _Collator(task, 0 if pad is None else pad)  # padding is masked out, so any id would do


@dataclasses.dataclass
class GenerationExample:
    """A causal-LM example as generation sees it: the prompt rendered as in training, the reference answer."""

    prompt: str
    reference: str
    source: str
    line: int
    special_tokens: bool  # whether tokenising the prompt adds the tokenizer's special tokens (as training did)
    input: str = ""  # the user's text of the prompt, without template or headers (for reports)


def generation_examples(records: RecordSet, tokenizer, limit: int | None = None) -> list[GenerationExample]:
    """The first ``limit`` (all: None) of ``records`` as prompts to generate from, with their references:
    the completion, output or last assistant turn. Text records have no prompt to answer: refused."""
    if records.format not in ("prompt-completion", "alpaca", "chat"):
        raise BadInputError(f"task metrics score answers to prompts, and {records.format} records have none; "
                            f"use prompt-completion, alpaca or chat data", records.source)
    use_template = _uses_template(records.format, tokenizer)
    rows = records.rows if limit is None else records.rows[:max(0, limit)]
    examples = []
    for line, record in rows:
        prompt = _render(record, records.format, tokenizer, use_template, records.source, line)[0]
        if records.format == "chat":
            messages = _as_messages(record, "chat")
            reference = messages[-1]["content"]
            shown = next((m["content"] for m in reversed(messages[:-1]) if m["role"] == "user"), "")
        else:
            reference, shown = _reply_text(record, records.format), _user_text(record, records.format)
        examples.append(GenerationExample(prompt, reference, records.source, line, special_tokens=not use_template,
                                          input=shown))
    return examples


def sample_prompts(path_or_records: str | os.PathLike | Sequence[dict], n: int = 3, *,
                   tokenizer=None) -> list:
    """The first ``n`` prompts of causal-LM data, for sample generations.

    Chat records give their messages before the last assistant turn (a list of {role, content}); alpaca and
    prompt-completion records give the user's text; text records give their first ~20 words.
    Classification and token-classification data give []. With ``tokenizer``, every prompt is instead rendered as a string exactly
    as in training (chat template or plain headers), ready to feed to ``generate``.
    """
    if isinstance(path_or_records, (str, os.PathLike)):
        loaded = _load(path_or_records)
        fmt, rows = loaded.format, list(zip(loaded.lines, loaded.records))
    else:
        raw = list(enumerate(path_or_records, start=1))
        if not raw:
            return []
        for line, record in raw:
            if not isinstance(record, dict):
                raise BadInputError(f"expected each record to be a dict, found {_kind(record)}", "records", line)
        fmt, records = _normalise_all(raw, "records")
        rows = [(line, record) for (line, _), record in zip(raw, records)]
    if fmt == "classification" or fmt in TOKEN_FORMATS:
        return []
    source = str(path_or_records) if isinstance(path_or_records, (str, os.PathLike)) else "records"
    use_template = tokenizer is not None and _uses_template(fmt, tokenizer)
    prompts: list = []
    for line, record in rows[:max(0, n)]:
        if fmt == "text":
            prompts.append(" ".join(record["text"].split()[:20]))
        elif tokenizer is not None:
            prompts.append(_render(record, fmt, tokenizer, use_template, source, line)[0])
        elif fmt == "chat":
            prompts.append(_as_messages(record, fmt)[:-1])
        else:
            prompts.append(_user_text(record, fmt))
    return prompts
