"""Error roots of the protocol layer.

Every error says whether retrying can help (`temporary`), so drivers decide retry versus exit without
string matching.
"""

from __future__ import annotations


class NsmError(Exception):
    """Root of every error raised by nsm_sdk."""

    temporary: bool = False


class ConfigError(NsmError):
    """Bad configuration: one variable, its value and what is wrong with it. Never retried."""

    def __init__(self, variable: str, value: str | None, problem: str) -> None:
        self.variable = variable
        self.value = value
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        shown = "<unset>" if self.value is None else repr(self.value)
        return f"{self.variable}={shown}: {self.problem}"


class ProtocolError(NsmError):
    """A message breaks an NSM rule (bad path, unknown mechanism, ...). The peer must change, not us."""


class TemporaryError(NsmError):
    """A fault that may go away on its own (peer down, deadline exceeded): retry with backoff."""

    temporary = True
