"""`discoverd join` speaks the node's etcd version: v3 discovery for etcd >= 3.6, the v2 URL for
<= 3.5, never both, and nothing at all when it cannot tell the version. The real binaries answer
`etcd --version`, and a real etcd 3.6 / 3.7 bootstraps from nothing but the etcd.env it wrote.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from discoverd.app import build_app
from discoverd.cli import main
from discoverd.config import HostPort
from discoverd.join import JoinRequest, discovery_env, etcd_version
from discoverd.store.embedded import free_port
from tests.binaries import stock_etcd
from tests.support import wait_until
from tests.test_join import env_of, join_argv, new_cluster

V2 = {"ETCD_DISCOVERY"}
V3 = {"ETCD_DISCOVERY_TOKEN", "ETCD_DISCOVERY_ENDPOINTS"}
TOKEN = "ab" * 16


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
                "ETCD_DISCOVERY_INSECURE_TRANSPORT": "false",
            },
        ),
        (
            (3, 7),
            True,
            "/x/ca.pem",
            {
                "ETCD_DISCOVERY_TOKEN": TOKEN,
                "ETCD_DISCOVERY_ENDPOINTS": "https://10.0.0.1:8379,https://10.0.0.2:8379",
                "ETCD_DISCOVERY_INSECURE_TRANSPORT": "false",
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
    [("3.4", (3, 4)), ("3.5", (3, 5)), ("3.6", (3, 6)), ("3.7", (3, 7))],
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
    ("version", "family"), [("3.4", V2), ("3.5", V2), ("3.6", V3), ("3.7", V3)]
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


async def test_a_missing_discovery_ca_is_refused_before_anything_happens(client, tmp_path, capsys):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(server, token, "a", "10.0.5.1", tmp_path / "a", "--etcd-version", "3.7",
                     "--discovery-cacert", str(tmp_path / "nope.pem"))  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 1
    assert "nope.pem: no such file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


# -- a real etcd >= 3.6 member through discoverd's v3 face, configured by etcd.env alone -----


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def grpc_certs(where: Path) -> tuple[Path, Path, Path]:
    """A CA (not a system root) and the gRPC listener's certificate for 127.0.0.1."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=join test grpc ca", cwd=where)  # fmt: skip
    openssl("req", *ec, "-keyout", "key.pem", "-out", "csr.pem", "-subj", "/CN=d", cwd=where)
    (where / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "csr.pem", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext", cwd=where)  # fmt: skip
    return where / "ca.pem", where / "cert.pem", where / "key.pem"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


@pytest.mark.parametrize(("version", "tls"), [("3.6", False), ("3.7", False), ("3.7", True)])
async def test_etcd_36_and_37_bootstrap_through_v3_discovery_from_the_env_file(
    aiohttp_client, settings, tmp_path, version, tls
):
    binary = stock_etcd(version)
    update: dict[str, object] = {"grpc_listen": HostPort(host="127.0.0.1", port=free_port())}
    extra: list[str] = []
    if tls:
        (tmp_path / "grpc").mkdir()
        ca, cert, key = grpc_certs(tmp_path / "grpc")
        update |= {"grpc_cert": cert, "grpc_key": key}
        extra = ["--discovery-cacert", str(ca)]
    client = await aiohttp_client(build_app(settings.model_copy(update=update)))
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client, "size=1")
    peer, listen = free_port(), free_port()
    out = tmp_path / "m"
    argv = join_argv(server, token, "m1", "127.0.0.1", out, "--peer-port", str(peer),
                     "--client-port", str(listen), "--etcd-binary", str(binary), *extra)  # fmt: skip
    del argv[argv.index("--etcd-version") : argv.index("--etcd-version") + 2]
    assert await asyncio.to_thread(main, argv) == 0
    env = env_of(out / "etcd.env")
    assert "ETCD_DISCOVERY" not in env
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert (
        env["ETCD_DISCOVERY_ENDPOINTS"]
        == ("https://" if tls else "") + view["discovery_v3"]["endpoints"][0]
    )
    if tls:  # a copy inside OUT, which the join script hands to etcd's user
        assert env["ETCD_DISCOVERY_CACERT"] == str(out / "discovery-ca.pem")
        assert (out / "discovery-ca.pem").read_bytes() == ca.read_bytes()
    # --ip 127.0.0.1 is already the local client listener: listed once
    assert env["ETCD_LISTEN_CLIENT_URLS"] == f"http://127.0.0.1:{listen}"
    log_path = tmp_path / "etcd.log"
    with log_path.open("wb") as log:
        etcd = subprocess.Popen(  # the stock etcd with ONLY the env file, as the unit runs it
            [str(binary)], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{listen}"
        await asyncio.to_thread(wait_until, lambda: healthy(url) or etcd.poll() is not None,
                                90, f"etcd {version} healthy", 0.2)  # fmt: skip
        text = log_path.read_text(errors="replace")
        assert etcd.poll() is None, text[-3000:]
        # it registered through v3 discovery, not as a fresh one-node cluster of its own
        view = await (await client.get(f"/api/v1/clusters/{token}")).json()
        assert [m["name"] for m in view["members"]] == ["m1"]
        assert view["members"][0]["discovery_id"], (view, text[-3000:])
        assert "unrecognized environment variable" not in text, text[-3000:]
        assert "V2 discovery is deprecated" not in text
    finally:
        etcd.terminate()
        etcd.wait(30)
