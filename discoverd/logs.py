"""Structured logging to stderr: one JSON object (or one plain line) per event, formatted by
`logformat`, and one access line per request at info. Discovery tokens are secrets: a filter
on the output handler replaces every token-shaped string in every record, whoever logged it
(aiohttp quotes raw request lines in its errors), with a short fingerprint (`{token:1a2b3c4d}`)
that correlates requests without revealing it: message, arguments, extra fields, exception
text and stack alike.

Logging must not cost the event loop: the root handler only freezes a record's message and
queues it (`BackgroundHandler`); a writer thread redacts, formats and writes whatever has queued
up, in one write per batch. An access line, one per request, is the hot case: when the access
logger's records would reach only that handler (the service as run), the line is rendered on the
spot by the output formatter's `access_line` (the same text `format` gives for the equivalent
record, with no `LogRecord`, no logger dispatch and nothing left for the writer but the write)
and queued as text; otherwise (a test's capture handler, say) it goes through logging as a
record built clean, its path already redacted, marked so that it is not scanned again."""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import queue
import re
import sys
import threading
import time
from typing import Any, NamedTuple

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from discoverd.logformat import STANDARD, JsonFormatter, TextFormatter

_TOKEN = re.compile(r"[0-9a-fA-F]{32}")


def redact(text: str) -> str:
    """Replace every token-shaped string with its fingerprint."""
    if len(text) <= _CACHED_LENGTH:  # a request path: the same few are read over and over
        return _redact_cached(text)
    return _redact(text)


def _redact(text: str) -> str:
    return _TOKEN.sub(lambda m: "{token:" + fingerprint(m.group().lower()) + "}", text)


_CACHED_LENGTH = 160  # 8,192 texts of at most this length: ~3 MB at most
_redact_cached = functools.lru_cache(maxsize=8192)(_redact)


@functools.lru_cache(maxsize=4096)  # the same few tokens are read over and over
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
            if key not in STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


_PLAIN = logging.Formatter()


BATCH = 1024  # records formatted and written per write() at most
LINGER = 0.005  # seconds the writer waits after a wake-up for more to write


class BackgroundHandler(logging.Handler):
    """Hands records to a writer thread, which filters (redacts), formats and writes them to
    `target`'s stream in batches: whatever queued up while the last batch was written.

    The calling thread only freezes the message (`%` formatting of its arguments, which may be
    objects that change later) and enqueues; `close()` (and so `logging.shutdown()` at exit)
    writes what is left. `access()` queues an access line already rendered. Records and lines
    share one queue, so the output keeps the order they were logged in; the writer is woken
    once per batch, not once per item."""

    def __init__(self, target: logging.StreamHandler[Any]) -> None:
        super().__init__()
        self._target = target
        self._access_line = getattr(target.formatter, "access_line", None)
        self._items: collections.deque[_Item] = collections.deque()
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._woken = False  # a wake-up is pending: the writer has not started draining yet
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
        self._put(record)

    def renders(self, logger: logging.Logger) -> bool:
        """Whether `logger`'s info records reach this handler and nothing else: then an access
        line can be rendered by `access` instead of travelling as a record."""
        if self._access_line is None or self.filters:
            return False
        node: logging.Logger | None = logger
        while node is not None and node.parent is not None:  # up to the root
            if node.handlers or node.filters or not node.propagate:
                return False
            node = node.parent
        return node is not None and node.handlers == [self] and not node.filters

    def access(self, name: str, access: Access) -> None:
        """Queue `access`'s info line for logger `name`, rendered now by the output's
        formatter. The caller redacted it (the output filter does not see this line)."""
        assert self._access_line is not None
        self._put(self._access_line(name, time.time(), access))

    def _put(self, item: _Item) -> None:
        self._items.append(item)
        if not self._woken:
            self._woken = True
            self._wake.put(None)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        written = threading.Event()
        self._put(written)  # the writer sets it when it gets there
        return written.wait(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._put(_STOP)
            self._thread.join(5.0)
        super().close()

    def _write(self) -> None:
        while True:
            self._wake.get()
            # Let a busy loop's lines gather: one wake-up and one write per LINGER, not per
            # line (each wake-up costs the event loop a GIL hand-off).
            time.sleep(LINGER)
            self._woken = False  # before draining: whatever comes after this wakes us again
            while self._items:
                if self._batch():
                    return

    def _batch(self) -> bool:
        """Write up to BATCH queued items; True once the stop item was reached."""
        lines: list[str] = []
        reached: list[threading.Event] = []
        stop = False
        for _ in range(BATCH):
            try:
                item = self._items.popleft()
            except IndexError:
                break
            if isinstance(item, str):
                lines.append(item)
            elif isinstance(item, threading.Event):
                reached.append(item)
            elif item is _STOP:
                stop = True
                break
            else:
                try:
                    if self._target.filter(item):
                        lines.append(self._target.format(item))
                except Exception:
                    self._target.handleError(item)
        if lines:
            try:
                self._target.stream.write("\n".join(lines) + "\n")
                self._target.flush()
            except (OSError, ValueError):  # a closed or broken stderr: nowhere to say so
                pass
        for event in reached:
            event.set()
        return stop


_Item = logging.LogRecord | threading.Event | str
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


class Access(NamedTuple):
    """One request as its access line shows it, the path already redacted."""

    method: str
    path: str
    status: int
    duration_ms: float
    remote: str | None
    bytes: int | None

    def record(self, name: str) -> AccessRecord:
        return AccessRecord(name, f"{self.method} {self.path} {self.status}", self._asdict())


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
    if key in STANDARD  # taskName exists from Python 3.12 on
}  # fmt: skip


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, redacted path, status, duration, client, bytes. Rendered
    on the spot and queued as text when the root handler is the only one its records would
    reach (`BackgroundHandler.renders`); otherwise a record built clean (its path redacted
    here) and marked so that the output filter skips it."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        access = Access(
            request.method,
            redact(request.path_qs),
            response.status,
            round(time * 1000, 2),
            request.remote,
            response.body_length,
        )
        root = logging.root.handlers
        handler = root[0] if len(root) == 1 else None
        if isinstance(handler, BackgroundHandler) and handler.renders(self.logger):
            handler.access(self.logger.name, access)
        else:
            self.logger.handle(access.record(self.logger.name))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
