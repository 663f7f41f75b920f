"""The bench measures what it says: discoverd at its defaults, a v2 anchor whose `new` load
really writes a fresh key per request, waits that do not hit the per-address cap, CSRs that pass
the IP SAN policy, and ratios and costs computed as documented."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
from pathlib import Path

import pytest

from bench import accesslog, load, report, servers, signing, v2anchor, waits
from discoverd.listener import PER_ADDRESS
from tests.bench.loads import load_result
from tests.binaries import stock_etcd
from tests.support import http

TOKEN = "0123456789abcdef0123456789abcdef"


def test_discoverd_runs_at_its_default_log_level_and_format(tmp_path: Path) -> None:
    server = servers.Discoverd(tmp_path, "discoverd", "120s")
    flags = server.serve_flags("http://127.0.0.1:1", servers.serve_help())
    assert not {"--log-level", "--log-format"} & set(flags)
    assert all(why for _, why in flags.values()), "every differing flag says why"


def test_log_problems_are_what_is_above_info(tmp_path: Path) -> None:
    server = servers.Discoverd(tmp_path, "discoverd", "120s")
    lines = [
        {"level": "info", "logger": "discoverd.access", "msg": "GET /health 200"},
        {"level": "warning", "msg": "refusing connections"},
        {"level": "error", "msg": "etcd unavailable"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\nTraceback (most recent call last):\n"
    server.log_path.write_text(text)
    problems = server.log_problems()
    assert [p.split('"msg": ')[-1] for p in problems[:2]] == [
        '"refusing connections"}',
        '"etcd unavailable"}',
    ]
    assert problems[2].startswith("Traceback")
    assert server.log_tail(1) == ["Traceback (most recent call last):"]


def test_waits_come_from_sources_under_the_per_address_cap() -> None:
    count = 10_000
    sources = max(waits.SESSIONS, -(-count // waits.PER_SOURCE))
    addresses = {waits.source(n) for n in range(sources)}
    assert len(addresses) == sources
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)
    assert -(-count // sources) <= waits.PER_SOURCE < PER_ADDRESS


def test_each_member_enrolls_with_its_own_ip_san() -> None:
    csrs = [f"csr{i}" for i in range(4)]
    bodies = [json.loads(body) for body in signing.enrollments(["t1", "t2"], csrs, 7)]
    assert [(b["token"], b["name"], b["csr"]) for b in bodies[:3]] == [
        ("t1", "n0", "csr0"),
        ("t2", "n0", "csr0"),
        ("t1", "n1", "csr1"),
    ]
    ips = {signing.member_ip(i) for i in range(signing.TOKEN_SIZE)}
    assert len(ips) == signing.TOKEN_SIZE and signing.member_ip(0) == signing.SAN_IP
    with pytest.raises(ValueError, match="CSRs"):
        signing.enrollments(["t1"], csrs, 5)


def _run(side_rps: float, cpu_us: float, log: float) -> dict[str, float]:
    requests = side_rps * 5
    return {
        "requests": requests,
        "duration_s": 5.0,
        "cpu_s": cpu_us * requests / 1e6,
        "log_bytes_per_request": log,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "non_2xx": 0,
        "socket_errors": 0,
    }


def test_access_log_cost_per_request() -> None:
    runs = {"default": [_run(5_000, 120, 280)] * 2, "warning": [_run(10_000, 70, 0)] * 2}
    found = accesslog.summarize(runs, 5.0)
    assert found["default"]["requests_per_s"] == 5_000
    assert found["ratio"] == 0.5
    assert found["wall_us_per_request"] == 100.0  # 1e6 / 5,000 - 1e6 / 10,000
    assert found["cpu_us_per_request"] == 50.0
    assert found["default"]["log_bytes_per_request"] == 280


@pytest.mark.parametrize(
    ("name", "ours", "theirs", "shown", "met"),
    [
        ("get_dir", 6_000, 20_000, "6,000 (0.30{x} etcd v2)", None),  # below: not judged
        ("get_dir", 61_000, 20_000, "61,000 (3.05{x} etcd v2)", True),  # the 3 times
        ("new", 4_100, 2_000, "4,100 (2.05{x} etcd v2)", True),  # and its twice for /new
        ("new", 3_000, None, "3,000", None),  # no anchor: no ratio
    ],
)
def test_v2_figures_are_ratios_to_the_anchor(name, ours, theirs, shown, met) -> None:
    anchor = {"version": "3.4.23", "throughput": {}}
    if theirs is not None:
        anchor["throughput"][name] = load_result(theirs, "GET", "/v2/keys/<token>")
    row = report.throughput_verdicts(name, load_result(ours), anchor)[0]
    assert (row["discoverd"], row["met"]) == (shown.format(x=report.TIMES), met)
    assert "stricter" in row["target"]


def test_v2_anchor_new_load_writes_a_fresh_key_per_request(tmp_path: Path) -> None:
    """etcd 3.4's v2 API seeded like discoverd; wrk's `new` script: every PUT creates."""
    binary = stock_etcd("3.4")
    if load.wrk_path() is None:
        pytest.skip("SKIPPED LOUDLY: wrk is not installed (`make bench` installs it as root)")
    anchor, info = asyncio.run(v2anchor.start(binary, tmp_path / "anchor", TOKEN))
    try:
        assert info["seed"] == {"members": 3, "create_only": "201 then 412"}
        status, _, body = http("GET", f"{anchor.url}/v2/keys/{TOKEN}/_config/size")
        assert (status, json.loads(body)["node"]["value"]) == (200, "3")
        spec = v2anchor.load("new", anchor.url, TOKEN, 1.0, "t")
        result = asyncio.run(load.measure(spec, tmp_path))
        assert result.requests > 0 and result.non_2xx == 0 and result.socket_errors == 0
        status, _, body = http("GET", f"{anchor.url}/v2/keys/anchor")
        keys = [node["key"] for node in json.loads(body)["node"]["nodes"]]
        made = [key for key in keys if re.fullmatch(r"/anchor/t-\d+-\d+", key)]
        assert len(made) >= result.requests  # wrk counts the requests it saw answered
    finally:
        anchor.stop()
    assert not anchor.alive()


def test_v2_anchor_is_skipped_with_a_reason_without_etcd(monkeypatch) -> None:
    monkeypatch.setattr(v2anchor, "DEBIAN_ETCD", Path("/nonexistent/etcd"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "etcd-server" in (v2anchor.missing() or "")


@pytest.mark.parametrize(
    ("one_token", "shown", "met"),
    [
        ({"signings_per_s": 300.0, "ratio_to_interleaved": 0.6}, "300 (0.60{x} interleaved)", True),
        ({"signings_per_s": 100.0, "ratio_to_interleaved": 0.2}, "100 (0.20{x} interleaved)", False),
        ({"error": "POST /api/v1/certs, one token: 3 of 90 responses were not 2xx"}, "failed", False),
    ],
)  # fmt: skip
def test_one_token_enrollments_are_judged_against_the_interleaved_rate(one_token, shown, met):
    rows = report.certs_verdicts({"discoverd": {}, "one_token": one_token})
    row = next(row for row in rows if "one token" in row["metric"])
    assert row["discoverd"].startswith(shown.format(x=report.TIMES)) and row["met"] is met
