"""Typed errors. The CLI turns each into one line and an exit status; the SDK lets them propagate."""

from __future__ import annotations

import difflib
from typing import Iterable


class AutopeftError(Exception):
    """Anything autopeft reports as a failure. Exit status 1 unless a subclass says otherwise."""

    exit_code = 1


class BadInputError(AutopeftError):
    """The user's input (a file, an option, a setting) is wrong. Exit status 2.

    ``source`` names the file or option and ``line`` the line in it, when known, so that the
    message reads ``file:line: problem``.
    """

    exit_code = 2

    def __init__(self, problem: str, source: str | None = None, line: int | None = None):
        self.problem = problem
        self.source = source
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.source or ""
        if where and self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.problem}" if where else self.problem


class UnknownMethodError(BadInputError):
    """No installed plugin provides the method asked for."""


class UnknownMetricError(BadInputError):
    """No installed plugin provides the task metric asked for."""


class MethodUnavailableError(AutopeftError):
    """The method is installed but cannot run here (for instance it needs CUDA)."""

    exit_code = 2


class PluginError(AutopeftError):
    """A plugin broke its contract (raised, or returned the wrong type) while doing its job."""


def remote_code_refused(exc: BaseException, model: str) -> BadInputError | None:
    """The one-line refusal for transformers' error about a model that ships its own Python code
    (raised when ``trust_remote_code`` is off), or None for any other error."""
    text = str(exc)
    if "trust_remote_code" not in text and "contains custom code" not in text:
        return None
    return BadInputError(f"{model} comes with its own Python code, which runs only if you trust it: read it, "
                         f"then pass --trust-remote-code", source="--model")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name): enough for a one-line error."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


def close_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names most like ``name`` (case aside), best first; empty when none is close."""
    by_key = {k.lower(): k for k in dict.fromkeys(known)}
    matcher = difflib.SequenceMatcher(b=name.lower())
    scored = []
    for key in by_key:
        matcher.set_seq1(key)
        if matcher.real_quick_ratio() >= 0.6 and matcher.quick_ratio() >= 0.6 and matcher.ratio() >= 0.6:
            scored.append((_edits(name.lower(), key), sorted(key) != sorted(name.lower()), -matcher.ratio(), key))
    # fewest typing slips first ("loar" is one swap from "lora", two from "loha"), the same letters
    # before others ("lora" before "lokr"), then the most alike
    return [by_key[key] for *_, key in sorted(scored)[:n]]


def _edits(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that turn ``a`` into ``b``."""
    previous2, previous = [], list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


#: up to this many known names are listed in full when no known name is close to the one given
LISTED_IN_FULL = 16


def unknown_names(kind: str, names: Iterable[str], known: Iterable[str], *, source: str | None = None,
                  listing: str | None = None, error: type[BadInputError] | None = None) -> BadInputError:
    """The one-line refusal of names the user typed that name nothing: each unknown name with the
    closest known ones ("did you mean"), and where one has none close, the known names (or, when
    there are more than :data:`LISTED_IN_FULL`, ``listing``: where to see them).

    :param kind: what the names are, singular ("method", "plugin", "setting").
    :param source: the option or file the names came from, as the user typed it ("--methods").
    :param listing: where the known names are listed, e.g. "`autopeft methods` lists them".
    """
    names = list(dict.fromkeys(names))
    known = list(dict.fromkeys(known))
    hints = {name: close_names(name, known) for name in names}
    if len(names) == 1:
        name = names[0]
        problem = f"unknown {kind} {name!r}" + (f"; did you mean {one_of(hints[name])}?" if hints[name] else "")
    else:
        problem = f"unknown {kind}s " + ", ".join(
            f"{name!r}" + (f" (did you mean {one_of(hints[name])}?)" if hints[name] else "") for name in names)
    if not all(hints.values()):
        if not known:
            problem += f"; there is no {kind} to choose from"
        elif len(known) <= LISTED_IN_FULL or not listing:
            problem += f"; known: {', '.join(known)}"
        else:
            problem += f"; {listing}"
    return (error or BadInputError)(problem, source=source)


def check_names(kind: str, names: Iterable[str], known: Iterable[str], *, source: str | None = None,
                listing: str | None = None, error: type[BadInputError] | None = None) -> None:
    """Raise :func:`unknown_names`' refusal for the ``names`` that are not among ``known``."""
    known = list(known)
    unknown = [name for name in names if name not in set(known)]
    if unknown:
        raise unknown_names(kind, unknown, known, source=source, listing=listing, error=error)


def one_of(names: list[str]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``: names offered as alternatives."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
