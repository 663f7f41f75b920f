"""etcdctl 3.7 against discoverd's gRPC port: `get --prefix` and `watch --prefix` on one token
work as on etcd; everything outside a token, and every write but a member's registration, is
refused with a status that says why."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Members, V3Discovery, etcd_3_7, wait_for
from tests.e2e.v3support import (
    DiscoverdDiscovery,
    bootstrap,
    etcdctl,
    kvs,
    member_key,
    registration,
    size_key,
)
from tests.support import DiscoverdProcess

pytestmark = pytest.mark.e2e

WATCH_TIMEOUT = 30.0


def _events(path: Path) -> dict[str, str]:
    """The PUT events `etcdctl watch` printed so far (three lines each: PUT, key, value)."""
    lines = path.read_text().splitlines()
    return {
        lines[i + 1]: lines[i + 2]
        for i in range(len(lines) - 2)
        if lines[i] == "PUT" and i % 3 == 0
    }


def test_get_and_watch_one_token(
    module_discoverd: DiscoverdProcess, members: Members, tmp_path: Path
) -> None:
    service = DiscoverdDiscovery(module_discoverd)
    discovery = service.new(size=3)
    token = discovery.token
    binary = etcd_3_7()
    endpoint = module_discoverd.grpc_endpoint
    # Watch from the token's creation (the size key's create revision): the watch replays
    # it, and nothing can slip between the watch's creation and the registrations.
    size = etcdctl(binary, [endpoint], "get", size_key(token), "-w", "json")
    assert size.returncode == 0, size.stderr
    revision = int(json.loads(size.stdout)["kvs"][0]["create_revision"])
    output = tmp_path / "watch.out"
    with output.open("wb") as sink:
        watcher = subprocess.Popen(
            [str(binary.etcdctl), f"--endpoints={endpoint}", "watch", "--prefix",
             f"/_etcd/registry/{token}", f"--rev={revision}"],
            stdout=sink, stderr=subprocess.STDOUT, env=binary.env(),
        )  # fmt: skip
    try:
        group, _ = bootstrap(members, discovery, ("m1", "m2", "m3"), binary)
        expected = {size_key(token): "3"}
        expected.update({member_key(token, member): registration(member) for member in group})
        wait_for(
            lambda: _events(output) == expected,
            WATCH_TIMEOUT,
            "etcdctl watch to print the size key and the 3 registrations",
            output.read_text,
        )
        assert watcher.poll() is None, output.read_text()
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(10)

    listed = etcdctl(
        binary, [endpoint], "get", "--prefix", f"/_etcd/registry/{token}", "-w", "json"
    )
    assert listed.returncode == 0, listed.stderr
    assert kvs(listed.stdout) == expected


TOKEN = "0123456789abcdef0123456789abcdef"
SIZE_KEY = size_key(TOKEN)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        pytest.param(
            ("get", "--prefix", "/"), None,
            "discoverd serves only the keys of one discovery token", id="get-everything",
        ),
        pytest.param(
            ("get", "--prefix", "/_etcd/registry/"), None,
            "a request must name one discovery token", id="get-every-token",
        ),
        pytest.param(
            ("put", SIZE_KEY, "5"), None,
            "the size key is read-only", id="put-size",
        ),
        pytest.param(
            ("del", SIZE_KEY), None,
            "discovery registrations are create-only: KV/DeleteRange is refused", id="del",
        ),
        pytest.param(
            ("txn",), f"\nput {SIZE_KEY} 5\n\n\n",
            "discovery registrations are create-only: KV/Txn is refused", id="txn",
        ),
    ],
)  # fmt: skip
def test_refused_with_a_reason(
    args: tuple[str, ...], stdin: str | None, message: str, module_discoverd: DiscoverdProcess
) -> None:
    discovery = DiscoverdDiscovery(module_discoverd).new(size=3)
    real = [arg.replace(TOKEN, discovery.token) for arg in args]
    binary = etcd_3_7()

    result = etcdctl(
        binary, [module_discoverd.grpc_endpoint], *real,
        stdin=None if stdin is None else stdin.replace(TOKEN, discovery.token),
    )  # fmt: skip

    assert result.returncode != 0, result.stdout
    assert "code = PermissionDenied" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    size = etcdctl(binary, [module_discoverd.grpc_endpoint], "get", size_key(discovery.token))
    assert size.stdout.split() == [size_key(discovery.token), "3"], size.stderr


def test_a_v3_discovery_from_another_token_sees_nothing(
    module_discoverd: DiscoverdProcess,
) -> None:
    """A Range on a token nobody minted answers empty (etcd's answer for a missing key)."""
    unknown: V3Discovery = DiscoverdDiscovery(module_discoverd).unknown()
    result = etcdctl(
        etcd_3_7(), [module_discoverd.grpc_endpoint], "get", "--prefix",
        f"/_etcd/registry/{unknown.token}",
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
