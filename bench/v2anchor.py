"""The anchor of the v2 HTTP figures, measured in the same run: etcd's own v2 keys API.

The public discovery service (etcd-io/discoveryserver, discovery.etcd.io, etcd 3.4 behind it)
serves each v2 discovery request by proxying it to etcd's v2 keys API. Its code is not built
here (a build of the older coreos/discovery.etcd.io, given with --go-discovery, runs in front
of this etcd: bench.goanchor); what it proxies to is: Debian's etcd 3.4 (`/usr/bin/etcd`,
package etcd-server) on loopback with `--enable-v2`, otherwise at its defaults, seeded through
its v2 HTTP API with what discoverd's reads serve (a token directory with `_config/size` = 3
and 3 member keys), under the same wrk load as discoverd:

    get_size  GET /v2/keys/<token>/_config/size                 vs  GET /<token>/_config/size
    get_dir   GET /v2/keys/<token>                              vs  GET /<token>
    new       PUT /v2/keys/anchor/<unique>?prevExist=false value=3  vs  POST /new?size=3

(`new`: a create-only write of one fresh key per request, `NEW_SCRIPT`.) Raw etcd skips the
proxy hop the Go service adds, so a ratio to this anchor is stricter than one to the Go service.
Before any load the seed is read back, and a create-only PUT is checked to be create-only (201,
then 412). The anchor is stopped by pid (`EtcdV2.stop`), its scratch directory removed with the
run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import servers
from bench.loadspec import Load
from bench.process import ManagedProcess
from discoverd.store.embedded import free_port

DEBIAN_ETCD = Path("/usr/bin/etcd")
READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
CALL_TIMEOUT = aiohttp.ClientTimeout(total=10)
MEMBERS = 3
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
_VERSION = re.compile(r"etcd Version:\s*(\S+)")

# One fresh key per request: wrk thread `id`, request `n`, and a per-run prefix.
NEW_SCRIPT = """\
-- bench.v2anchor: a create-only PUT of a fresh key per request (etcd v2 keys API)
local RUN = "%(run)s"
local count = 0
wrk.method = "PUT"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "value=3"

function setup(thread)
  thread:set("id", count)
  count = count + 1
end

function init(args)
  n = 0
end

function request()
  n = n + 1
  return wrk.format(nil, "/v2/keys/anchor/" .. RUN .. "-" .. id .. "-" .. n .. "?prevExist=false")
end
"""

# discoverd's load name -> (the anchor's path for `token`, its method); `new`'s script sets
# each request's own path under this one
LOADS = {
    "get_size": ("/v2/keys/{token}/_config/size", "GET"),
    "get_dir": ("/v2/keys/{token}", "GET"),
    "new": ("/v2/keys/anchor/", "PUT"),
}
NEW_PATH = "/v2/keys/anchor/<unique>?prevExist=false"


class AnchorError(RuntimeError):
    """The anchor etcd could not be started or seeded."""


def binary() -> Path | None:
    """Debian's etcd 3.4, else an `etcd` on PATH; None when there is none."""
    if DEBIAN_ETCD.is_file():
        return DEBIAN_ETCD
    found = shutil.which("etcd")
    return Path(found) if found else None


def missing() -> str | None:
    """Why the anchor cannot run, or None."""
    if binary() is None:
        return "no etcd 3.4 (Debian etcd-server: `make bench` installs it as root)"
    return None


def version(path: Path) -> str:
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = _VERSION.search(done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


class EtcdV2(ManagedProcess):
    """One etcd member with the v2 API on, on free loopback ports, in `folder`."""

    name = "etcd v2 anchor"
    error = AnchorError

    def __init__(self, path: Path, folder: Path) -> None:
        super().__init__(folder / "etcd.log")
        self.binary = path
        self.folder = folder
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Launch it, not waiting (see `wait_ready`). Call it from a thread that outlives it
        (the event loop's): Linux sends the parent-death signal when the forking thread exits."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port, peer_port = free_port(), free_port()
        peer = f"http://127.0.0.1:{peer_port}"
        self.command = [
            str(self.binary),
            "--name=anchor",
            f"--data-dir={self.folder / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=anchor={peer}",
            "--enable-v2",
        ]
        self.launch()

    def wait_ready(self) -> None:
        """Poll /health until etcd says it is healthy."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                raise AnchorError(f"etcd exited: {' | '.join(self.log_tail())}")
            status, body = servers.get_json(f"{self.url}/health", timeout=1.0)
            if status == 200 and body.get("health") == "true":
                return
            time.sleep(POLL_INTERVAL)
        raise AnchorError(f"etcd not healthy after {READY_TIMEOUT:.0f} s: {self.log_tail()}")


def load(name: str, url: str, token: str, duration: float, run: str) -> Load:
    """The anchor's counterpart of discoverd's load `name` (a key of LOADS)."""
    path, method = LOADS[name]
    script = NEW_SCRIPT % {"run": run} if name == "new" else ""
    return Load(f"anchor_{name}", url + path.format(token=token), method, duration, script=script)


def shown_path(name: str, measured: str) -> str:
    """The path a result row shows: `new`'s is made per request by its script."""
    return NEW_PATH if name == "new" else measured


async def seed(url: str, token: str) -> dict[str, Any]:
    """The token directory discoverd's reads serve, written through the v2 API and read back;
    then one create-only PUT, twice (201, then 412: the `new` load's semantics)."""
    async with aiohttp.ClientSession(timeout=CALL_TIMEOUT) as session:
        writes = [(f"{token}/_config/size", "3")] + [
            (f"{token}/{0xBE0C0000 + n:x}", f"m{n}=http://127.0.0.{n}:2380")
            for n in range(1, MEMBERS + 1)
        ]
        for key, value in writes:
            await _put(session, f"{url}/v2/keys/{key}?prevExist=false", value, 201)
        async with session.get(f"{url}/v2/keys/{token}") as response:
            listed = await response.json()
        nodes = listed.get("node", {}).get("nodes", [])
        if response.status != 200 or len(nodes) != MEMBERS:
            raise AnchorError(f"GET /v2/keys/<token> -> {response.status}, {len(nodes)} nodes")
        check = f"{url}/v2/keys/anchor/check?prevExist=false"
        await _put(session, check, "3", 201)
        await _put(session, check, "3", 412)
    return {"members": len(nodes), "create_only": "201 then 412"}


async def _put(session: aiohttp.ClientSession, url: str, value: str, expect: int) -> None:
    async with session.put(url, data={"value": value}, headers=FORM) as response:
        body = await response.text()
        if response.status != expect:
            path = re.sub(r"[0-9a-f]{32}", "<token>", url.split("/", 3)[-1])
            raise AnchorError(f"PUT /{path} -> {response.status} (not {expect}): {body[:200]}")


async def start(path: Path, folder: Path, token: str) -> tuple[EtcdV2, dict[str, Any]]:
    """The anchor, started and seeded for `token`; what is known about it."""
    anchor = EtcdV2(path, folder)
    try:
        anchor.start()
        await asyncio.to_thread(anchor.wait_ready)
        seeded = await seed(anchor.url, token)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(anchor.stop)
        raise
    info = {
        "server": "etcd v2 keys API (--enable-v2)",
        "binary": str(path),
        "version": await asyncio.to_thread(version, path),
        "command": " ".join(anchor.command),
        "seed": seeded,
    }
    return anchor, info
