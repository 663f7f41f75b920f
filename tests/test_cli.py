"""The command line: settings errors, and `discoverd new` against a running service."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from discoverd.cli import main
from discoverd.directory.rules import cluster_label as label
from discoverd.store.embedded import free_port


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--listen", "nonsense"], "invalid listen"),
        (["serve", "--etcd", "localhost:2379"], "invalid etcd"),
        (["serve", "--token-ttl", "forever"], "invalid token_ttl"),
        (["serve", "--max-size", "0"], "invalid max_size"),
        (["serve", "--max-tokens", "0"], "invalid max_tokens"),
        (["serve", "--new-per-hour", "-1"], "invalid new_per_hour"),
    ],
)
def test_serve_refuses_bad_settings(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


async def test_new_prints_a_discovery_url(client, capsys):
    server = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["new", "-q", "--size", "5", "--server", server]) == 0
    url = capsys.readouterr().out.strip()
    assert re.fullmatch(r"http://discoverd\.test:8087/[0-9a-f]{32}", url)
    token = url.rsplit("/", 1)[1]
    assert (await (await client.get(f"/{token}/_config/size")).json())["node"]["value"] == "5"


async def test_new_reports_a_refusal(client, capsys):
    server = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["new", "--size", "0", "--server", server]) == 1
    assert "size must be a whole number from 1 to 99" in capsys.readouterr().err


def test_new_reports_an_unreachable_server(capsys):
    assert main(["new", "--timeout", "1s", "--server", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach" in capsys.readouterr().err


async def test_new_prints_what_the_nodes_need(client, capsys):
    server = str(client.make_url("")).rstrip("/")
    argv = ["new", "--size", "3", "--name", "web" + os.urandom(3).hex(), "--server", server]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    token = re.search(r"discovery URL: http://discoverd\.test:8087/([0-9a-f]{32})", out).group(1)
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert f"CA sha256:     {view['ca_sha256']}" in out
    assert f"DNS domain:    {label(token)}.etcd.internal, web" in out
    assert "DISCOVERD_PIP_SPEC=discoverd==" in out and f"DISCOVERD_TOKEN={token}" in out


@pytest.mark.parametrize(("flags", "status"), [([], 403), (["--allow-root"], 200)])
async def test_new_allows_etcds_root_only_when_asked(client, capsys, tmp_path, flags, status):
    from tests.certs.test_handlers import csr, enroll

    server = str(client.make_url("")).rstrip("/")
    assert await asyncio.to_thread(main, ["new", "-q", *flags, "--server", server]) == 0
    token = capsys.readouterr().out.strip().rsplit("/", 1)[1]
    assert (await enroll(client, token, "root", csr(tmp_path, "root"), "client")).status == status
