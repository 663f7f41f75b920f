"""Start-up errors say what is wrong, at once: a second `discoverd serve` on the same data dir
or on a busy port exits quickly with one line naming the data dir or the address, and starts
nothing (no embedded etcd)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from aiohttp.test_utils import TestServer

from discoverd.app import build_app
from discoverd.config import HostPort
from discoverd.startup import StartupError, lock_data_dir, probe
from discoverd.store.embedded import free_port
from tests.support import DiscoverdProcess

QUICKLY = 20.0  # seconds; the embedded etcd alone used to wait 30 s before giving up


def test_a_locked_data_dir_names_its_holder(tmp_path):
    held = lock_data_dir(tmp_path / "data")
    with pytest.raises(StartupError) as refused:
        lock_data_dir(tmp_path / "data")
    assert (
        f"the data dir {tmp_path / 'data'} is in use by another discoverd (pid {os.getpid()})"
        in str(refused.value)
    )
    held.close()
    lock_data_dir(tmp_path / "data").close()  # free again once the holder is gone


@pytest.mark.parametrize(
    ("kind", "proto"), [(socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")]
)
def test_a_busy_port_is_named(kind, proto):
    with socket.socket(socket.AF_INET, kind) as busy:
        busy.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            busy.listen()
        address = HostPort(host="127.0.0.1", port=busy.getsockname()[1])
        with pytest.raises(StartupError) as refused:
            probe(address, "DNS", udp=True)
    assert str(refused.value).startswith(f"cannot listen for DNS on {address} ({proto}): ")


def test_a_free_port_and_port_zero_pass():
    probe(HostPort(host="127.0.0.1", port=free_port()), "DNS", udp=True)
    probe(HostPort(host="127.0.0.1", port=0), "gRPC")


async def test_the_dns_listener_names_its_own_address(settings):
    """A port taken between the probe and the bind: the DNS listener says so itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        taken = settings.model_copy(
            update={"dns_listen": HostPort(host="127.0.0.1", port=busy.getsockname()[1])}
        )
        server = TestServer(build_app(taken))
        try:
            with pytest.raises(StartupError, match=f"cannot listen for DNS on {taken.dns_listen}"):
                await server.start_server()
        finally:
            assert server.runner is not None
            await server.runner.cleanup()  # as run_app does: what had started is stopped


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiscoverdProcess]:
    """A running `discoverd serve` with its embedded etcd: what `make run` leaves behind."""
    process = DiscoverdProcess(tmp_path_factory.mktemp("first")).start()
    yield process
    process.stop()


def second_run(tmp_path, *extra: str) -> tuple[int, float, str]:
    """A second `discoverd serve`: (exit status, seconds it took, its log)."""
    second = DiscoverdProcess(tmp_path, (), *extra)
    started = time.monotonic()
    try:
        status = second.run_to_exit(QUICKLY)
    finally:
        second.stop()
    return status, time.monotonic() - started, second.log()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (lambda a: ["--data-dir", str(a.data_dir)], lambda a: f"the data dir {a.data_dir} is in use by another discoverd"),
        (lambda a: ["--dns-listen", f"127.0.0.1:{a.dns_port}"], lambda a: f"cannot listen for DNS on 127.0.0.1:{a.dns_port}"),
        (lambda a: ["--grpc-listen", a.grpc_endpoint], lambda a: f"cannot listen for gRPC on {a.grpc_endpoint}"),
        (lambda a: ["--listen", f"127.0.0.1:{a.port}"], lambda a: f"cannot listen for HTTP on 127.0.0.1:{a.port}"),
    ],
    ids=["data-dir", "dns", "grpc", "http"],
)  # fmt: skip
def test_a_second_serve_says_what_is_in_the_way(first, tmp_path, flags, message):
    status, took, log = second_run(tmp_path, *flags(first))
    assert status == 1, log
    assert message(first) in log, log
    errors = [line for line in log.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, log  # one line
    assert "embedded etcd" not in log, log  # nothing was started
    assert took < QUICKLY
    assert first.healthy()  # and the first one is untouched


def test_an_exposed_admin_token_file_is_refused(first, tmp_path):
    token_file = tmp_path / "admin.token"
    token_file.write_text("a-long-enough-admin-token\n")
    token_file.chmod(0o644)
    status, _, log = second_run(tmp_path, "--admin-token-file", str(token_file))
    assert status == 1, log
    assert f"the admin token file {token_file} is readable by everyone" in log, log
