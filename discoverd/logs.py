"""Structured logging to stderr: one JSON object (or one plain line) per event, and one access
line per request at info. Discovery tokens are secrets: a filter on the output handler replaces
every token-shaped string in every record, whoever logged it (aiohttp quotes raw request lines
in its errors), with a short fingerprint (`{token:1a2b3c4d}`) that correlates requests without
revealing it: message, arguments, extra fields, exception text and stack alike.

Logging must not cost the event loop: the root handler only freezes a record's message and
queues it (`BackgroundHandler`); a writer thread redacts, formats and writes whatever has queued
up, in one write per batch. An access line is built once, its path already redacted, and marked
so that it is not scanned again."""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import sys
import threading
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
        if getattr(record, "_redacted", False):  # built clean (the access log)
            return True
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
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
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


BATCH = 1024  # records formatted and written per write() at most


class BackgroundHandler(logging.Handler):
    """Hands records to a writer thread, which filters (redacts), formats and writes them to
    `target`'s stream in batches: whatever queued up while the last batch was written.

    The calling thread only freezes the message (`%` formatting of its arguments, which may be
    objects that change later) and enqueues; `close()` (and so `logging.shutdown()` at exit)
    writes what is left."""

    def __init__(self, target: logging.StreamHandler[Any]) -> None:
        super().__init__()
        self._target = target
        self._queue: queue.SimpleQueue[logging.LogRecord | threading.Event] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is thread-safe, and the writer is the only one to write.
        if self.filters and not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if record.args:
            try:
                record.msg, record.args = record.getMessage(), None
            except Exception:  # a bad format string: the writer logs what there is
                record.msg, record.args = f"{record.msg} {record.args}", None
        self._queue.put(record)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        written = threading.Event()
        self._queue.put(written)  # the writer sets it when it gets there
        return written.wait(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(5.0)
        super().close()

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = []
            reached = [item for item in batch if isinstance(item, threading.Event)]
            for record in batch:
                if isinstance(record, threading.Event) or record is _STOP:
                    continue
                try:
                    if self._target.filter(record):
                        lines.append(self._target.format(record))
                except Exception:
                    self._target.handleError(record)
            if lines:
                try:
                    self._target.stream.write("\n".join(lines) + "\n")
                    self._target.flush()
                except (OSError, ValueError):  # a closed or broken stderr: nowhere to say so
                    lines.clear()
            for event in reached:
                event.set()
            if any(record is _STOP for record in batch):
                return


_STOP = logging.LogRecord("discoverd.logs", logging.DEBUG, __file__, 0, "stop", None, None)


def setup(level: str, fmt: str) -> BackgroundHandler:
    """Log to stderr through a writer thread; returns the root handler (`close()` flushes)."""
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    output.addFilter(RedactTokens())
    handler = BackgroundHandler(output)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Fields no line shows, which every record would otherwise look up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # requests/urllib3 log connection details that can include etcd keys.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    return handler


class AccessRecord(logging.LogRecord):
    """An info record built directly: `LogRecord.__init__` (caller lookup, path and process
    names) costs more than the rest of an access line together, and none of it is shown. The
    fields other handlers may read (pytest's, an operator's) come from one constant."""

    def __init__(self, name: str, msg: str, fields: dict[str, Any]) -> None:
        now = time.time()
        self.name, self.msg, self.args = name, msg, None
        self.levelname, self.levelno = "INFO", logging.INFO
        self.created, self.msecs = now, (now - int(now)) * 1000
        self.exc_info = self.exc_text = self.stack_info = None
        self._redacted = True  # built clean: the output filter skips it
        self.__dict__.update(_UNSHOWN)
        self.__dict__.update(fields)


_UNSHOWN: dict[str, Any] = {
    key: value
    for key, value in {
        "pathname": "access", "filename": "access", "module": "access", "funcName": "log",
        "lineno": 0, "relativeCreated": 0.0, "thread": None, "threadName": None,
        "process": None, "processName": None, "taskName": None,
    }.items()
    if key in _STANDARD  # taskName exists from Python 3.12 on
}  # fmt: skip


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, redacted path, status, duration, client, bytes. The record
    is built clean (its path redacted here) and marked so that the output filter skips it."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = redact(request.path_qs)
        method, status = request.method, response.status
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(time * 1000, 2),
            "remote": request.remote,
            "bytes": response.body_length,
        }
        self.logger.handle(AccessRecord(self.logger.name, f"{method} {path} {status}", fields))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
