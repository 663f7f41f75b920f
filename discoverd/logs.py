"""Structured logging to stderr: one JSON object (or one plain line) per event, and one access
line per request at info. Discovery tokens are secrets: a filter on the root handler replaces
every token-shaped string in every record, whoever logged it (aiohttp quotes raw request lines
in its errors), with a short fingerprint (`{token:1a2b3c4d}`) that correlates requests without
revealing it: message, arguments, extra fields, exception text and stack alike."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

_TOKEN = re.compile(r"[0-9a-fA-F]{32}")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def redact(text: str) -> str:
    """Replace every token-shaped string with its fingerprint."""
    return _TOKEN.sub(lambda m: "{token:" + fingerprint(m.group().lower()) + "}", text)


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:8]


class RedactTokens(logging.Filter):
    """Rewrites a record so that it carries no token: its message is formatted and redacted,
    its exception rendered to redacted text (`exc_text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log what there is
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info:
            text = record.exc_text or _PLAIN.formatException(record.exc_info)
            record.exc_info, record.exc_text = None, redact(text)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


_PLAIN = logging.Formatter()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        )
        line = f"{self.formatTime(record)} {record.levelname.lower():7} {record.name}: "
        line += record.getMessage() + (f" {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # requests/urllib3 log connection details that can include etcd keys.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, redacted path, status, duration, client, bytes."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = redact(request.path_qs)
        self.logger.info(
            "%s %s %d",
            request.method,
            path,
            response.status,
            extra={
                "method": request.method,
                "path": path,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "remote": request.remote,
                "bytes": response.body_length,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
