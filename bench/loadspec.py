"""What one throughput run measures (`Load`) and what it found (`LoadResult`), shared by the
wrk driver (`bench.load`) and the aiohttp fallback (`bench.loadgen`)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Load:
    """What to measure: `method` on `url` for `duration` seconds; `script`, when set, is the
    wrk Lua script that makes each request (the anchor's unique PUTs)."""

    name: str
    url: str
    method: str = "GET"
    duration: float = 10.0
    threads: int = 2
    connections: int = 32
    script: str = ""

    @property
    def path(self) -> str:
        """The URL path with any token replaced by `<token>` (tokens are secrets)."""
        path = "/" + self.url.split("://", 1)[-1].split("/", 1)[-1]
        return re.sub(r"[0-9a-f]{32}", "<token>", path)


@dataclass
class LoadResult:
    name: str
    tool: str
    method: str
    path: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    duration_s: float
    threads: int
    connections: int
    command: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
