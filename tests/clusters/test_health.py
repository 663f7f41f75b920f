"""A member's health as `discoverd status` asks it, against real listeners: the session's real
etcd, a closed port, a socket that never answers, and https URLs without a client certificate."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from discoverd.clusters.health import check, check_all
from discoverd.store.embedded import free_port


@pytest.fixture(scope="module")
def silent() -> Iterator[str]:
    """A socket that listens (connections complete in the backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def closed() -> str:
    return f"http://127.0.0.1:{free_port()}"


CASES: dict[str, tuple[Callable[[str, str], list[str]], str]] = {
    "healthy etcd": (lambda etcd, _: [etcd], "healthy"),
    "stopped member": (lambda _, __: [closed()], "unhealthy: connection refused"),
    "hung member": (lambda _, silent: [silent], "unhealthy: no answer in 0.5s"),
    "one of its URLs answers": (lambda etcd, _: [closed(), etcd], "healthy"),
    "https, no client certificate": (
        lambda _, __: ["https://10.0.0.1:2379"],
        "not checked (TLS: pass --cert/--key)",
    ),
    "no client URL": (lambda _, __: [], "not checked (no client URL registered)"),
}


@pytest.mark.parametrize(("urls", "shown"), list(CASES.values()), ids=list(CASES))
def test_check(etcd_endpoint, silent, urls, shown):
    assert str(check(urls(etcd_endpoint, silent), None, timeout=0.5)) == shown


def test_members_are_checked_in_parallel(etcd_endpoint, silent):
    members = {f"hung{i}": [silent] for i in range(12)} | {"ok": [etcd_endpoint]}
    started = time.monotonic()
    found = check_all(members, None, timeout=1.0)
    assert time.monotonic() - started < 8  # 12 silent members one after the other take 12 s
    assert str(found["ok"]) == "healthy"
    assert {str(found[f"hung{i}"]) for i in range(12)} == {"unhealthy: no answer in 1s"}
