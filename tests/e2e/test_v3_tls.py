"""TLS on the gRPC listener: a stock etcd 3.7 member bootstraps through discoverd's v3 face with
`--discovery-endpoints https://… --discovery-insecure-transport=false --discovery-cacert`, which
needs ALPN h2 (grpc-go >= 1.67) and a certificate it verifies. Certificates come from openssl."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from discoverd.store.embedded import free_port
from tests.binaries import stock_etcd
from tests.support import DiscoverdProcess, http, wait_until

pytestmark = pytest.mark.e2e


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(where: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=v3 tls test ca", cwd=where)  # fmt: skip
    openssl(
        "req", *ec, "-keyout", "key.pem", "-out", "csr.pem", "-subj", "/CN=discoverd", cwd=where
    )
    (where / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "csr.pem", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "ext", cwd=where)  # fmt: skip


def test_a_37_member_bootstraps_over_tls(tmp_path: Path) -> None:
    etcd_37 = stock_etcd("3.7")
    make_certs(tmp_path)
    server = DiscoverdProcess(
        tmp_path,
        (),
        "--grpc-cert",
        str(tmp_path / "cert.pem"),
        "--grpc-key",
        str(tmp_path / "key.pem"),
    ).start()
    member = None
    try:
        status, _, body = http("POST", f"{server.url}/new?size=1")
        assert status == 200, body
        token = body.decode().rsplit("/", 1)[1]
        view = json.loads(http("GET", f"{server.url}/api/v1/clusters/{token}")[2])
        assert view["discovery_v3"]["tls"] is True
        assert (
            f"--discovery-endpoints=https://{server.grpc_endpoint}" in view["discovery_v3"]["flags"]
        )
        client, peer = free_port("127.0.0.1"), free_port("127.0.0.1")
        log = (tmp_path / "member.log").open("wb")
        member = subprocess.Popen(
            [
                str(etcd_37),
                "--name=tls0",
                f"--data-dir={tmp_path / 'tls0'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--discovery-token={token}",
                f"--discovery-endpoints=https://{server.grpc_endpoint}",
                "--discovery-insecure-transport=false",
                f"--discovery-cacert={tmp_path / 'ca.pem'}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
        )

        def healthy() -> bool:
            assert member is not None
            if member.poll() is not None:
                raise AssertionError((tmp_path / "member.log").read_text()[-3000:])
            try:
                url = f"http://127.0.0.1:{client}/health"
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(json.loads(response.read())["health"] == "true")
            except OSError:
                return False

        wait_until(healthy, 60, "the etcd 3.7 member to bootstrap over TLS")
        view = json.loads(http("GET", f"{server.url}/api/v1/clusters/{token}")[2])
        assert [m["name"] for m in view["members"]] == ["tls0"]
    finally:
        if member is not None and member.poll() is None:
            member.terminate()
            member.wait(15)
        server.stop()
