"""Logs are structured and never carry a token."""

from __future__ import annotations

import json
import logging

from aiohttp.test_utils import TestServer

from discoverd import logs
from discoverd.app import build_app

TOKEN = "3e86b59982e49066c5d813af1c2e2579"


def test_redact_replaces_tokens_with_a_stable_fingerprint():
    redacted = logs.redact(f"/{TOKEN}/_config/size?x=1")
    assert TOKEN not in redacted
    assert redacted == "/{token:" + logs.fingerprint(TOKEN) + "}/_config/size?x=1"
    assert logs.redact(f"/{TOKEN.upper()}") == logs.redact(f"/{TOKEN}")


def test_json_lines_carry_the_extra_fields():
    record = logging.LogRecord("discoverd.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.status = 201
    line = json.loads(logs.JsonFormatter().format(record))
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
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        line = formatter.format(record)
        assert TOKEN not in line
        assert "{token:" + logs.fingerprint(TOKEN) + "}" in line
        assert "ValueError: bad line" in line  # the exception is still there, redacted


def test_the_background_writer_redacts_formats_and_flushes_in_order():
    import io

    stream = io.StringIO()
    output = logging.StreamHandler(stream)
    output.setFormatter(logs.JsonFormatter())
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
