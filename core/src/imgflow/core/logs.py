"""How every imgflow process logs (``IMGFLOW_LOG_FORMAT``): ``text`` lines for a terminal, or
``json``, one object a line for a log collector: ``time``, ``level``, ``logger``, ``message``, and
``jobId``, ``tenant`` or ``keyId`` when the line is about one (``bind``), ``exception`` with a
traceback.

Everything goes through the root logger's one handler on stderr: uvicorn's loggers and FastStream's
too, which otherwise bring handlers of their own (FastStream's colours its level names even when
stderr is no terminal).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

# importing it sets up its "faststream" logger, handler included, which configure() then takes over
import faststream  # noqa: F401

from imgflow.core.settings import LogFormat

TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_TAKEN_OVER = ("faststream", "uvicorn", "uvicorn.error", "uvicorn.access")

_context: ContextVar[dict[str, str]] = ContextVar("imgflow_log_context")


def bind(**fields: str | None) -> None:
    """Name what the lines logged from here on in this task (a request, a job) are about:
    ``jobId``, ``tenant``, ``keyId``; None leaves a field out."""
    _context.set({**_context.get({}), **{name: value for name, value in fields.items() if value is not None}})


class TextLines(logging.Formatter):
    """``TEXT``, then what the line is about: ``jobId=... tenant=...``."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)  # the traceback, if any, comes after
        about = " ".join(f"{name}={value}" for name, value in _context.get({}).items())
        return f"{line} {about}" if about else line


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context.get({}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: LogFormat, level: int = logging.INFO) -> None:
    """Log at ``level`` and above to stderr in ``log_format``; call once, first thing in main."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format is LogFormat.json else TextLines(TEXT))
    # on the handler too: a library may lower its own logger's level (FastStream sets its broker
    # logger's to the level of the per-message lines, imgflow.core.backends)
    handler.setLevel(level)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _TAKEN_OVER:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
