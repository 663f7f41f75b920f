"""The optional second anchor of the v2 HTTP figures: the public Go discovery service itself.

The issue's goals are ratios to the Go service (coreos/discovery.etcd.io: a thin reverse proxy
in front of etcd's v2 keys API). Its code is not in this tree and nothing here builds it: the
operator builds it and hands the bench its binary with `--go-discovery PATH` (or
DISCOVERD_BENCH_GO_DISCOVERY=PATH). Without it, the v2 figures are ratios to raw etcd only
(bench.v2anchor) and the run says the Go anchor was not run.

Given it, the binary runs on a free loopback port in front of the bench's etcd 3.4 v2 anchor,
as the public service runs: `--etcd=<that etcd> --host=<its own URL> --addr=127.0.0.1:<port>`
(its only flags; its access log, one line per request on stdout, goes to a file). The bench's
token is seeded where the service keeps tokens, `/_etcd/registry/<token>`: `_config/size` = 3
written to etcd as its `/new` writes it, then 3 members registered through the service with
create-only PUTs (201, then 412 for a repeat). Before any load it must list them and answer a
`/new` with `<its URL>/<token>`. Then the same wrk loads as discoverd, in the same run:

    get_size  GET /<token>/_config/size
    get_dir   GET /<token>
    new       POST /new?size=3            (the service accepts any method on /new)

It is stopped by pid (`GoDiscovery.stop`), before the etcd it proxies to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from bench import servers
from bench.loadspec import Load
from bench.process import ManagedProcess
from bench.v2anchor import CALL_TIMEOUT, FORM, MEMBERS, POLL_INTERVAL, READY_TIMEOUT
from discoverd.store.embedded import free_port

FLAG = "--go-discovery"
ENV = "DISCOVERD_BENCH_GO_DISCOVERY"
NOT_GIVEN = f"not run: no {FLAG} PATH (or {ENV}=PATH) was given"
NO_ETCD = "not run: the etcd 3.4 v2 anchor it proxies to did not run (see anchor_v2)"
SERVER = "the Go discovery service (coreos/discovery.etcd.io) on etcd 3.4's v2 API"
PREFIX = "/v2/keys/_etcd/registry"  # where the service keeps tokens in etcd
# its route for the token reads, and for /new (any method)
LOADS = {
    "get_size": ("/{token}/_config/size", "GET"),
    "get_dir": ("/{token}", "GET"),
    "new": ("/new?size=3", "POST"),
}
_DISCOVERY_URL = re.compile(r"(?P<base>.+)/(?P<token>[0-9a-f]{32})")


class GoAnchorError(RuntimeError):
    """The Go discovery service could not be started or seeded."""


def given(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """The binary's path: the flag's, else the environment's; None when neither is set."""
    return flag or environ.get(ENV) or None


def unusable(path: str) -> str | None:
    """Why `path` cannot be run as the Go service, or None."""
    if not Path(path).is_file():
        return f"{FLAG} {path}: no such file"
    if not os.access(path, os.X_OK):
        return f"{FLAG} {path}: not executable"
    return None


class GoDiscovery(ManagedProcess):
    """The Go discovery service on a free loopback port, proxying to `etcd_url`."""

    name = "Go discovery anchor"
    error = GoAnchorError

    def __init__(self, path: Path, folder: Path, etcd_url: str) -> None:
        super().__init__(folder / "go-discovery.log")
        self.binary = path
        self.folder = folder
        self.etcd_url = etcd_url
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Launch it, not waiting (see `wait_ready`); from a thread that outlives it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.command = [
            str(self.binary),
            f"--etcd={self.etcd_url}",
            f"--host={self.url}",
            f"--addr=127.0.0.1:{self.port}",
        ]
        self.launch()

    def wait_ready(self) -> None:
        """Poll /robots.txt (its /health writes a token) until it answers 200."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                raise GoAnchorError(f"it exited: {' | '.join(self.log_tail())}")
            if servers.get_status(f"{self.url}/robots.txt", timeout=1.0) == 200:
                return
            time.sleep(POLL_INTERVAL)
        raise GoAnchorError(f"no answer after {READY_TIMEOUT:.0f} s: {self.log_tail()}")


def load(name: str, url: str, token: str, duration: float) -> Load:
    """The Go service's counterpart of discoverd's load `name` (a key of LOADS)."""
    path, method = LOADS[name]
    return Load(f"go_{name}", url + path.format(token=token), method, duration)


async def seed(etcd_url: str, url: str, token: str) -> dict[str, Any]:
    """`token` as the service's /new makes one, its members registered through the service,
    read back through it; then one /new answered with a discovery URL on the service."""
    async with aiohttp.ClientSession(timeout=CALL_TIMEOUT) as session:
        size = f"{etcd_url}{PREFIX}/{token}/_config/size?prevExist=false"
        await _put(session, size, "3", 201)
        for n in range(1, MEMBERS + 1):
            member = f"{url}/{token}/{0xBE0C0000 + n:x}?prevExist=false"
            await _put(session, member, f"m{n}=http://127.0.0.{n}:2380", 201)
        await _put(session, f"{url}/{token}/{0xBE0C0001:x}?prevExist=false", "again", 412)
        async with session.get(f"{url}/{token}") as response:
            listed = await response.json(content_type=None)
        nodes = listed.get("node", {}).get("nodes", [])
        if response.status != 200 or len(nodes) != MEMBERS:
            raise GoAnchorError(f"GET /<token> -> {response.status}, {len(nodes)} nodes")
        async with session.get(f"{url}/{token}/_config/size") as response:
            value = (await response.json(content_type=None)).get("node", {}).get("value")
        if (response.status, value) != (200, "3"):
            raise GoAnchorError(f"GET /<token>/_config/size -> {response.status}, {value!r}")
        async with session.post(f"{url}/new?size=3") as response:
            body = await response.text()
        made = _DISCOVERY_URL.fullmatch(body)
        if response.status != 200 or made is None or made["base"] != url:
            raise GoAnchorError(f"POST /new?size=3 -> {response.status}: {body[:80]!r}")
    return {"members": len(nodes), "create_only": "201 then 412", "new": "200 <host>/<token>"}


async def _put(session: aiohttp.ClientSession, url: str, value: str, expect: int) -> None:
    async with session.put(url, data={"value": value}, headers=FORM) as response:
        body = await response.text()
    if response.status != expect:
        path = re.sub(r"[0-9a-f]{32}", "<token>", url.split("/", 3)[-1])
        raise GoAnchorError(f"PUT /{path} -> {response.status} (not {expect}): {body[:200]}")


async def start(
    path: Path, folder: Path, etcd_url: str, token: str
) -> tuple[GoDiscovery, dict[str, Any]]:
    """The service, started in front of `etcd_url` and seeded for `token`; what is known."""
    anchor = GoDiscovery(path, folder, etcd_url)
    try:
        anchor.start()
        await asyncio.to_thread(anchor.wait_ready)
        seeded = await seed(etcd_url, anchor.url, token)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(anchor.stop)
        raise
    info = {
        "server": SERVER,
        "binary": str(path),
        "command": " ".join(anchor.command),
        "seed": seeded,
    }
    return anchor, info
