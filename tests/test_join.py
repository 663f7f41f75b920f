"""`discoverd join` and `discoverd status` against the real app on a real etcd."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from discoverd.cli import main
from discoverd.directory.rules import cluster_label as label
from discoverd.store.embedded import free_port

IPS = ["10.0.5.1", "10.0.5.2", "10.0.5.3", "10.0.5.4"]


async def new_cluster(client, query="size=3") -> str:
    return (await (await client.post(f"/new?{query}")).text()).rsplit("/", 1)[1]


def join_argv(server, token, name, ip, out, *extra):
    """A join as an etcd 3.5 node runs it (v2 discovery); tests of other versions say so."""
    return ["join", "--server", server, "--token", token, "--name", name, "--ip", ip,
            "--out", str(out), "--data-dir", str(out / "data"), "--timeout", "5s",
            "--etcd-version", "3.5", *extra]  # fmt: skip


def env_of(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


async def test_tls_join_writes_what_etcd_needs(client, tmp_path, capsys):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    await client.get(f"/api/v1/clusters/{token}/ca.pem")  # makes the CA, as `discoverd new` does
    ca_sha = (await (await client.get(f"/api/v1/clusters/{token}")).json())["ca_sha256"]
    out = tmp_path / "infra0"
    argv = join_argv(server, token, "infra0", IPS[0], out, "--tls", "--ca-sha256", ca_sha.upper())
    assert await asyncio.to_thread(main, argv) == 0
    env = env_of(out / "etcd.env")
    assert env["ETCD_NAME"] == "infra0"
    assert env["ETCD_DISCOVERY"] == f"http://discoverd.test:8087/{token}"  # as /new printed it
    assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == "https://10.0.5.1:2380"
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "https://10.0.5.1:2379,https://127.0.0.1:2379"
    assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    assert env["ETCD_DISCOVERY_FALLBACK"] == "exit"
    for profile in ("peer", "server", "client"):
        assert (out / f"{profile}-key.pem").stat().st_mode & 0o777 == 0o600
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.pem"),
                                 str(out / f"{profile}.pem")], capture_output=True, text=True)  # fmt: skip
        assert verify.stdout.strip().endswith("OK")
    text = subprocess.run(["openssl", "x509", "-in", str(out / "peer.pem"), "-noout", "-text"],
                          capture_output=True, text=True).stdout  # fmt: skip
    for san in (
        "IP Address:10.0.5.1",
        f"DNS:infra0.{label(token)}.etcd.internal",
        f"DNS:{label(token)}.etcd.internal",
        "DNS:localhost",
        "IP Address:127.0.0.1",
    ):
        assert san in text  # fmt: skip
    for profile in ("peer", "server", "client"):  # the token is a secret: never in a certificate
        assert token not in (out / f"{profile}.pem").read_text()
        assert token not in subprocess.run(
            ["openssl", "x509", "-in", str(out / f"{profile}.pem"), "-noout", "-text"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    assert (out / "etcd.env").stat().st_mode & 0o777 == 0o600  # it carries the token
    ctl = env_of(out / "etcdctl.env")
    assert ctl["ETCDCTL_CERT"] == str(out / "client.pem")
    view = await (await client.get(f"/api/v1/clusters/{token}")).json()
    assert view["members"][0]["client_urls"] == ["https://10.0.5.1:2379"]

    # A re-run (cloud-init, reboot) changes nothing and succeeds.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    assert "already joined" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


async def test_a_ca_that_does_not_match_the_pin_is_refused(client, tmp_path, capsys):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(
        server, token, "infra0", IPS[0], tmp_path / "n", "--tls", "--ca-sha256", "ab" * 32
    )
    assert await asyncio.to_thread(main, argv) == 1
    err = capsys.readouterr().err
    assert "refusing to trust it" in err and "Traceback" not in err
    assert not (tmp_path / "n" / "peer-key.pem").exists()


async def test_a_fourth_node_is_refused(client, tmp_path, capsys):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    for i in range(3):
        assert (
            await asyncio.to_thread(
                main, join_argv(server, token, f"n{i}", IPS[i], tmp_path / f"n{i}")
            )
            == 0
        )
    assert (
        await asyncio.to_thread(main, join_argv(server, token, "n3", IPS[3], tmp_path / "n3")) == 1
    )
    assert "cluster is full: 3 of 3 members registered" in capsys.readouterr().err


async def test_srv_mode_waits_for_every_member(client, tmp_path):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client, "size=2")
    first = asyncio.create_task(asyncio.to_thread(
        main, join_argv(server, token, "a", IPS[0], tmp_path / "a", "--mode", "srv")))  # fmt: skip
    await asyncio.sleep(1.5)
    assert not first.done()  # waiting for the second member
    assert (
        await asyncio.to_thread(
            main, join_argv(server, token, "b", IPS[1], tmp_path / "b", "--mode", "srv")
        )
        == 0
    )
    assert await first == 0
    env = env_of(tmp_path / "a" / "etcd.env")
    assert env["ETCD_DISCOVERY_SRV"] == f"{label(token)}.etcd.internal"
    assert env["ETCD_INITIAL_CLUSTER_TOKEN"] == token and "ETCD_DISCOVERY" not in env


@pytest.mark.parametrize(
    ("argv_extra", "message"),
    [
        (["--ip", "not-an-ip"], "is not an IP address"),
        (["--ca-sha256", "ab"], "add --tls"),
    ],
)
async def test_join_refuses_bad_flags(client, tmp_path, capsys, argv_extra, message):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(server, token, "a", IPS[0], tmp_path / "a") + argv_extra
    assert await asyncio.to_thread(main, argv) == 1
    assert message in capsys.readouterr().err


def test_join_retries_then_gives_up_on_an_unreachable_server(tmp_path, capsys):
    server = f"http://127.0.0.1:{free_port()}"
    argv = join_argv(server, "ab" * 16, "a", IPS[0], tmp_path / "a")
    argv[argv.index("--timeout") + 1] = "2s"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "gave up: cannot reach" in err and "Traceback" not in err
    retries = [line for line in err.splitlines() if "next attempt in" in line]
    assert retries, err  # one line per retry, not silence until --timeout
    assert all(line.startswith(f"join: cannot reach {server}: ") for line in retries), retries


async def test_an_unknown_token_is_said_so(client, tmp_path, capsys):
    server = str(client.make_url("")).rstrip("/")
    unknown = os.urandom(16).hex()  # never minted (other tests use fixed tokens)
    argv = join_argv(server, unknown, "a", IPS[0], tmp_path / "a")
    assert await asyncio.to_thread(main, argv) == 1
    err = capsys.readouterr().err
    assert err.endswith("discoverd join: no such discovery token (expired or mistyped)\n"), err


@pytest.mark.parametrize(
    ("ip", "flags", "listen"),
    [
        ("10.0.5.1", [], "http://10.0.5.1:2379,http://127.0.0.1:2379"),
        ("10.0.5.1", ["--no-local-client"], "http://10.0.5.1:2379"),
        ("127.0.0.1", [], "http://127.0.0.1:2379"),  # not twice
        ("::1", [], "http://[::1]:2379,http://127.0.0.1:2379"),
    ],
)
async def test_the_local_client_listener(client, tmp_path, ip, flags, listen):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(server, token, "a", ip, tmp_path / "a", *flags)
    assert await asyncio.to_thread(main, argv) == 0
    env = env_of(tmp_path / "a" / "etcd.env")
    assert env["ETCD_LISTEN_CLIENT_URLS"] == listen
    assert env["ETCD_ADVERTISE_CLIENT_URLS"] == listen.split(",")[0]


async def test_a_relative_out_lands_as_absolute_paths(client, tmp_path, monkeypatch):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    monkeypatch.chdir(tmp_path)
    argv = join_argv(server, token, "a", IPS[0], tmp_path / "unused", "--tls")
    argv[argv.index("--out") + 1] = "node/conf"
    assert await asyncio.to_thread(main, argv) == 0
    out = tmp_path / "node" / "conf"
    env, ctl = env_of(out / "etcd.env"), env_of(out / "etcdctl.env")
    assert env["ETCD_CERT_FILE"] == str(out / "server.pem")
    assert env["ETCD_PEER_TRUSTED_CA_FILE"] == str(out / "ca.pem")
    assert ctl["ETCDCTL_KEY"] == str(out / "client-key.pem")
    paths = [v for v in (*env.values(), *ctl.values()) if v.endswith(".pem")]
    assert len(paths) == 9 and all(Path(v).is_absolute() and Path(v).is_file() for v in paths)


async def test_status_exit_codes(client, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table unwrapped
    token = await new_cluster(client, "size=2")
    url = f"{str(client.make_url('')).rstrip('/')}/{token}"
    assert await asyncio.to_thread(main, ["status", url]) == 1
    assert "incomplete: 0 of 2" in capsys.readouterr().err
    for i, name in enumerate(("a", "b")):  # what each member's etcd registers (v2 discovery)
        form = {"value": f"{name}=http://{IPS[i]}:2380"}
        assert (await client.put(f"/{token}/{i + 1:x}", data=form)).status == 201
    assert (
        await asyncio.to_thread(
            main, ["status", token, "--server", url.rsplit("/", 1)[0], "--wait"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 of 2 registered by etcd" in out and "http://10.0.5.1:2380" in out


async def test_status_wait_times_out(client, capsys):
    token = await new_cluster(client, "size=2")
    url = f"{str(client.make_url('')).rstrip('/')}/{token}"
    assert await asyncio.to_thread(main, ["status", url, "--wait", "--timeout", "1s"]) == 1
    assert "timed out" in capsys.readouterr().err


async def test_the_token_can_come_from_the_environment(client, tmp_path, monkeypatch):
    server = str(client.make_url("")).rstrip("/")
    token = await new_cluster(client)
    argv = join_argv(server, token, "a", IPS[0], tmp_path / "a")
    del argv[argv.index("--token") : argv.index("--token") + 2]
    assert await asyncio.to_thread(main, argv) == 2  # neither given
    monkeypatch.setenv("DISCOVERD_TOKEN", token)
    assert await asyncio.to_thread(main, argv) == 0
    assert env_of(tmp_path / "a" / "etcd.env")["ETCD_DISCOVERY"].endswith(token)


async def test_a_named_cluster_keeps_the_token_out_of_certificates(client, tmp_path):
    server = str(client.make_url("")).rstrip("/")
    name = "n" + __import__("os").urandom(3).hex()
    token = (await (await client.post(f"/new?size=3&name={name}")).text()).rsplit("/", 1)[1]
    out = tmp_path / "a"
    argv = join_argv(server, token, "a", IPS[0], out, "--tls", "--mode", "srv")
    task = asyncio.create_task(asyncio.to_thread(main, argv))
    await asyncio.sleep(0.5)
    for i, member in enumerate(("b", "c"), start=1):
        body = {"peer_urls": [f"https://{IPS[i]}:2380"], "client_urls": [f"https://{IPS[i]}:2379"]}
        await client.put(f"/api/v1/clusters/{token}/members/{member}", json=body)
    assert await task == 0
    text = subprocess.run(["openssl", "x509", "-in", str(out / "peer.pem"), "-noout", "-text"],
                          capture_output=True, text=True).stdout  # fmt: skip
    assert f"DNS:a.{name}.etcd.internal" in text and f"DNS:{name}.etcd.internal" in text
    assert token not in text
    assert env_of(out / "etcd.env")["ETCD_DISCOVERY_SRV"] == f"{name}.etcd.internal"
