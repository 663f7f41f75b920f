"""The optional Go discovery service anchor: where the bench finds its binary, how its ratios
are shown and judged, and (given a build of it in $DISCOVERD_BENCH_GO_DISCOVERY) that it runs
in front of etcd 3.4's v2 API, seeded with the bench's token, under the bench's loads."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from bench import goanchor, load, report, run, v2anchor
from tests.bench.loads import load_result
from tests.binaries import stock_etcd
from tests.support import http

TOKEN = "0123456789abcdef0123456789abcdef"
X = report.TIMES


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    """An executable file (never run: the argument handling only checks it can be)."""
    path = tmp_path / "discovery"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("flag", "env", "chosen"),
    [
        (None, None, None),  # neither: the bench runs as before, the Go anchor not run
        ("flag", None, "flag"),
        (None, "env", "env"),
        ("flag", "env", "flag"),  # the flag wins over the environment
    ],
)
def test_the_binary_comes_from_the_flag_else_the_environment(
    monkeypatch, binary: Path, flag, env, chosen
) -> None:
    other = binary.with_name("other")
    other.write_bytes(binary.read_bytes())
    other.chmod(0o755)
    paths = {"flag": binary, "env": other}
    monkeypatch.delenv(goanchor.ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(goanchor.ENV, str(paths[env]))
    argv = [goanchor.FLAG, str(paths[flag])] if flag else []
    found = run.go_discovery(run.parser().parse_args(argv))
    assert found == (paths[chosen] if chosen else None)


@pytest.mark.parametrize(("mode", "why"), [(None, "no such file"), (0o644, "not executable")])
def test_a_binary_that_cannot_run_stops_the_bench_before_it_starts(
    monkeypatch, capsys, binary: Path, mode, why
) -> None:
    monkeypatch.delenv(goanchor.ENV, raising=False)
    if mode is None:
        binary.unlink()
    else:
        binary.chmod(mode)
    with pytest.raises(SystemExit) as exits:
        run.main([goanchor.FLAG, str(binary), "--skip-dns", "--skip-certs", "--skip-v3"])
    assert exits.value.code == 2
    assert f"{goanchor.FLAG} {binary}: {why}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "ours", "go", "shown", "met"),
    [
        ("get_dir", 6_000, 3_000, f"6,000 (0.30{X} etcd v2 · 2.00{X} Go service)", False),
        ("get_dir", 9_300, 3_100, f"9,300 (0.47{X} etcd v2 · 3.00{X} Go service)", True),
        ("new", 4_000, 2_000, f"4,000 (0.20{X} etcd v2 · 2.00{X} Go service)", True),
        ("new", 3_000, None, f"3,000 (0.15{X} etcd v2)", None),  # no Go: as without it
    ],
)
def test_v2_figures_show_and_are_judged_on_the_ratio_to_the_go_service(
    name, ours, go, shown, met
) -> None:
    anchor = {"version": "3.4.23", "throughput": {name: load_result(20_000, "GET", "/v2/keys/<t>")}}
    service = {"throughput": {name: load_result(go)}} if go else {"skipped": goanchor.NOT_GIVEN}
    rows = report.throughput_verdicts(name, load_result(ours), anchor, service)
    assert (rows[0]["discoverd"], rows[0]["met"]) == (shown, met)
    if go:
        assert rows[0]["target"] == f"issue: ≥ {report.GOALS[name]:g}{X} the Go service"
        assert rows[0]["anchor"].endswith(f" · Go service {go:,} (GET /<token>)")
        assert "Go: 1.00 / 2.00 ms · go-discovery 90 µs + etcd-3.4 30 µs" in rows[1]["anchor"]
    else:
        assert "stricter" in rows[0]["target"] and "Go" not in rows[0]["anchor"]
        assert "Go" not in rows[1]["anchor"]


@pytest.mark.parametrize(
    ("go", "shown", "met"),
    [
        ({"skipped": goanchor.NOT_GIVEN}, goanchor.NOT_GIVEN, None),
        ({"error": "GoAnchorError: it exited"}, "failed: GoAnchorError: it exited", False),
        (
            {"binary": "/opt/discovery", "server": goanchor.SERVER, "throughput": {}},
            "ran: /opt/discovery",
            None,
        ),
    ],
)
def test_a_row_says_whether_the_go_anchor_ran(go, shown, met) -> None:
    results = {"throughput": {"get_dir": load_result(6_000)}, "anchor_go": go}
    rows = report.verdicts(results)
    assert rows[-1]["metric"] == "v2 anchor: the Go discovery service"
    assert (rows[-1]["discoverd"], rows[-1]["met"]) == (shown, met)
    assert "not run: no --go-discovery PATH" in report.markdown(
        report.verdicts({"anchor_go": {"skipped": goanchor.NOT_GIVEN}})
    )


def test_without_the_http_phases_there_is_no_go_anchor_row() -> None:
    assert report.verdicts({"throughput": {}}) == []


def test_the_go_service_runs_in_front_of_etcd_3_4_under_the_bench_loads(tmp_path: Path) -> None:
    """Needs a build of the Go service: $DISCOVERD_BENCH_GO_DISCOVERY (skips without it)."""
    given = os.environ.get(goanchor.ENV)
    if not given:
        pytest.skip(f"SKIPPED LOUDLY: no Go discovery service build given ({goanchor.ENV})")
    etcd = stock_etcd("3.4")
    if load.wrk_path() is None:
        pytest.skip("SKIPPED LOUDLY: wrk is not installed (`make bench` installs it as root)")
    anchor, _ = asyncio.run(v2anchor.start(etcd, tmp_path / "etcd", TOKEN))
    try:
        go, info = asyncio.run(goanchor.start(Path(given), tmp_path / "go", anchor.url, TOKEN))
        try:
            assert info["seed"] == {
                "members": 3,
                "create_only": "201 then 412",
                "new": "200 <host>/<token>",
            }
            status, _, body = http("GET", f"{anchor.url}{goanchor.PREFIX}/{TOKEN}")
            assert status == 200 and len(json.loads(body)["node"]["nodes"]) == 3
            before = _tokens(anchor.url)
            for name in goanchor.LOADS:
                spec = goanchor.load(name, go.url, TOKEN, 1.0)
                result = asyncio.run(load.measure(spec, tmp_path))
                assert result.requests > 0 and result.non_2xx == result.socket_errors == 0
            assert len(_tokens(anchor.url) - before) >= result.requests  # one per /new
        finally:
            go.stop()
        assert not go.alive()
    finally:
        anchor.stop()


def _tokens(etcd_url: str) -> set[str]:
    status, _, body = http("GET", f"{etcd_url}{goanchor.PREFIX}")
    assert status == 200
    keys = {node["key"].rsplit("/", 1)[-1] for node in json.loads(body)["node"]["nodes"]}
    return {key for key in keys if re.fullmatch(r"[0-9a-f]{32}", key)}
