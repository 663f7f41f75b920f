"""Logs are structured and never carry a token."""

from __future__ import annotations

import io
import json
import logging

import pytest
from aiohttp.test_utils import TestServer

from discoverd import logformat, logs
from discoverd.app import build_app

TOKEN = "3e86b59982e49066c5d813af1c2e2579"


@pytest.mark.parametrize("padding", [0, 200, 20_000])  # cached (short) and not (long)
def test_redact_replaces_every_token_in_any_text(padding):
    other = "ABCDEF0123456789abcdef0123456789"
    text = f"/{TOKEN}/x?{'y' * padding}&t={other}"
    mark = "{token:" + logs.fingerprint(TOKEN) + "}"
    expected = f"/{mark}/x?{'y' * padding}&t={{token:{logs.fingerprint(other.lower())}}}"
    assert logs.redact(text) == expected
    assert logs.redact(text) == expected  # the same again (from the cache when short)


def test_redact_replaces_tokens_with_a_stable_fingerprint():
    redacted = logs.redact(f"/{TOKEN}/_config/size?x=1")
    assert TOKEN not in redacted
    assert redacted == "/{token:" + logs.fingerprint(TOKEN) + "}/_config/size?x=1"
    assert logs.redact(f"/{TOKEN.upper()}") == logs.redact(f"/{TOKEN}")


def test_json_lines_carry_the_extra_fields():
    record = logging.LogRecord("discoverd.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.status = 201
    line = json.loads(logformat.JsonFormatter().format(record))
    assert line["msg"] == "hello you" and line["status"] == 201 and line["level"] == "info"


async def test_access_log_has_one_line_per_request_without_the_token(
    aiohttp_client, settings, caplog
):
    access = logging.getLogger("discoverd.access.test")
    caplog.set_level(logging.INFO, logger="discoverd.access.test")  # aiohttp checks at start
    server = TestServer(build_app(settings))
    await server.start_server(access_log_class=logs.AccessLogger, access_log=access)
    client = await aiohttp_client(server)
    url = await (await client.post("/new")).text()
    token = url.rsplit("/", 1)[1]
    await client.get(f"/{token}/_config/size")
    await client.put(f"/{token}/1", data={"value": "m=http://10.0.0.1:2380"})
    await client.get("/health")  # the previous line is logged once its response is done
    lines = [r for r in caplog.records if r.name == "discoverd.access.test"]
    assert [(r.method, r.status) for r in lines][:3] == [("POST", 200), ("GET", 200), ("PUT", 201)]
    assert all(token not in r.getMessage() and token not in r.path for r in lines)
    assert lines[1].path == "/{token:" + logs.fingerprint(token) + "}/_config/size"


def test_the_root_filter_redacts_whatever_a_record_carries():
    try:
        raise ValueError(f"bad line b'GET /{TOKEN} HTTP/9.9'")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "from %s", (f"/{TOKEN}",), exc_info
    )
    record.path = f"/{TOKEN}/1"
    assert logs.RedactTokens().filter(record)
    for formatter in (logformat.JsonFormatter(), logformat.TextFormatter()):
        line = formatter.format(record)
        assert TOKEN not in line
        assert "{token:" + logs.fingerprint(TOKEN) + "}" in line
        assert "ValueError: bad line" in line  # the exception is still there, redacted


def test_the_background_writer_redacts_formats_and_flushes_in_order():
    stream = io.StringIO()
    output = logging.StreamHandler(stream)
    output.setFormatter(logformat.JsonFormatter())
    output.addFilter(logs.RedactTokens())
    handler = logs.BackgroundHandler(output)
    log = logging.getLogger("discoverd.test.writer")
    log.propagate, log.handlers = False, [handler]
    log.setLevel(logging.INFO)
    try:
        items = [{"n": 1}]  # a mutable argument: the line shows it as it was when logged
        log.info("token %s in %s", TOKEN, items)
        items.append({"n": 2})
        for n in range(500):
            log.info("line %d", n)
        fields = {"path": "/{token:x}/", "status": 200}
        log.handle(logs.AccessRecord(log.name, "GET /{token:x}/ 200", fields))
        assert handler.drain()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert lines[0]["msg"] == "token {token:" + logs.fingerprint(TOKEN) + "} in [{'n': 1}]"
        assert [line["msg"] for line in lines[1:501]] == [f"line {n}" for n in range(500)]
        assert lines[-1]["status"] == 200 and lines[-1]["level"] == "info"
        assert set(lines[-1]) == {"ts", "level", "logger", "msg", "path", "status"}  # no noise
        log.info("the last words")
    finally:
        handler.close()  # what logging.shutdown() does at exit: everything queued is written
    assert json.loads(stream.getvalue().splitlines()[-1])["msg"] == "the last words"


ACCESSES = [
    logs.Access("GET", "/{token:1a2b3c4d}/_config/size", 200, 0.12, "127.0.0.1", 1),
    logs.Access("PUT", '/a"b\\c\x01\u00e9\U0001f600?x=%22', 400, 12.0, None, 0),
    logs.Access("GET", "/", 503, float("nan"), "::1", None),
    logs.Access("GET", "/", 200, 1e-05, "unix:/x", 10**30),
]


@pytest.mark.parametrize("formatter_class", [logformat.JsonFormatter, logformat.TextFormatter])
@pytest.mark.parametrize("access", ACCESSES)
@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5004])
def test_an_access_line_is_what_the_formatter_makes_of_the_record(
    formatter_class, access, created, monkeypatch
):
    monkeypatch.setattr(logs.time, "time", lambda: created)
    record = access.record("discoverd.access")
    formatter = formatter_class()
    expected = formatter.format(record)
    assert formatter.access_line("discoverd.access", created, access) == expected
    assert formatter.access_line("discoverd.access", created, access) == expected  # cached stamp


def _writer(stream: io.StringIO) -> logs.BackgroundHandler:
    output = logging.StreamHandler(stream)
    output.setFormatter(logformat.JsonFormatter())
    output.addFilter(logs.RedactTokens())
    return logs.BackgroundHandler(output)


async def test_as_run_an_access_line_is_rendered_without_a_record(aiohttp_client, settings):
    stream = io.StringIO()
    handler = _writer(stream)
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    made = []
    real = logs.AccessRecord.__init__

    def spy(self: logs.AccessRecord, *args: object) -> None:
        made.append(args)
        real(self, *args)  # type: ignore[arg-type]

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(logs.AccessRecord, "__init__", spy)
            server = TestServer(build_app(settings))
            access = logging.getLogger("discoverd.access")
            await server.start_server(access_log_class=logs.AccessLogger, access_log=access)
            client = await aiohttp_client(server)
            url = await (await client.post("/new")).text()
            token = url.rsplit("/", 1)[1]
            await client.get(f"/{token}/_config/size")
            await client.get("/health")  # the previous line is logged once its response is done
            logging.getLogger("discoverd.test").warning("after %s", token)
            assert handler.drain()
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
        handler.close()
    assert made == []  # no record was built for an access line
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access_lines = [line for line in lines if line["logger"] == "discoverd.access"]
    assert [(line["method"], line["status"]) for line in access_lines][:2] == [
        ("POST", 200),
        ("GET", 200),
    ]
    assert access_lines[1]["path"] == "/{token:" + logs.fingerprint(token) + "}/_config/size"
    assert token not in stream.getvalue()
    assert lines[-1]["msg"] == "after {token:" + logs.fingerprint(token) + "}"  # in order


@pytest.mark.parametrize(
    "change",
    ["second root handler", "handler on the logger", "filter on the logger", "no propagation"],
)
def test_an_access_line_goes_through_logging_when_anything_else_would_see_it(change):
    handler = _writer(io.StringIO())
    root = logging.getLogger()
    access = logging.getLogger("discoverd.access.renders")
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        assert handler.renders(access)
        other = logging.NullHandler()
        if change == "second root handler":
            root.handlers.append(other)
        elif change == "handler on the logger":
            access.addHandler(other)
        elif change == "filter on the logger":
            access.addFilter(logging.Filter("nothing"))
        else:
            access.propagate = False
        assert not handler.renders(access)
    finally:
        root.handlers[:] = saved
        access.handlers.clear()
        access.filters.clear()
        access.propagate = True
        handler.close()
