"""Typed errors. The CLI turns each into one line and an exit status; the SDK lets them propagate."""

from __future__ import annotations


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
