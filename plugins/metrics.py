"""The built-in task metrics, registered through the same hook a third-party metric uses.

- ``exact_match``: the answer equals the reference, ignoring case and runs of whitespace.
- ``final_number``: the answer's final number equals the reference's (GSM8K's ``#### 72``, SVAMP's ``72.0``).
- ``json_valid``: the answer parses as JSON.
- ``json_equal``: the answer parses as JSON equal to the reference's.
- ``sql_execution``: the answer, run as a query on a SQLite database, returns the reference's result.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections import Counter
from decimal import Decimal, InvalidOperation

from autopeft import Metric, hookimpl

#: a number as people write it: an optional sign (not after a letter or digit: ``10-3`` is 10 and 3),
#: thousands commas (``1,234``), decimals; not the tail of a word or of a dotted version
_NUMBER = re.compile(r"(?<![\w.])(-)?\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
#: GSM8K's answer marker: the number after the last one is the answer
ANSWER_MARK = "####"
_FENCE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


class ExactMatch(Metric):
    name = "exact_match"
    description = "The answer equals the reference, ignoring case and runs of whitespace."

    def score_one(self, prediction: str, reference: str) -> float:
        return float(_normalised(prediction) == _normalised(reference))


def final_number(text: str) -> Decimal | None:
    """The number a text answers with: the first number after its last ``####`` where it has one (GSM8K's
    convention, so that text generated past the answer does not count), else its last number. Commas
    between thousands and a leading ``$`` are read through; None when it holds no number."""
    if ANSWER_MARK in text:
        found = _NUMBER.search(text.rpartition(ANSWER_MARK)[2])
    else:
        found = None
        for found in _NUMBER.finditer(text):
            pass
    if found is None:
        return None
    try:
        value = Decimal(found.group(2).replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern admits only digits
        return None
    return -value if found.group(1) else value


class FinalNumber(Metric):
    name = "final_number"
    description = ("The answer's final number (after '####' where there is one) equals the reference's; "
                   "1,234 is 1234 and 72.0 is 72.")

    def score_one(self, prediction: str, reference: str) -> float:
        expected, got = final_number(reference), final_number(prediction)
        if expected is None or got is None:
            return 0.0
        return float(abs(got - expected) <= Decimal("1e-6") * max(Decimal(1), abs(expected)))

    def reference_problem(self, reference: str) -> str | None:
        if final_number(reference) is None:
            return f"the reference holds no number for final_number to compare ({reference[:60]!r})"
        return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str):
    """``text`` (or the inside of a Markdown code fence around it) as JSON; ValueError when it is not.
    NaN and Infinity, which Python's reader accepts, are refused: JSON has no such values."""
    text = text.strip()
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text, parse_constant=_reject_constant)


def json_equal(a, b) -> bool:
    """Equality of parsed JSON values in JSON's types: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


class JsonValid(Metric):
    name = "json_valid"
    description = "The answer is valid JSON (any JSON value; a Markdown code fence around it is allowed)."

    def score_one(self, prediction: str, reference: str) -> float:
        try:
            parse_json(prediction)
        except ValueError:
            return 0.0
        return 1.0


class JsonEqual(Metric):
    name = "json_equal"
    description = "The answer parses as JSON equal to the reference's (key order and spacing aside)."

    def score_one(self, prediction: str, reference: str) -> float:
        try:
            got = parse_json(prediction)
        except ValueError:
            return 0.0
        return float(json_equal(got, parse_json(reference)))

    def reference_problem(self, reference: str) -> str | None:
        try:
            parse_json(reference)
        except ValueError as exc:
            return f"the reference is not JSON, which json_equal needs ({exc})"
        return None


#: where ``sql_execution`` finds its database when none is given to it
SQL_DATABASE_ENV = "AUTOPEFT_SQL_DATABASE"


class SqlExecution(Metric):
    """Text to SQL judged by what a query returns rather than how it is written: the prediction and the
    reference run on the same SQLite database (opened read-only) and score 1 when they return the same
    rows (in the same order where the reference has ORDER BY, as a multiset otherwise). A prediction that
    fails to run, runs past ``timeout`` seconds or is more than one statement scores 0.

    The database is ``database``, else the file named by ``$AUTOPEFT_SQL_DATABASE`` (how the CLI passes
    it: ``AUTOPEFT_SQL_DATABASE=geo.sqlite autopeft train ... --metric sql_execution``)."""

    name = "sql_execution"
    description = (f"The answer, run as a query on the SQLite database ${SQL_DATABASE_ENV} names (read-only), "
                   "returns the same rows as the reference; a query that fails scores 0.")

    def __init__(self, database: str | os.PathLike | None = None, timeout: float = 5.0):
        self.database = database
        self.timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._opened: str | None = None
        self._reference_rows: dict[str, object] = {}

    def database_path(self) -> str | None:
        path = self.database if self.database is not None else os.environ.get(SQL_DATABASE_ENV)
        return str(path) if path else None

    def _connect(self) -> sqlite3.Connection:
        path = self.database_path()
        if path is None:
            raise ValueError(f"sql_execution needs a SQLite database: set ${SQL_DATABASE_ENV} to its file")
        if not os.path.isfile(path):
            raise ValueError(f"sql_execution's database {path} is not a file")
        if self._connection is None or self._opened != path:
            self._connection = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True,
                                               check_same_thread=False)
            self._opened, self._reference_rows = path, {}
        return self._connection

    def rows(self, query: str):
        """What ``query`` returns: a list (ordered query) or a Counter of rows. Raises sqlite3.Error or
        ValueError when it does not run."""
        connection = self._connect()
        deadline = time.monotonic() + self.timeout
        connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            rows = connection.execute(query.strip().rstrip(";")).fetchall()
        finally:
            connection.set_progress_handler(None, 0)
        return rows if re.search(r"\border\s+by\b", query, re.IGNORECASE) else Counter(rows)

    def score_one(self, prediction: str, reference: str) -> float:
        if reference not in self._reference_rows or self._opened != self.database_path():
            self._reference_rows[reference] = self.rows(reference)
        expected = self._reference_rows[reference]
        try:
            got = self.rows(prediction)
        except Exception:  # a generated query can fail in any way (sqlite3.Warning is not an sqlite3.Error)
            return 0.0
        if isinstance(expected, Counter) and isinstance(got, list):
            got = Counter(got)
        elif isinstance(expected, list) and isinstance(got, Counter):
            return 0.0  # the reference's order is part of its answer
        return float(got == expected)

    def reference_problem(self, reference: str) -> str | None:
        try:
            self._reference_rows[reference] = self.rows(reference)
        except ValueError as exc:
            return str(exc)
        except sqlite3.Error as exc:
            return f"the reference does not run on {self.database_path()} ({exc})"
        return None


@hookimpl
def register_metrics(register):
    for metric in (ExactMatch(), FinalNumber(), JsonValid(), JsonEqual(), SqlExecution()):
        register(metric)
