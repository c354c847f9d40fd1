"""The built-in task metrics, registered through the same hook a third-party metric uses.

- ``exact_match``: the answer equals the reference, ignoring case and runs of whitespace.
- ``final_number``: the answer's final number equals the reference's (GSM8K's ``#### 72``, SVAMP's ``72.0``).
- ``json_valid``: the answer parses as JSON.
- ``json_equal``: the answer parses as JSON equal to the reference's.
"""

from __future__ import annotations

import json
import re
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


@hookimpl
def register_metrics(register):
    for metric in (ExactMatch(), FinalNumber(), JsonValid(), JsonEqual()):
        register(metric)
