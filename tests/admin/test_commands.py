"""`discoverd clusters` against the real app, and `discoverd backup` of a real etcd, checked by
etcd's own etcdutl and by restoring it under a new `discoverd serve`."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from discoverd.cli import main
from discoverd.logs import fingerprint
from discoverd.store.embedded import etcd_binary, free_port
from tests.support import DiscoverdProcess, http


def server_of(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def new_named(client, name: str) -> str:
    response = await client.post(f"/new?size=3&name={name}")
    assert response.status == 200
    return (await response.text()).rsplit("/", 1)[1]


async def test_clusters_prints_the_fleet(admin_client, admin_token, tmp_path, capsys):
    name = "cli" + os.urandom(4).hex()
    token = await new_named(admin_client, name)
    argv = ["clusters", "--server", server_of(admin_client), "--name", name,
            "--admin-token-file", str(tmp_path / "admin.token")]  # fmt: skip
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert fingerprint(token) in out and name in out and "0/3" in out and "open" in out
    assert token not in out


async def test_clusters_reads_the_token_from_the_environment(
    admin_client, admin_token, monkeypatch, capsys
):
    name = "env" + os.urandom(4).hex()
    token = await new_named(admin_client, name)
    monkeypatch.setenv("DISCOVERD_ADMIN_TOKEN", admin_token)
    argv = ["clusters", "--server", server_of(admin_client), "--name", name]
    assert await asyncio.to_thread(main, argv) == 0
    assert fingerprint(token) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        ("wrong-but-long-enough-token", 1, "wrong admin token"),
        (None, 2, "give --admin-token-file, or the token in DISCOVERD_ADMIN_TOKEN"),
    ],
)
async def test_clusters_refusals(admin_client, monkeypatch, capsys, token, status, message):
    monkeypatch.delenv("DISCOVERD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("DISCOVERD_ADMIN_TOKEN_FILE", raising=False)
    if token is not None:
        monkeypatch.setenv("DISCOVERD_ADMIN_TOKEN", token)
    argv = ["clusters", "--server", server_of(admin_client)]
    assert await asyncio.to_thread(main, argv) == status
    assert message in capsys.readouterr().err


def etcdutl(*args: str) -> subprocess.CompletedProcess[str]:
    tool = etcd_binary().parent / "etcdutl"
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=60)


def test_backup_of_an_etcd_endpoint(etcd_endpoint, tmp_path, capsys):
    out = tmp_path / "backup.db"
    assert main(["backup", "--etcd", etcd_endpoint, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert str(out) in captured.out and "sha256 ok" in captured.out
    assert "service key" in captured.err
    assert out.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "backup.db.part").exists()
    status = etcdutl("snapshot", "status", str(out), "-w", "json")
    assert status.returncode == 0, status.stderr
    assert '"revision"' in status.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--etcd", "http://127.0.0.1:{port}"], "cannot reach etcd"),
        (["--data-dir", "{tmp}/nothing-here"], "no embedded etcd running under"),
        (["--etcd", "localhost:2379"], "--etcd endpoint must be an http(s) URL"),
    ],
)
def test_backup_failures_are_one_line(argv, message, tmp_path, capsys):
    filled = [a.format(port=free_port(), tmp=tmp_path) for a in argv]
    assert main(["backup", *filled, "--out", str(tmp_path / "b.db")]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("b.db*"))


def test_backup_into_a_missing_directory(etcd_endpoint, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "dir" / "b.db"
    assert main(["backup", "--etcd", etcd_endpoint, "--out", str(out)]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_backup_of_the_embedded_etcd_restores_under_a_new_discoverd(tmp_path, capsys):
    """The README's recipe: `discoverd backup --data-dir`, `etcdutl snapshot restore` into a
    fresh `<data-dir>/etcd`, start discoverd there: the token is back."""
    first = DiscoverdProcess(tmp_path).start()
    try:
        url = first.new(size=5)
        token = url.rsplit("/", 1)[1]
        out = tmp_path / "backup.db"
        assert main(["backup", "--data-dir", str(first.data_dir), "--out", str(out)]) == 0
    finally:
        first.stop()
    capsys.readouterr()
    fresh = tmp_path / "restored"
    peer = "http://127.0.0.1:2380"  # the README's command; discoverd picks its ports anew
    restore = etcdutl("snapshot", "restore", str(out), "--data-dir", str(fresh / "etcd"),
                      "--name", "discoverd", "--initial-cluster", f"discoverd={peer}",
                      "--initial-advertise-peer-urls", peer)  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    second = DiscoverdProcess(tmp_path, (), "--data-dir", str(fresh)).start()
    try:
        status, _, body = http("GET", f"{second.url}/{token}/_config/size")
        assert status == 200, body
        assert b'"value":"5"' in body
    finally:
        second.stop()
