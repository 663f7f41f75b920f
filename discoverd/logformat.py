"""How a log record is written: one JSON object per line (`JsonFormatter`, the default) or one
plain line (`TextFormatter`), each with the record's extra fields. Each also renders an access
line straight from its fields (`access_line`: the same text `format` gives for the equivalent
record), which `logs` uses on the event loop for the one line per request. Time stamps are
cached per second (and per millisecond for JSON) as whole tuples: the log writer thread and the
event loop both format."""

from __future__ import annotations

import json
import logging
import math
import time
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discoverd.logs import Access

# The attributes every LogRecord has: whatever else a record carries is an extra field.
STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
_MILLIS = tuple(f"{n:03d}" for n in range(1000))


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        # (second, its text) and (millisecond, the whole stamp): each replaced whole, as the
        # log writer and the event loop (access lines) both format.
        self._second: tuple[int, str] = (-1, "")
        self._last: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        millisecond = int(created * 1000)
        last = self._last
        if last[0] == millisecond:  # a busy server logs many lines a millisecond
            return last[1]
        second, millis = divmod(millisecond, 1000)
        base = self._second
        if base[0] != second:  # strftime once a second, not once a line
            base = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        stamp = f"{base[1]}.{_MILLIS[millis]}Z"
        self._last = (millisecond, stamp)
        return stamp

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str)

    def access_line(self, name: str, created: float, access: Access) -> str:
        """What `format` gives for `access.record(name)` created at `created`, without
        building the record or a dict."""
        method, path, status, duration_ms, remote, size = access
        if type(duration_ms) is not float or not math.isfinite(duration_ms):
            return self.format(access.record(name))  # not what the access logger makes
        return (
            f'{{"ts": "{self._timestamp(created)}", "level": "info", '
            f'"logger": {encode_basestring_ascii(name)}, '
            f'"msg": {encode_basestring_ascii(f"{method} {path} {status}")}, '
            f'"method": {encode_basestring_ascii(method)}, '
            f'"path": {encode_basestring_ascii(path)}, "status": {status:d}, '
            f'"duration_ms": {duration_ms!r}, '
            f'"remote": {"null" if remote is None else encode_basestring_ascii(remote)}, '
            f'"bytes": {"null" if size is None else f"{size:d}"}}}'
        )


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # replaced whole: see JsonFormatter

    def access_line(self, name: str, created: float, access: Access) -> str:
        """What `format` gives for `access.record(name)` created at `created`."""
        second = int(created)
        base = self._second
        if base[0] != second:  # strftime once a second, as formatTime does every line
            base = self._second = (
                second,
                time.strftime(self.default_time_format, self.converter(second)),
            )
        method, path, status, duration_ms, remote, size = access
        return (
            f"{base[1]},{_MILLIS[int((created - second) * 1000)]} info    {name}: "
            f"{method} {path} {status} method={method} path={path} status={status} "
            f"duration_ms={duration_ms} remote={remote} bytes={size}"
        )

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in STANDARD and not key.startswith("_")
        )
        line = f"{self.formatTime(record)} {record.levelname.lower():7} {record.name}: "
        line += record.getMessage() + (f" {extra}" if extra else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line
