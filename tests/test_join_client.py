"""The one-file join client: discoverd serves discoverd/join.py byte for byte at
GET /api/v1/join.py, it imports nothing beyond the standard library, and the file as served runs
a real TLS join with the distribution's python3 (and the oldest Python it supports, when this
machine has one) in isolated mode: no site-packages, no virtualenv, nothing from PyPI."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from discoverd import join
from tests.test_join import env_of, new_cluster

CLIENT = Path(join.__file__)
SYSTEM_PYTHON = Path("/usr/bin/python3")
OLDEST = "3.8"  # the oldest python3 the client supports (Ubuntu 20.04's)


def interpreter(which: str) -> Path:
    if which == "system":
        path = SYSTEM_PYTHON
    else:
        found = sorted(Path.home().glob(f".pyenv/versions/{which}.*/bin/python3"))
        path = found[0] if found else Path(f"/usr/bin/python{which}")
    if not path.is_file():
        pytest.skip(f"LOUD: no python {which} here ({path}): the join client is NOT run with it")
    return path


async def test_the_client_is_served_byte_for_byte(client):
    response = await client.get("/api/v1/join.py")
    assert response.status == 200
    body = await response.read()
    assert body == CLIENT.read_bytes()
    assert response.headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
    assert response.content_type == "text/x-python"


def test_the_client_imports_only_the_standard_library():
    tree = ast.parse(CLIENT.read_text(), feature_version=(3, 8))  # and parses as 3.8 does
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    assert imported <= sys.stdlib_module_names | {"__future__"}, imported - sys.stdlib_module_names


@pytest.mark.parametrize("python", ["system", OLDEST])
async def test_the_served_file_joins_with_a_stock_python(client, tmp_path, python):
    binary = interpreter(python)
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    await client.get(f"/api/v1/clusters/{token}/ca.pem")
    ca_sha = (await (await client.get(f"/api/v1/clusters/{token}")).json())["ca_sha256"]
    script = tmp_path / "join.py"
    script.write_bytes(await (await client.get("/api/v1/join.py")).read())
    out = tmp_path / "out"
    argv = [str(binary), "-I", "-S", str(script), "--server", server, "--name", "n1",
            "--ip", "10.0.5.1", "--tls", "--ca-sha256", ca_sha, "--out", str(out),
            "--etcd-version", "3.7", "--timeout", "30s"]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv,
        env={"PATH": "/usr/bin:/bin", "DISCOVERD_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    assert "n1 joined" in stdout.decode()
    env = env_of(out / "etcd.env")
    assert env["ETCD_DISCOVERY_TOKEN"] == token and "ETCD_DISCOVERY" not in env
    for profile in ("peer", "server", "client"):
        assert (out / f"{profile}-key.pem").stat().st_mode & 0o777 == 0o600
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.pem"),
                                 str(out / f"{profile}.pem")], capture_output=True, text=True)  # fmt: skip
        assert verify.stdout.strip().endswith("OK"), verify.stderr
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert {c["profile"] for c in view["certificates"] if c["name"] == "n1"} == {
        "peer",
        "server",
        "client",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "localhost:8087"], "is not an http:// or https:// URL"),
        (["--timeout", "soon"], "--timeout 'soon' is not a duration"),
        (["--name", "a/b"], "--name 'a/b' is not a DNS label"),
    ],
)
def test_the_client_refuses_bad_flags_in_one_line(tmp_path, argv, message):
    base = {"--server": "http://127.0.0.1:9", "--name": "a", "--ip": "10.0.0.1",
            "--out": str(tmp_path / "o"), "--token": "ab" * 16, "--etcd-version": "3.7"}  # fmt: skip
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    flags = [part for pair in base.items() for part in pair]
    run = subprocess.run([str(SYSTEM_PYTHON), "-I", "-S", str(CLIENT), *flags],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode in (1, 2)
    assert run.stderr.startswith("join.py: ") and message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
