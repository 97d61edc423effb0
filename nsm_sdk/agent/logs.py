"""One structured line per event: `ts=... level=info agent=nsc event=link.established link=eth12 ...`.

logfmt keeps lines greppable by humans and parseable by log shippers without a JSON dependency.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
}


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\t\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def __init__(self, agent: str) -> None:
        super().__init__()
        self.agent = agent

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "agent": self.agent,
            "event": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            fields.update(extra)
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def setup_logging(agent: str, level: str = "INFO") -> None:
    """Route every logger to stderr in logfmt. Called once by each entrypoint."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(agent))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level.upper(), logging.INFO))
    # py-spiffe narrates at INFO ("Closing X.509 Source" on every retry); our identity.* events say what
    # matters, so its own lines show only when they are warnings or worse
    logging.getLogger("spiffe").setLevel(logging.WARNING)


class EventLog:
    """A logger bound to fixed fields (agent-side context such as the link or connection id)."""

    def __init__(self, logger: str, **fields: object) -> None:
        self._logger = logging.getLogger(logger)
        self._fields = dict(fields)

    def bind(self, **fields: object) -> EventLog:
        bound = EventLog(self._logger.name)
        bound._fields = {**self._fields, **fields}
        return bound

    def info(self, event: str, **fields: object) -> None:
        self._logger.info(event, extra={"fields": {**self._fields, **fields}})

    def warning(self, event: str, **fields: object) -> None:
        self._logger.warning(event, extra={"fields": {**self._fields, **fields}})

    def error(self, event: str, **fields: object) -> None:
        self._logger.error(event, extra={"fields": {**self._fields, **fields}})

    def debug(self, event: str, **fields: object) -> None:
        self._logger.debug(event, extra={"fields": {**self._fields, **fields}})
